"""Math judge: extraction, fast path, math-verify in workers, and the worker pool's hard bounds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from fractions import Fraction

import pytest

from cgpo.judging import FAILED, SATISFIED, VIOLATED
from cgpo.schema import SchemaError
from cgpo.testing import Sample, assert_judge_conforms
from cgpo_judges._workers import WorkerPool
from cgpo_judges.math import MathJudge, extract_boxed, extract_final_answer, extract_gsm8k, plain_number


def values(judge, completions, golds):
    verdicts = judge([""] * len(completions), completions, [{"answer": g} for g in golds])
    return [v.value for v in verdicts]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of this process lingers as a zombie until reaped; zombies do not count.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def judge():
    """One judge (and its workers) shared by the tests that need math-verify: workers start once."""
    with MathJudge(answer_format="final_answer", timeout_seconds=10.0) as j:
        yield j


# ---------------------------------------------------------------------------------------------------
# Params
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"memory_limit_mb": 10}, "memory_limit_mb"),
        ({"num_workers": 0}, "num_workers"),
        ({"max_answer_chars": 0}, "max_answer_chars"),
        ({"answer_format": "last_number"}, "answer_format"),
        ({"answer_fromat": "boxed"}, "answer_fromat"),
    ],
)
def test_bad_params_are_config_errors_at_their_key(data, key):
    with pytest.raises(SchemaError) as info:
        MathJudge.parse_params(data, ("judges", 0, "params"))
    assert info.value.path == ("judges", 0, "params", key)


def test_params_from_yaml_mapping():
    params = MathJudge.parse_params({"answer_format": "gsm8k", "timeout_seconds": "2.5", "num_workers": 1})
    assert (params.answer_format, params.timeout_seconds, params.num_workers) == ("gsm8k", 2.5, 1)


def test_importing_the_module_loads_no_heavy_library():
    code = (
        "import sys, cgpo_judges.math; print(sorted(m for m in ('sympy', 'math_verify', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Some work.\nThe final answer is 18.", "18"),
        ("The final answer is 3.5.", "3.5"),
        ("so the final answer is: $\\frac{1}{2}$.  \n", "\\frac{1}{2}"),
        ("The final answer is \\boxed{x^2}.", "x^2"),
        ("The final answer is **42**", "42"),
        ("The final answer is $18.", "$18"),
        ("The final answer is 7. Then: The final answer is $7$.", "7"),
    ],
)
def test_final_answer_extraction(text, answer):
    assert extract_final_answer(text, 200).answer == answer


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("I think it is 18.", "no 'The final answer is"),
        ("The final answer is 18. But maybe not.", "not the final sentence"),
        ("The final answer is 18\nand more", "not the final sentence"),
        ("The final answer is .", "followed by nothing"),
    ],
)
def test_final_answer_must_be_the_final_sentence(text, problem):
    found = extract_final_answer(text, 200)
    assert found.answer is None and problem in found.problem


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("\\boxed{\\{1,2\\}} is the set", "\\{1,2\\}"),
        ("first \\boxed{3}, corrected: \\fbox{4}", "4"),
        ("\\boxed {5}", "5"),
    ],
)
def test_boxed_takes_the_last_brace_matched_box(text, answer):
    assert extract_boxed(text, 200).answer == answer


def test_boxed_collects_earlier_boxes_as_candidates():
    found = extract_boxed("\\boxed{3} then \\boxed{4}", 200)
    assert found.answer == "4" and found.others == ("3",)
    assert extract_boxed("\\boxed{\\boxed{3}}", 200).others == ()  # a box around a box is one answer
    assert extract_boxed("\\boxed{3", 200).answer is None
    assert extract_boxed("the answer is 3", 200).answer is None


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("work\n#### 18", "18"),
        ("#### $1,234.", "$1,234"),
        ("#### -7\n\n", "-7"),
        ("#### Step 1\nadd\n#### 18", "18"),
    ],
)
def test_gsm8k_extraction(text, answer):
    assert extract_gsm8k(text, 200).answer == answer


@pytest.mark.parametrize(
    "text", ["no marker 18", "#### 18\nQuestion: next one", "#### 1,23", "#### x+1", "#### 18 apples", "#### 1/2"]
)
def test_gsm8k_extraction_is_strict(text):
    assert extract_gsm8k(text, 200).answer is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("114,200", Fraction(114200)),
        ("-0.50", Fraction(-1, 2)),
        (".5", Fraction(1, 2)),
        ("$1,000.00", Fraction(1000)),
        ("-\\$5", Fraction(-5)),
        ("3/4", Fraction(3, 4)),
        ("-\\frac{3}{4}", Fraction(-3, 4)),
        ("\\dfrac{6}{8}", Fraction(3, 4)),
        ("12\\%", Fraction(12)),
        ("1{,}000", Fraction(1000)),
        ("1 000 000.5", Fraction(2000001, 2)),
        ("114\\,200", Fraction(114200)),
        ("\u22123", Fraction(-3)),
    ],
)
def test_plain_numbers(text, value):
    assert plain_number(text) == value


@pytest.mark.parametrize(
    "text", ["1,23", "12,3456", "3 4", "1 00", "1e5", "x", "3 or 4", "1/0", "1.2.3", "", "5 dollars", "--5"]
)
def test_not_plain_numbers(text):
    assert plain_number(text) is None


# ---------------------------------------------------------------------------------------------------
# Verdicts: fast path (never starts a worker)
# ---------------------------------------------------------------------------------------------------


def test_fast_path_decides_plain_numbers_without_workers():
    judge = MathJudge(answer_format="final_answer")
    cases = [
        ("The final answer is 18.", 18, SATISFIED),
        ("The final answer is 19.", 18, VIOLATED),
        ("The final answer is 0.5.", "5", VIOLATED),
        ("The final answer is 114,200.", "114200", SATISFIED),
        ("The final answer is 114200.", "114,200", SATISFIED),
        ("The final answer is $18.00.", "18", SATISFIED),
        ("The final answer is $\\frac{1}{2}$.", "0.5", SATISFIED),
        ("The final answer is 1/3.", "0.333333", VIOLATED),  # plain numbers compare exactly
        ("The final answer is 50%.", "50", SATISFIED),
        ("The final answer is 50\\%.", "0.5", VIOLATED),  # strict percentages: no x100 / /100
        ("The final answer is 0.5.", "50%", VIOLATED),
        ("The final answer is -3.", "-3", SATISFIED),
        ("The final answer is 3.", "-3", VIOLATED),
        ("The final answer is 18. The final answer is 19.", "19", VIOLATED),  # not the final sentence
        ("The final answer is 18.\nSo the final answer is 19.", "19", VIOLATED),  # two different answers
        ("The final answer is 18. Indeed, the final answer is $18$.", "18", SATISFIED),
        ("I wonder if the final answer is obvious.\nThe final answer is 18.", "18", SATISFIED),  # prose
        ("Maybe the final answer is $\\frac{1}{3}$. No.\nThe final answer is 18.", "18", VIOLATED),
        ("18", "18", VIOLATED),  # a correct answer in another format is a violation
        ("The answer is 18.", "18", VIOLATED),
    ]
    got = values(judge, [c for c, _, _ in cases], [g for _, g, _ in cases])
    assert got == [want for _, _, want in cases]
    assert judge._pool is None


def test_gold_forms():
    judge = MathJudge(answer_format="gsm8k")
    golds = ["Janet sells 9 eggs.\n#### 1,234", 1234, 1234.0, "1234", "\\boxed{1234}", "so $\\boxed{1,234}$."]
    assert values(judge, ["#### 1234"] * len(golds), golds) == [SATISFIED] * len(golds)
    assert values(judge, ["#### 100,000,000,000,000,000,000", "#### 0.1"], [1e20, 0.1]) == [SATISFIED] * 2
    assert judge._pool is None


def test_unusable_gold_is_minus_one_never_zero(judge):
    golds = [None, True, "", "####", {"a": 1}, "\\frac{", "\\boxed{3", float("nan"), float("inf")]
    assert values(judge, ["The final answer is 3."] * len(golds), golds) == [FAILED] * len(golds)
    assert judge(["p"], ["The final answer is 3."], [{}])[0].value == FAILED  # no 'answer' key


def test_missing_and_duplicate_answers_are_violations():
    judge = MathJudge(answer_format="boxed")
    cases = [
        ("no box here, 5", VIOLATED),
        ("\\boxed{5}", SATISFIED),
        ("\\boxed{5} and again \\boxed{5.0}", SATISFIED),
        ("\\boxed{4} and \\boxed{5}", VIOLATED),
        ("\\boxed{5", VIOLATED),
    ]
    verdicts = judge([""] * len(cases), [c for c, _ in cases], [{"answer": 5}] * len(cases))
    assert [v.value for v in verdicts] == [want for _, want in cases]
    assert "two different final answers" in verdicts[3].reason
    assert "no \\boxed" in verdicts[0].reason


# ---------------------------------------------------------------------------------------------------
# Verdicts: math-verify in the workers
# ---------------------------------------------------------------------------------------------------

EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("(x+1)^2", "x^2+2x+1"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\{2,1\\}", "\\{1,2\\}"),
    ("[1,2)", "[1,2)"),
    ("(1,2)", "1<x<2"),  # gold 1<x<2 accepts the interval (math-verify's asymmetry, gold first)
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}"),
    ("x=3", "3"),
    ("18\\text{ dollars}", "18"),
    ("\\pi/2", "\\frac{\\pi}{2}"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
]

NOT_EQUIVALENT = [
    ("(1,2]", "[1,2)"),
    ("1<x<2", "(1,2)"),  # the reverse direction does not verify
    ("\\{1,2\\}", "\\{1,2,3\\}"),
    ("(x+1)^3", "x^2+2x+1"),
    ("3 or 4", "3"),  # two candidate answers
    ("$3$ or $4$", "3"),
    ("3, 4", "3"),
    ("banana", "5"),
    ("18 dollars", "18"),  # plain words are not units: strict
    ("\\frac{1}{3}", "0.34"),
    ("\\sqrt{3}", "\\sqrt{2}"),
]


def test_equivalent_forms_pass_and_near_misses_fail(judge):
    cases = EQUIVALENT + NOT_EQUIVALENT
    completions = [f"Work.\nThe final answer is ${answer}$." for answer, _ in cases]
    verdicts = judge([""] * len(cases), completions, [{"answer": gold} for _, gold in cases])
    got = {(a, g): v.value for (a, g), v in zip(cases, verdicts, strict=True)}
    assert got == {**dict.fromkeys(EQUIVALENT, SATISFIED), **dict.fromkeys(NOT_EQUIVALENT, VIOLATED)}


def test_identical_pairs_in_a_batch_are_judged_once_and_agree(judge):
    completions = ["The final answer is $\\frac{2}{4}x$."] * 6 + ["The final answer is $x/3$."] * 2
    assert values(judge, completions, ["\\frac{x}{2}"] * 8) == [SATISFIED] * 6 + [VIOLATED] * 2


def test_concurrent_calls_from_threads(judge):
    completions = ["The final answer is $(x+1)^2$.", "The final answer is $x^2+1$.", "The final answer is 7."]
    golds = ["x^2+2x+1", "x^2+2x+1", "7"]
    results: list[list[int]] = []

    def work() -> None:
        results.append(values(judge, completions, golds))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[SATISFIED, VIOLATED, SATISFIED]] * 4


# ---------------------------------------------------------------------------------------------------
# Pathological inputs, hard bounds, replaced workers, no orphans
# ---------------------------------------------------------------------------------------------------

PATHOLOGICAL = ["9^{9^{9^{9}}}", "(10^{10^{10}})!", "2^{2^{40}}", "10^{10^{10}}!-1"]


@pytest.mark.slow
def test_pathological_answers_are_minus_one_within_the_timeout():
    timeout = 2.0
    with MathJudge(answer_format="boxed", timeout_seconds=timeout, num_workers=2) as judge:
        judge(["p"], ["\\boxed{x+1}"], [{"answer": "1+x"}])  # start the workers outside the timing
        completions = [f"\\boxed{{{a}}}" for a in PATHOLOGICAL]
        completions += ["\\boxed{" + "{" * 100_000 + "5" + "}" * 100_000 + "}", "\\boxed{" + "9" * 1_000_000 + "}"]
        start = time.monotonic()
        verdicts = judge([""] * len(completions), completions, [{"answer": 5}] * len(completions))
        elapsed = time.monotonic() - start
        assert [v.value for v in verdicts] == [FAILED] * len(completions), verdicts
        # Every worker-bound job ends within its own timeout (the over-long answers never reach a worker).
        # The bound allows the jobs one after another plus slack for a loaded machine; without the timeout
        # the first of them would run for hours. (About 5 s measured with two workers at load average 7.)
        assert elapsed < len(PATHOLOGICAL) * timeout + 3.0
        assert "max_answer_chars" in verdicts[-1].reason
        assert judge(["p"], ["\\boxed{(x+1)^2}"], [{"answer": "x^2+2x+1"}])[0].value == SATISFIED
        # 10^5 nested boxes: linear-time extraction; the innermost box is the answer. About 1.3 s at load
        # average 7; a quadratic scan (brace matching from every box) would take far beyond the bound.
        start = time.monotonic()
        nested = ["\\boxed{" * 100_000 + "5" + "}" * 100_000, "\\boxed{" * 100_000 + "}" * 100_000]
        assert values(judge, nested, [5, 5]) == [SATISFIED, VIOLATED]
        assert time.monotonic() - start < 10.0


def test_hard_deadline_kills_and_replaces_a_worker_that_ignores_its_soft_timeout():
    timeout = 1.5
    with MathJudge(answer_format="final_answer", timeout_seconds=timeout, num_workers=1) as judge:
        judge._workers().soft_timeout_seconds = 600.0  # only the parent's SIGKILL can stop this one
        judge(["p"], ["The final answer is $x$."], [{"answer": "x"}])
        (old_pid,) = judge._workers().pids
        start = time.monotonic()
        verdict = judge(["p"], ["The final answer is $9^{9^{9^{9}}}$."], [{"answer": "5"}])[0]
        assert time.monotonic() - start < timeout + 4.0  # slack for load; the soft bound alone would be 600 s
        assert verdict.value == FAILED and "killed" in verdict.reason
        assert not pid_alive(old_pid)
        assert judge(["p"], ["The final answer is $2x$."], [{"answer": "x+x"}])[0].value == SATISFIED
        assert judge._workers().pids != [old_pid]


def test_a_worker_killed_from_outside_is_replaced(judge):
    judge(["p"], ["The final answer is $x$."], [{"answer": "x"}])
    for pid in judge._workers().pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert values(judge, ["The final answer is $\\sqrt{4}$.", "The final answer is $x$."], ["2", "y"]) == [
        SATISFIED,
        VIOLATED,
    ]


def test_a_forked_child_starts_its_own_workers_and_leaves_the_parents_alone(judge):
    assert values(judge, ["The final answer is $x+x$."], ["2x"]) == [SATISFIED]
    parent_pids = judge._workers().pids
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            ok = values(judge, ["The final answer is $3x$."], ["x+2x"]) == [SATISFIED]
            code = 0 if ok and set(judge._workers().pids).isdisjoint(parent_pids) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert judge._workers().pids == parent_pids
    assert values(judge, ["The final answer is $x^2$."], ["x \\cdot x"]) == [SATISFIED]


def test_close_kills_workers_and_a_later_call_restarts_them():
    judge = MathJudge(num_workers=1)
    assert values(judge, ["The final answer is $2^{10}$."], ["1024"]) == [SATISFIED]
    pids = judge._workers().pids
    judge.close()
    judge.close()  # twice is fine
    assert pids and not any(pid_alive(p) for p in pids)
    assert values(judge, ["The final answer is $\\frac{3}{6}$."], ["1/2"]) == [SATISFIED]
    judge.close()


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_no_orphans_when_the_parent_exits_or_dies(ending, repo_root):
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from cgpo_judges.math import MathJudge
        judge = MathJudge(num_workers=2)
        verdicts = judge(["", ""], ["The final answer is $x$.", "The final answer is $y$."], [{{"answer": "x"}}] * 2)
        print(" ".join(str(p) for p in judge._workers().pids), flush=True)
        if {ending!r} == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120, cwd=repo_root
    )
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)


# ---------------------------------------------------------------------------------------------------
# The worker pool on its own
# ---------------------------------------------------------------------------------------------------


def test_pool_results_in_order_and_error_kinds():
    with WorkerPool("json:loads", num_workers=2, timeout_seconds=5.0, memory_limit_mb=512) as pool:
        results = pool.map([["[1, 2]"], ["{bad"], ['"x"'], ["3"]])
    assert [r.ok for r in results] == [True, False, True, True]
    assert [r.value for r in results] == [[1, 2], None, "x", 3]
    assert results[1].error == "exception" and "JSONDecodeError" in results[1].detail


def test_pool_memory_limit_hard_kill_and_crash():
    with WorkerPool("builtins:bytearray", num_workers=1, timeout_seconds=10.0, memory_limit_mb=300) as pool:
        (big,) = pool.map([[2 << 30]])
        assert (big.ok, big.error) == (False, "memory")
    with WorkerPool("time:sleep", num_workers=2, timeout_seconds=0.5, soft_timeout_seconds=60.0) as pool:
        start = time.monotonic()
        results = pool.map([[30], [0]])
        assert time.monotonic() - start < 0.5 + 5.0  # start-up of a fresh interpreter is not counted
        assert (results[0].error, results[1].ok) == ("timeout", True)
        assert "killed" in results[0].detail
    with WorkerPool("time:sleep", num_workers=1, timeout_seconds=5.0, soft_timeout_seconds=0.3) as pool:
        assert pool.map([[30]])[0].error == "timeout"  # the soft bound: the worker survives it
        assert pool.map([[0]])[0].ok
    with WorkerPool("os:abort", num_workers=1, timeout_seconds=5.0) as pool:
        crashed = pool.map([[]])[0]
        assert crashed.error == "crashed" and "SIGABRT" in crashed.detail


def test_pool_that_cannot_start_fails_every_job_instead_of_retrying_forever():
    with WorkerPool("no_such_module_cgpo:f", num_workers=2, timeout_seconds=5.0) as pool:
        results = pool.map([["a"], ["b"], ["c"]])
    assert {r.error for r in results} == {"start_failed"}
    assert "ModuleNotFoundError" in results[0].detail


# ---------------------------------------------------------------------------------------------------
# GSM8K gold solutions
# ---------------------------------------------------------------------------------------------------


def test_gsm8k_gold_solutions_pass_against_their_answer_and_fail_against_another(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    solutions = [row["answer"] for row in rows]
    numbers = [int(s.rsplit("####", 1)[1].strip().replace(",", "")) for s in solutions]
    judge = MathJudge(answer_format="gsm8k")
    prompts = [row["question"] for row in rows]
    assert len(rows) == 1319
    own = judge(prompts, solutions, [{"answer": s} for s in solutions])
    assert [v.value for v in own] == [SATISFIED] * len(rows), [v for v in own if v.value != SATISFIED][:3]
    other = judge(prompts, solutions, [{"answer": n + 1} for n in numbers])
    assert [v.value for v in other] == [VIOLATED] * len(rows)
    # The CGPO sentence form of the same answers, against the raw gold solutions.
    final = MathJudge(answer_format="final_answer")
    sentences = [f"Reasoning.\nThe final answer is {n:,}." for n in numbers]
    assert {v.value for v in final(prompts, sentences, [{"answer": s} for s in solutions])} == {SATISFIED}
    assert judge._pool is None and final._pool is None  # all decided in-process


# ---------------------------------------------------------------------------------------------------
# Conformance kit
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def workers_that_cannot_start(judge):
    """Break the judge's own machinery: its workers die at start-up. Every verdict must then be -1."""
    pool = judge._workers()
    pool.close()
    setup, pool.setup = pool.setup, "no_such_module_cgpo:setup"
    try:
        yield
    finally:
        pool.setup = setup
        pool.close()


def test_math_judge_conforms():
    samples = [
        Sample("q", "The final answer is $(x+1)^2$.", {"answer": "x^2+2x+1"}),
        Sample("q", "The final answer is $\\sqrt{8}$.", {"answer": "2\\sqrt{2}"}),
        Sample("q", "The final answer is $[1,2)$.", {"answer": "(1,2]"}),
        Sample("q", "The final answer is $\\{3,1\\}$.", {"answer": "\\{1,3\\}"}),
    ]
    assert_judge_conforms(
        MathJudge,
        samples,
        params={"timeout_seconds": 10.0},
        failure_injectors={"workers cannot start": workers_that_cannot_start},
    )


def test_warm_up_starts_every_worker_before_the_first_symbolic_answer():
    with MathJudge(answer_format="final_answer", num_workers=2, timeout_seconds=10.0) as judge:
        judge.warm_up()  # the trainer calls this in setup (cgpo.trainer.CGPOTrainer.setup)
        pids = judge._workers().pids
        assert len(pids) == 2
        [verdict] = judge(["?"], ["The final answer is $\\frac{1}{2}$."], [{"answer": "0.5"}])
        assert verdict.value == 1, verdict
        assert judge._workers().pids == pids  # the call used the warm workers, started none
