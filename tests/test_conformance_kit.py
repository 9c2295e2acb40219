"""The conformance kit (cgpo.testing): a conforming judge passes, and each kind of breach is caught by its check."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import sys
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest

from cgpo.judging import Judge, Verdict, failed, judge_function, satisfied, violated
from cgpo.testing import (
    CHECKS,
    DEFAULT_SAMPLES,
    ConformanceReport,
    Sample,
    assert_judge_conforms,
    check_judge,
)

FAST = {"check_imports": False}


@dataclass(frozen=True)
class WordParams:
    max_words: int = 5
    timeout_seconds: float = 5.0


class WordJudge(Judge):
    """A well-behaved rule judge: at most `max_words` words."""

    Params = WordParams

    def judge_batch(self, prompts, completions, metadata):
        out = []
        for c in completions:
            n = len(c.split())
            out.append(satisfied(f"{n} words") if n <= self.params.max_words else violated(f"{n} words"))
        return out


def statuses(report: ConformanceReport) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


def test_a_conforming_rule_judge_passes_every_check():
    report = check_judge(WordJudge, params={"max_words": 8}, **FAST)
    assert report.ok, report
    assert [r.name for r in report.results] == list(CHECKS)
    assert statuses(report) == {
        "contract": "passed",
        "imports": "skipped",
        "raw_output": "passed",
        "verdicts": "passed",
        "metadata_untouched": "passed",
        "deterministic": "passed",
        "thread_safe": "passed",
        "timeout": "passed",  # the budget comes from Params.timeout_seconds
        "failure_injection": "passed",
        "injected_failures": "skipped",
        "close": "passed",
    }
    assert "5 s per sample" in report.result("timeout").detail
    # Both kinds of verdict occur on the default samples, so the checks compared real values.
    expected = [int(len(s.completion.split()) <= 8) for s in DEFAULT_SAMPLES]
    assert expected == [0, 1, 1, 0, 0, 1, 0, 0]
    assert "{1: 3, 0: 5, -1: 0}" in report.result("verdicts").detail
    text = str(report)
    assert text.splitlines()[0] == "conformance of test_conformance_kit.WordJudge (rule judge):"
    assert "  passed  deterministic: same values twice and one sample at a time (8 samples)" in text


def test_an_instance_is_checked_but_not_closed_and_samples_take_three_forms():
    judge = WordJudge(max_words=1)
    samples = [Sample("p", "one"), {"prompt": "p", "completion": "two words", "extra": 1}, ("p", "x y z", {"k": 2})]
    report = assert_judge_conforms(judge, samples, **FAST)
    assert report.result("close").status == "skipped"
    assert "{1: 1, 0: 2, -1: 0}" in report.result("verdicts").detail
    with pytest.raises(TypeError, match="params applies only when a judge class is given"):
        check_judge(judge, params={"max_words": 2})


def test_not_a_judge_fails_the_contract():
    report = check_judge(dict, **FAST)
    assert not report.ok and report.result("contract").detail.endswith("is not a cgpo.judging.Judge subclass")


def test_params_must_be_a_frozen_dataclass():
    @dataclass
    class Loose:
        n: int = 1

    class LooseJudge(WordJudge):
        Params = Loose

    report = check_judge(LooseJudge, **FAST)
    assert report.result("contract").status == "failed"
    assert "Params (Loose) is not frozen" in report.result("contract").detail


def test_required_metadata_needs_samples_that_carry_it():
    class NeedsAnswer(WordJudge):
        required_metadata = ("answer",)

    report = check_judge(NeedsAnswer, **FAST)
    assert "sample 0 lacks metadata 'answer' that the judge requires" in report.result("contract").detail
    fixed = check_judge(NeedsAnswer, [Sample("p", "4", {"answer": "4"})], **FAST)
    assert fixed.ok, fixed


class ShortJudge(WordJudge):
    def judge_batch(self, prompts, completions, metadata):
        return super().judge_batch(prompts, completions, metadata)[:-1]


class RaisingJudge(WordJudge):
    def judge_batch(self, prompts, completions, metadata):
        if any(not c for c in completions):
            raise KeyError("empty completion")
        return super().judge_batch(prompts, completions, metadata)


def test_raw_judge_batch_errors_are_not_hidden_by_the_base_class():
    short = check_judge(ShortJudge, **FAST)
    assert short.result("raw_output").status == "failed"
    assert "judge_batch returned 0 verdicts for a batch of 1" in short.result("raw_output").detail
    raising = check_judge(RaisingJudge, **FAST)
    detail = raising.result("raw_output").detail
    assert detail.startswith("judge_batch raised on a batch of 8: KeyError: 'empty completion' at ")
    assert "test_conformance_kit.py" in detail


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Verdict(True, "yes"), "has value True; it must be the int 1, 0 or -1"),
        (Verdict(0, ""), "has value 0 and no reason; 0 and -1 must say why"),
        (Verdict(1, "", 1.5), "has probability 1.5; it must be None or a number in [0, 1]"),
        (Verdict(1, "", float("nan")), "has probability nan"),
        (Verdict(1, None), "has reason None; it must be a str"),  # type: ignore[arg-type]
    ],
)
def test_ill_typed_verdicts_fail(bad, message):
    class Bad(WordJudge):
        def judge_batch(self, prompts, completions, metadata):
            return [bad] * len(completions)

    report = check_judge(Bad, **FAST)
    assert report.result("verdicts").status == "failed"
    assert message in report.result("verdicts").detail


def test_plain_int_verdicts_are_legal_but_a_zero_needs_a_reason():
    class Ints(WordJudge):
        def judge_batch(self, prompts, completions, metadata):
            return [1] * len(completions)

    class IntZero(WordJudge):
        def judge_batch(self, prompts, completions, metadata):
            return [0] * len(completions)

    assert check_judge(Ints, **FAST).ok
    report = check_judge(IntZero, **FAST)
    assert report.result("raw_output").status == "passed"
    assert "has value 0 and no reason" in report.result("verdicts").detail


def test_mutating_metadata_fails():
    class Mutates(WordJudge):
        def judge_batch(self, prompts, completions, metadata):
            for m in metadata:
                m["seen"] = True  # type: ignore[index]
            return super().judge_batch(prompts, completions, metadata)

    report = check_judge(Mutates, **FAST)
    assert report.result("metadata_untouched").status == "failed"
    assert "{} -> {'seen': True}" in report.result("metadata_untouched").detail


def test_nondeterministic_rule_judge_fails_but_an_llm_judge_is_let_off():
    class Flaky(WordJudge):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.counter = itertools.count()
            self.lock = threading.Lock()

        def judge_batch(self, prompts, completions, metadata):
            with self.lock:
                start = next(self.counter)
            return [satisfied("ok") if (start + i) % 3 else violated("unlucky") for i in range(len(completions))]

    report = check_judge(Flaky, **FAST)
    assert report.result("deterministic").status == "failed"
    assert "the same batch judged twice differs" in report.result("deterministic").detail

    class FlakyLLM(Flaky):
        kind = "llm"

    llm = check_judge(FlakyLLM, **FAST)
    assert llm.ok, llm
    assert llm.result("deterministic").status == "skipped"
    assert llm.result("thread_safe").detail == "4 concurrent batches of 8 (rotated per thread): well-formed verdicts"
    # A caller can still demand determinism from an LLM judge (e.g. one that is greedy and batch-invariant).
    assert check_judge(FlakyLLM, rule=True, **FAST).result("deterministic").status == "failed"


def test_batch_dependent_verdicts_fail_determinism():
    class Neighbourly(WordJudge):
        """Looks at the batch, not the sample: a verdict changes with the company it keeps."""

        def judge_batch(self, prompts, completions, metadata):
            return [satisfied("ok") if len(completions) == 1 else violated("crowded")] * len(completions)

    report = check_judge(Neighbourly, **FAST)
    assert "judging one sample at a time gives [1, 1, 1, 1, 1, 1, 1, 1], the batch gives [0, 0, 0, 0, 0, 0, 0, 0]" in (
        report.result("deterministic").detail
    )


def test_list_only_judges_fail_on_tuples():
    class ListOnly(WordJudge):
        def judge_batch(self, prompts, completions, metadata):
            return super().judge_batch(prompts, completions.copy(), metadata)  # .copy(): lists only

    report = check_judge(ListOnly, **FAST)
    assert report.result("deterministic").status == "failed"
    assert "one sample at a time gives [-1, -1" in report.result("deterministic").detail


def test_shared_scratch_state_fails_the_thread_check():
    class Scratchpad(WordJudge):
        """Keeps a scratch buffer on the instance: fine alone, broken under concurrency."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.buffer: list[Verdict] = []

        def judge_batch(self, prompts, completions, metadata):
            self.buffer.clear()
            self.buffer.extend(super().judge_batch(prompts, completions, metadata))
            time.sleep(0.1)  # another thread replaces the buffer meanwhile
            return list(self.buffer)

    report = check_judge(Scratchpad, DEFAULT_SAMPLES[:3], **FAST)
    assert report.result("deterministic").status == "passed"
    assert report.result("thread_safe").status == "failed"
    # Each thread judges the samples in a different rotation, so one thread's buffer is another's wrong answer.
    assert "thread_safe" in [r.name for r in report.failures]
    assert "got [" in report.result("thread_safe").detail and "expected [" in report.result("thread_safe").detail


def test_timeouts_are_checked_against_the_declared_budget():
    @dataclass(frozen=True)
    class Quick:
        timeout_seconds: float = 0.02

    class Slow(Judge):
        Params = Quick

        def judge_batch(self, prompts, completions, metadata):
            time.sleep(0.15)
            return [satisfied("ok")] * len(completions)

    report = check_judge(Slow, DEFAULT_SAMPLES[:1], timeout_margin_s=0.05, **FAST)
    assert report.result("timeout").status == "failed"
    assert "the budget is 0.07 s (0.02 s per sample + 0.05 s margin)" in report.result("timeout").detail
    # An explicit budget overrides the Params field; with no budget anywhere the check is skipped.
    assert check_judge(Slow, DEFAULT_SAMPLES[:1], timeout_s=1.0, **FAST).ok
    no_budget = check_judge(ShortJudge, params={"timeout_seconds": 0}, **FAST)  # 0 is not a budget
    assert no_budget.result("timeout").status == "skipped"


def test_a_hanging_judge_fails_the_kit_instead_of_hanging_it():
    release = threading.Event()

    class Hangs(WordJudge):
        def judge_batch(self, prompts, completions, metadata):
            if len(completions) > 1:
                release.wait(30)
            return super().judge_batch(prompts, completions, metadata)

    try:
        start = time.perf_counter()
        report = check_judge(Hangs, params={"timeout_seconds": 0.1}, timeout_margin_s=0.1, call_timeout_s=0.5, **FAST)
        assert time.perf_counter() - start < 10
    finally:
        release.set()
    assert report.result("raw_output").detail.startswith("hung: judge_batch (batch of 8) did not return within")
    assert report.result("verdicts").status == "skipped" and report.result("close").status == "skipped"
    assert report.result("timeout").status == "failed"  # the completed calls are still judged against the budget


def test_overriding_call_without_the_safety_net_fails_failure_injection():
    class OwnCall(WordJudge):
        def __call__(self, prompts, completions, metadata=None):
            return [satisfied("always")] * len(completions)

    report = check_judge(OwnCall, **FAST)
    assert report.result("failure_injection").status == "failed"
    assert "with a raising judge_batch, judge(...) gave [1, 1" in report.result("failure_injection").detail
    assert "does the class override __call__?" in report.result("failure_injection").detail


class Backend:
    def score(self, text: str) -> bool:
        return "bad" not in text


@dataclass(frozen=True)
class BackendParams:
    swallow_errors_as_violation: bool = False


class BackendJudge(Judge):
    """Calls a backend per sample; the switch decides whether a backend error is -1 (right) or 0 (wrong)."""

    Params = BackendParams
    kind = "llm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend = Backend()

    def judge_batch(self, prompts, completions, metadata):
        out = []
        for c in completions:
            try:
                out.append(satisfied("fine", 0.9) if self.backend.score(c) else violated("bad", 0.1))
            except ConnectionError as exc:
                out.append(violated(f"error {exc}") if self.params.swallow_errors_as_violation else failed(str(exc)))
        return out


def refuse_connections(judge: Judge) -> contextlib.AbstractContextManager[Any]:
    return mock.patch.object(judge.backend, "score", side_effect=ConnectionError("refused"))  # type: ignore[attr-defined]


def test_failure_injectors_check_the_judges_own_machinery():
    ok = check_judge(BackendJudge, failure_injectors={"connection refused": refuse_connections}, **FAST)
    assert ok.ok, ok
    assert ok.result("injected_failures").detail == "connection refused: every verdict -1"
    bad = check_judge(
        BackendJudge,
        params={"swallow_errors_as_violation": True},
        failure_injectors={"connection refused": refuse_connections},
        **FAST,
    )
    assert bad.result("injected_failures").status == "failed"
    assert "under 'connection refused', some verdicts are not -1: [(0, 0, 'error refused')" in (
        bad.result("injected_failures").detail
    )


def test_close_failures_are_reported():
    class BadClose(WordJudge):
        def close(self) -> None:
            raise OSError("pool already gone")

    report = check_judge(BadClose, **FAST)
    assert report.result("close").status == "failed"
    assert "close() raised OSError: pool already gone" in report.result("close").detail


def test_function_judges_conform():
    @judge_function("t_kit_caps", register=False)
    def no_caps(prompt: str, completion: str, metadata: Mapping[str, Any]):
        return (0, "all caps") if completion.isupper() else True

    assert_judge_conforms(no_caps, **FAST)


def test_assert_judge_conforms_lists_every_failure():
    with pytest.raises(AssertionError) as info:
        assert_judge_conforms(ShortJudge, **FAST)
    message = str(info.value)
    assert message.startswith("test_conformance_kit.ShortJudge does not conform to the cgpo judge contract:")
    assert "FAILED  raw_output" in message and "passed  contract" in message


def test_import_check_in_a_fresh_interpreter(tmp_path, monkeypatch):
    (tmp_path / "kit_fake_heavy.py").write_text("LOADED = True\n")
    judge_source = textwrap.dedent(
        """
        from cgpo.judging import Judge, satisfied
        {extra}

        class Light(Judge):
            def judge_batch(self, prompts, completions, metadata):
                return [satisfied("ok")] * len(completions)
        """
    )
    (tmp_path / "kit_light_judge.py").write_text(judge_source.format(extra=""))
    (tmp_path / "kit_heavy_judge.py").write_text(judge_source.format(extra="import kit_fake_heavy"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import kit_heavy_judge
    import kit_light_judge

    heavy = ("kit_fake_heavy", "torch")
    light = check_judge(kit_light_judge.Light, heavy_modules=heavy)
    assert light.ok, light
    assert light.result("imports").detail == "importing kit_light_judge imports none of kit_fake_heavy, torch"
    report = check_judge(kit_heavy_judge.Light, heavy_modules=heavy)
    assert report.result("imports").status == "failed"
    assert "importing kit_heavy_judge imports kit_fake_heavy; move those imports into __init__" in (
        report.result("imports").detail
    )
    assert "kit_fake_heavy" in sys.modules  # this process imported it; the verdict came from the child


def test_classes_in_main_skip_the_import_check():
    main_cls = type("MainJudge", (WordJudge,), {"__module__": "__main__"})
    report = check_judge(main_cls)
    assert report.result("imports").status == "skipped"
    assert "'__main__'" in report.result("imports").detail


def test_default_samples_are_varied():
    completions = [s.completion for s in DEFAULT_SAMPLES]
    assert "" in completions and any(not c.isascii() for c in completions) and max(map(len, completions)) > 5000
    assert all(dataclasses.is_dataclass(s) and s.metadata == {} for s in DEFAULT_SAMPLES)


def test_samples_are_never_shared_between_calls():
    seen: list[Sequence[Mapping[str, Any]]] = []

    class Records(WordJudge):
        def judge_batch(self, prompts, completions, metadata):
            seen.append(metadata)
            return super().judge_batch(prompts, completions, metadata)

    sample = Sample("p", "x", {"nested": {"k": [1]}})
    check_judge(Records, [sample], **FAST)
    ids = {id(m[0]) for m in seen if m}
    assert len(ids) == len([m for m in seen if m])  # a fresh deep copy each call
    assert sample.metadata == {"nested": {"k": [1]}}


# -- the built-in rule judges -----------------------------------------------------------------------------------
ADD_TESTS = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
HUMANEVAL = {"test": "def check(candidate):\n    assert candidate(2) == 4\n", "entry_point": "double"}
BUILTIN_RULE_JUDGES: dict[str, tuple[dict[str, Any], list[Sample]]] = {
    "math": (
        {"answer_format": "final_answer", "timeout_seconds": 5.0},
        [
            Sample("What is 2 + 2?", "2 + 2 = 4. The final answer is 4.", {"answer": "4"}),
            Sample("What is 2 + 2?", "The final answer is 5.", {"answer": "4"}),
            Sample("Half of 1?", "The final answer is $\\frac{1}{2}$.", {"answer": "0.5"}),
            Sample("Sum?", "I think 3. The final answer is 1,234.", {"answer": "1234"}),
            Sample("What is 2 + 2?", "No idea.", {"answer": "4"}),
            Sample("What is 2 + 2?", "", {"answer": "4"}),
            Sample("What is 2 + 2?", "The final answer is 4.", {"answer": "\\frac{"}),  # unparseable gold
        ],
    ),
    "format": (
        {"max_words": 12, "must_not_match": ["(?i)as an ai"]},
        [*DEFAULT_SAMPLES, Sample("Hi", "As an AI, I cannot."), Sample("Hi", "Hello there, friend.")],
    ),
    "code": (
        {"timeout_s": 10.0},
        [
            Sample("Write add.", "```python\ndef add(a, b):\n    return a + b\n```", ADD_TESTS),
            Sample("Write add.", "```python\ndef add(a, b):\n    return a - b\n```", ADD_TESTS),
            Sample("Write add.", "```python\nimport sys\nsys.exit(0)\n```", ADD_TESTS),
            Sample("Write double.", "def double(x):\n    return 2 * x\n", HUMANEVAL),
            Sample("Echo.", "print(input())", {"io": [{"input": "hi\n", "output": "hi\n"}]}),
            Sample("Write add.", "def add(a, b): return a + b", {"tests": "not a list"}),  # bad metadata: -1
        ],
    ),
    "ifeval": (
        {"mode": "strict"},
        [
            Sample(
                "List a, b with no comma.",
                "a and b",
                {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
            ),
            Sample(
                "List a, b with no comma.", "a, b", {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
            ),
            Sample(
                "End with bye.",
                "see you, bye",
                {"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "bye"}]},
            ),
            Sample(
                "Answer in lowercase English.",
                "this is a short answer written entirely in lowercase english words.",
                {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
            ),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(BUILTIN_RULE_JUDGES))
def test_builtin_rule_judges_conform(name):
    import importlib.util

    from cgpo.judging import JUDGES

    entries = {e.name: e for e in JUDGES.entries()}
    if name not in entries:
        pytest.skip(f"built-in judge '{name}' is not declared in this installation")
    module = (entries[name].target or "").partition(":")[0]
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"built-in judge '{name}': module {module} has not landed yet")
    params, samples = BUILTIN_RULE_JUDGES[name]
    cls = JUDGES.get(name)  # a module that exists but fails to import is a failure, not a skip
    assert cls.kind == "rule"
    report = check_judge(cls, samples, params=params)
    assert report.ok, report
    assert report.result("imports").status == "passed"
    assert report.result("deterministic").status == "passed"
