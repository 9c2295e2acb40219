"""Conformance kit for judge authors: does a :class:`cgpo.judging.Judge` keep the contract?

Run it from a test::

    from cgpo.testing import Sample, assert_judge_conforms

    def test_word_budget_conforms():
        assert_judge_conforms(
            WordBudgetJudge,
            params={"max_words": 5},
            samples=[Sample("Say hi.", "Hi there!"), Sample("Essay?", "word " * 50, {"word_budget": 100})],
        )

or look at the report yourself::

    report = check_judge(WordBudgetJudge(max_words=5))
    print(report)          # one line per check: passed / FAILED / skipped, with the reason
    assert report.ok, report

What is checked (each is one named check in the report):

* ``contract``: the class is a ``Judge`` subclass with ``kind`` in {"rule", "llm"}; ``Params`` is a
  *frozen* dataclass and ``judge.params`` an instance of it; ``required_metadata`` is a tuple of strings.
* ``imports``: importing the judge's module in a fresh interpreter imports none of torch, transformers,
  trl, sympy, math_verify, datasets, accelerate, peft or vllm (``cgpo list`` and ``cgpo validate`` import
  judge classes to read their ``Params``). Skipped for classes defined in ``__main__``.
* ``raw_output``: ``judge_batch`` itself, called directly on batches of 0, 1 and all samples, returns a
  list of exactly one ``Verdict`` (or plain int) per sample and does not raise. The base class's
  ``__call__`` would turn a raise or a wrong length into -1 for the whole batch, which keeps training
  alive but hides the bug; the kit does not let it hide.
* ``verdicts``: through ``judge(...)`` on batches of 0, 1, 2 and all samples: one verdict per sample;
  ``value`` an ``int`` (not ``bool``) in {1, 0, -1}; ``reason`` a ``str``, non-empty for 0 and -1;
  ``probability`` ``None`` or a finite float in [0, 1].
* ``metadata_untouched``: judging does not mutate the metadata mappings it was given (judges keep no
  state, and a trainer reuses metadata across samples of a prompt).
* ``deterministic`` (rule judges): the same batch twice gives the same values, and judging one sample
  at a time (passed as tuples, not lists) gives the same values as the batch, so no sample's verdict
  depends on its neighbours or on the container type.
* ``thread_safe``: four threads judge the batch at once, each with the samples in a different rotation
  (so that cross-talk between calls shows even when every call computes the same values); for rule
  judges every thread's values equal the sequential ones, for LLM judges every result is well formed.
* ``timeout``: when a budget is known (``timeout_s`` argument, else a numeric ``timeout_seconds``,
  ``timeout_s`` or ``timeout`` field of ``Params``, read as seconds per sample), each call made by the
  checks above took at most ``budget * batch_size + timeout_margin_s``. Every call, with or without a
  budget, runs under a watchdog (``call_timeout_s``), so a judge that hangs fails the kit instead of
  hanging it.
* ``failure_injection``: with ``judge_batch`` replaced on the instance by one that raises, one that
  returns the wrong number of verdicts and one that returns values outside {1, 0, -1}, every verdict
  is -1 with a reason, never 0 or 1. This proves the class does not override ``__call__`` in a way
  that loses the base class's guarantee.
* ``injected_failures``: each of your ``failure_injectors`` (context managers that break the judge's
  own machinery: a dead worker pool, an HTTP endpoint that refuses connections, a sandbox that fails
  its self-test) makes every verdict -1.
* ``close``: ``close()`` can be called twice (only when the kit built the judge from its class).

What is *not* checked, because no generic test can know it: that your 0s are right (use your own
golden tests), that your judge maps *its own* infrastructure failures to -1 rather than 0 unless you
pass ``failure_injectors`` that provoke them, that a pathological input is stopped at the deadline
unless your ``samples`` include one, and that LLM judges agree with themselves across batch shapes
(padding may change their numbers slightly; they are only checked for well-formed output).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cgpo.judging import VERDICT_VALUES, Judge, Verdict

#: Modules whose import at module level makes listing and validating slow (seconds each, hundreds of MB).
HEAVY_MODULES = ("torch", "transformers", "trl", "sympy", "math_verify", "datasets", "accelerate", "peft", "vllm")

#: The order checks run and appear in a report.
CHECKS = (
    "contract",
    "imports",
    "raw_output",
    "verdicts",
    "metadata_untouched",
    "deterministic",
    "thread_safe",
    "timeout",
    "failure_injection",
    "injected_failures",
    "close",
)

Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class Sample:
    """One input to a judge: the same shape as a line of ``cgpo judge``'s input file."""

    prompt: str
    completion: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, item: Sample | Mapping[str, Any] | Sequence[Any]) -> Sample:
        """Accept a ``Sample``, a record ``{"prompt", "completion", ...metadata}`` or a tuple."""
        if isinstance(item, Sample):
            return item
        if isinstance(item, Mapping):
            meta = {k: v for k, v in item.items() if k not in ("prompt", "completion")}
            return cls(item["prompt"], item["completion"], meta)
        return cls(*item)


#: Samples used when none are given: an empty completion, an empty prompt, non-ASCII text, a long
#: completion, JSON, a code block and multi-line prose, so a judge meets the shapes it will meet in
#: training. Judges that require metadata need samples of their own.
DEFAULT_SAMPLES: tuple[Sample, ...] = (
    Sample("What is 2 + 2?", "2 + 2 = 4. The final answer is 4."),
    Sample("Say hello.", ""),
    Sample("", "An answer to an empty prompt."),
    Sample("Réponds en français.", "Bien sûr ! Voilà : ünïcödé, 日本語, emoji 🙂."),
    Sample("Repeat the word 'yes' many times.", "yes " * 3000),
    Sample("Give me JSON.", '{"name": "cgpo", "tags": ["rlhf", "judges"], "nested": {"ok": true}}'),
    Sample("Write a function.", "```python\ndef add(a, b):\n    return a + b\n```"),
    Sample("Write a haiku.", "Snow on the ridge\nthe kettle starts to whisper\nwinter tea at dusk"),
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``passed``, ``failed`` or ``skipped``, with what was seen."""

    name: str
    status: Status
    detail: str = ""


@dataclass
class ConformanceReport:
    """All check results for one judge. ``ok`` is true when nothing failed (skips are fine)."""

    judge: str
    kind: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        """The failed checks, in order."""
        return [r for r in self.results if r.status == "failed"]

    def result(self, name: str) -> CheckResult:
        """The result of the check called ``name`` (see :data:`CHECKS`)."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def raise_for_failures(self) -> None:
        """Raise ``AssertionError`` listing every failed check, if any."""
        if self.failures:
            raise AssertionError(f"{self.judge} does not conform to the cgpo judge contract:\n{self}")

    def __str__(self) -> str:
        lines = [f"conformance of {self.judge} ({self.kind} judge):"]
        for r in self.results:
            mark = {"passed": "passed ", "failed": "FAILED ", "skipped": "skipped"}[r.status]
            lines.append(f"  {mark} {r.name}" + (f": {r.detail}" if r.detail else ""))
        return "\n".join(lines)


class _Hung(Exception):
    """A judge call that did not return within the watchdog deadline."""


class _CheckFailed(Exception):
    """Raised inside a check to record a failure with a message."""


@dataclass
class _Context:
    judge: Judge
    samples: list[Sample]
    rule: bool
    budget_s: float | None
    margin_s: float
    call_timeout_s: float
    timings: list[tuple[str, int, float]] = field(default_factory=list)
    hung: str | None = None
    baseline: list[int] | None = None

    def columns(self, samples: Sequence[Sample]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        return (
            [s.prompt for s in samples],
            [s.completion for s in samples],
            [copy.deepcopy(dict(s.metadata)) for s in samples],
        )

    def deadline(self, n: int) -> float:
        if self.budget_s is None:
            return self.call_timeout_s
        # Twice the allowed time before giving up on the call, so the timeout check can report by how much
        # it overran instead of only "hung".
        return max(self.call_timeout_s, 2 * (self.budget_s * max(n, 1) + self.margin_s))

    def call(self, label: str, fn: Callable[[], Any], n: int, *, timed: bool = True) -> Any:
        """Run ``fn`` under the watchdog; record its duration for the timeout check."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
                box["error"] = exc

        start = time.perf_counter()
        thread = threading.Thread(target=target, name=f"cgpo-conformance-{label}", daemon=True)
        thread.start()
        thread.join(self.deadline(n))
        elapsed = time.perf_counter() - start
        if timed:
            self.timings.append((label, n, elapsed))
        if thread.is_alive():
            # The thread cannot be killed; it is a daemon, so it does not keep the interpreter alive.
            self.hung = f"{label} (batch of {n}) did not return within {self.deadline(n):.1f} s"
            raise _Hung(self.hung)
        if "error" in box:
            raise box["error"]
        return box["value"]


def _describe_exc(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _verdict_problems(verdicts: Any, n: int, what: str) -> list[str]:
    """Everything wrong with ``verdicts`` as the result of judging ``n`` samples."""
    if not isinstance(verdicts, list):
        return [f"{what} returned {type(verdicts).__name__}, not a list"]
    if len(verdicts) != n:
        return [f"{what} returned {len(verdicts)} verdicts for {n} samples"]
    problems = []
    for i, v in enumerate(verdicts):
        if not isinstance(v, Verdict):
            problems.append(f"{what}: item {i} is {v!r}, not a cgpo.judging.Verdict")
            continue
        if type(v.value) is not int or v.value not in VERDICT_VALUES:
            problems.append(f"{what}: item {i} has value {v.value!r}; it must be the int 1, 0 or -1")
        if not isinstance(v.reason, str):
            problems.append(f"{what}: item {i} has reason {v.reason!r}; it must be a str")
        elif v.value in (0, -1) and not v.reason.strip():
            problems.append(f"{what}: item {i} has value {v.value} and no reason; 0 and -1 must say why")
        p = v.probability
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or not 0 <= p <= 1
        ):
            problems.append(f"{what}: item {i} has probability {p!r}; it must be None or a number in [0, 1]")
    return problems


def _fail_on(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise _CheckFailed("; ".join(problems[:5]) + more)


# -- the checks: each returns a detail string on success, raises _CheckFailed, or returns (skipped, why) -------------
def _check_contract(ctx: _Context) -> str:
    judge, cls = ctx.judge, type(ctx.judge)
    problems = []
    if cls.kind not in ("rule", "llm"):
        problems.append(f"kind is {cls.kind!r}, not 'rule' or 'llm'")
    params_cls = cls.Params
    if not (isinstance(params_cls, type) and dataclasses.is_dataclass(params_cls)):
        problems.append(f"Params is {params_cls!r}, not a dataclass")
    elif not params_cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        problems.append(f"Params ({params_cls.__name__}) is not frozen; use @dataclass(frozen=True)")
    elif not isinstance(judge.params, params_cls):
        problems.append(f"judge.params is {type(judge.params).__name__}, not an instance of {params_cls.__name__}")
    required = cls.required_metadata
    if not (isinstance(required, tuple) and all(isinstance(k, str) for k in required)):
        problems.append(f"required_metadata is {required!r}, not a tuple of str")
    missing = [
        (i, key)
        for i, s in enumerate(ctx.samples)
        for key in (required if isinstance(required, tuple) else ())
        if key not in s.metadata
    ]
    if missing:
        i, key = missing[0]
        problems.append(f"sample {i} lacks metadata '{key}' that the judge requires; pass samples that carry it")
    _fail_on(problems)
    return f"{params_cls.__name__} is a frozen dataclass; kind {cls.kind!r}"


def _check_imports(ctx: _Context, heavy: Sequence[str]) -> str | tuple[Status, str]:
    module = type(ctx.judge).__module__
    if module == "__main__" or importlib.util.find_spec(module) is None:
        return "skipped", f"the class lives in {module!r}, which a fresh interpreter cannot import by name"
    code = (
        "import importlib, json, sys\n"
        "importlib.import_module(sys.argv[1])\n"
        "print(json.dumps(sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)))\n"
    )
    # The child sees the same import path as this process, so modules found here are found there.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-c", code, module, json.dumps(list(heavy))],
        capture_output=True,
        text=True,
        env=env,
        timeout=max(60.0, ctx.call_timeout_s),
        check=False,
    )
    if proc.returncode != 0:
        raise _CheckFailed(f"importing {module} in a fresh interpreter failed: {proc.stderr.strip()[-500:]}")
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    if imported:
        raise _CheckFailed(
            f"importing {module} imports {', '.join(imported)}; move those imports into __init__ or judge_batch"
        )
    return f"importing {module} imports none of {', '.join(heavy)}"


def _check_raw_output(ctx: _Context) -> str:
    n = len(ctx.samples)
    sizes = sorted({0, 1, n})
    problems = []
    for size in sizes:
        prompts, completions, metadata = ctx.columns(ctx.samples[:size])
        try:
            raw = ctx.call(
                "judge_batch", functools.partial(ctx.judge.judge_batch, prompts, completions, metadata), size
            )
        except _Hung:
            raise
        except Exception as exc:  # noqa: BLE001 - any raise is the finding
            problems.append(f"judge_batch raised on a batch of {size}: {_describe_exc(exc)}")
            continue
        if not isinstance(raw, list):
            problems.append(f"judge_batch returned {type(raw).__name__} for a batch of {size}, not a list")
        elif len(raw) != size:
            problems.append(f"judge_batch returned {len(raw)} verdicts for a batch of {size}")
        else:
            bad = [v for v in raw if not isinstance(v, Verdict) and not (type(v) is int and v in VERDICT_VALUES)]
            if bad:
                problems.append(f"judge_batch returned {bad[0]!r}, neither a Verdict nor an int in {{1, 0, -1}}")
    _fail_on(problems)
    return f"one verdict per sample for batches of {', '.join(map(str, sizes))}"


def _check_verdicts(ctx: _Context) -> str:
    n = len(ctx.samples)
    sizes = sorted({0, 1, min(2, n), n})
    problems = []
    for size in sizes:
        prompts, completions, metadata = ctx.columns(ctx.samples[:size])
        verdicts = ctx.call("judge", functools.partial(ctx.judge, prompts, completions, metadata), size)
        problems += _verdict_problems(verdicts, size, f"judge(batch of {size})")
        if size == n and not problems:
            ctx.baseline = [v.value for v in verdicts]
    _fail_on(problems)
    assert ctx.baseline is not None
    tally = {v: ctx.baseline.count(v) for v in (1, 0, -1)}
    return f"batches of {', '.join(map(str, sizes))}; values on all samples: {tally}"


def _check_metadata_untouched(ctx: _Context) -> str:
    prompts, completions, metadata = ctx.columns(ctx.samples)
    before = copy.deepcopy(metadata)
    ctx.call("judge", lambda: ctx.judge(prompts, completions, metadata), len(metadata))
    changed = [i for i, (a, b) in enumerate(zip(before, metadata, strict=True)) if a != b]
    if changed:
        raise _CheckFailed(
            f"judging changed the metadata of samples {changed[:5]}: {before[changed[0]]!r} -> "
            f"{metadata[changed[0]]!r}"
        )
    return "metadata is read, not written"


def _values(verdicts: Iterable[Verdict]) -> list[int]:
    return [v.value for v in verdicts]


def _check_deterministic(ctx: _Context) -> str | tuple[Status, str]:
    if not ctx.rule:
        return "skipped", "LLM judge: batched inference may differ in the last digits; only shape is checked"
    if ctx.baseline is None:
        return "skipped", "no baseline: the verdicts check failed"
    n = len(ctx.samples)
    prompts, completions, metadata = ctx.columns(ctx.samples)
    again = _values(ctx.call("judge", lambda: ctx.judge(prompts, completions, metadata), n))
    if again != ctx.baseline:
        diff = [i for i in range(n) if again[i] != ctx.baseline[i]]
        raise _CheckFailed(f"the same batch judged twice differs at samples {diff}: {ctx.baseline} then {again}")
    single = []
    for s in ctx.samples:
        p, c, m = ctx.columns([s])
        # Tuples, not lists: the contract says Sequence, so a judge must not rely on list methods.
        verdicts = ctx.call("judge", functools.partial(ctx.judge, tuple(p), tuple(c), tuple(m)), 1)
        _fail_on(_verdict_problems(verdicts, 1, "judge(one sample, as tuples)"))
        single.append(verdicts[0].value)
    if single != ctx.baseline:
        diff = [i for i in range(n) if single[i] != ctx.baseline[i]]
        raise _CheckFailed(
            f"judging one sample at a time gives {single}, the batch gives {ctx.baseline} (samples {diff} differ)"
        )
    return f"same values twice and one sample at a time ({n} samples)"


def _check_thread_safe(ctx: _Context, threads: int) -> str | tuple[Status, str]:
    if ctx.baseline is None:
        return "skipped", "no baseline: the verdicts check failed"
    n = len(ctx.samples)
    # Thread k judges the samples rotated by k: identical batches would hide cross-talk between calls (a
    # shared scratch buffer returns the right values when every thread computed the same ones).
    shifts = [k % n for k in range(threads)]
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads

    def worker(k: int) -> None:
        rotated = ctx.samples[shifts[k] :] + ctx.samples[: shifts[k]]
        prompts, completions, metadata = ctx.columns(rotated)
        barrier.wait()  # start together, so the calls overlap
        try:
            results[k] = ctx.judge(prompts, completions, metadata)
        except BaseException as exc:  # noqa: BLE001 - reported as this thread's result
            results[k] = exc

    def run_all() -> None:
        pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    # Concurrent batches are not timed against the per-batch budget: they share the judge's workers.
    ctx.call(f"{threads} threads", run_all, n * threads, timed=False)
    problems = []
    for k, result in enumerate(results):
        if isinstance(result, BaseException):
            problems.append(f"thread {k} raised {_describe_exc(result)}")
            continue
        shape = _verdict_problems(result, n, f"thread {k}")
        problems += shape
        expected = ctx.baseline[shifts[k] :] + ctx.baseline[: shifts[k]]
        if not shape and ctx.rule and _values(result) != expected:
            problems.append(f"thread {k} got {_values(result)}, expected {expected} (the sequential values)")
    _fail_on(problems)
    same = "the sequential values" if ctx.rule else "well-formed verdicts"
    return f"{threads} concurrent batches of {n} (rotated per thread): {same}"


def _check_timeout(ctx: _Context) -> str | tuple[Status, str]:
    if ctx.budget_s is None:
        return "skipped", "no timeout declared (pass timeout_s, or give Params a timeout_seconds field)"
    over = [(label, n, t) for label, n, t in ctx.timings if t > ctx.budget_s * max(n, 1) + ctx.margin_s]
    if over:
        label, n, t = max(over, key=lambda x: x[2] - ctx.budget_s * max(x[1], 1))  # type: ignore[operator]
        allowed = ctx.budget_s * max(n, 1) + ctx.margin_s
        raise _CheckFailed(
            f"{label} on a batch of {n} took {t:.2f} s; the budget is {allowed:.2f} s "
            f"({ctx.budget_s:g} s per sample + {ctx.margin_s:g} s margin)"
        )
    slowest = max(ctx.timings, key=lambda x: x[2]) if ctx.timings else ("-", 0, 0.0)
    return (
        f"{len(ctx.timings)} calls within {ctx.budget_s:g} s per sample + {ctx.margin_s:g} s; slowest "
        f"{slowest[2]:.2f} s ({slowest[0]}, batch of {slowest[1]})"
    )


def _check_failure_injection(ctx: _Context) -> str:
    judge = ctx.judge
    n = len(ctx.samples)

    def raises(*_: Any) -> Any:
        raise RuntimeError("injected infrastructure failure (cgpo conformance kit)")

    def short(prompts: Sequence[str], *_: Any) -> Any:
        return [Verdict(1, "")] * max(len(prompts) - 1, 0)

    def garbage(prompts: Sequence[str], *_: Any) -> Any:
        return [(2, True, None, "yes")[i % 4] for i in range(len(prompts))]

    problems = []
    for label, replacement in (("raising", raises), ("too short", short), ("non-verdict values", garbage)):
        prompts, completions, metadata = ctx.columns(ctx.samples)
        # An instance attribute shadows the method for this object only; removed again in `finally`.
        judge.judge_batch = replacement  # type: ignore[method-assign,assignment]
        try:
            verdicts = ctx.call(
                "judge (injected failure)", functools.partial(judge, prompts, completions, metadata), n
            )
        except _Hung:
            raise
        except Exception as exc:  # noqa: BLE001 - any raise is the finding
            problems.append(f"with a {label} judge_batch, judge(...) raised {_describe_exc(exc)} instead of -1")
            continue
        finally:
            del judge.judge_batch
        shape = _verdict_problems(verdicts, n, f"with a {label} judge_batch")
        if shape:
            problems += shape
        elif any(v.value != -1 for v in verdicts):
            problems.append(
                f"with a {label} judge_batch, judge(...) gave {_values(verdicts)}; an infrastructure failure must "
                "give -1 (does the class override __call__?)"
            )
    _fail_on(problems)
    return "raising, short and non-verdict judge_batch results all become -1 with a reason"


def _check_injected_failures(
    ctx: _Context, injectors: Mapping[str, Callable[[Judge], contextlib.AbstractContextManager[Any]]]
) -> str | tuple[Status, str]:
    if not injectors:
        return "skipped", "no failure_injectors given; only the base-class contract was checked"
    n = len(ctx.samples)
    problems = []
    for label, injector in injectors.items():
        prompts, completions, metadata = ctx.columns(ctx.samples)
        try:
            with injector(ctx.judge):
                verdicts = ctx.call(
                    f"judge ({label})", functools.partial(ctx.judge, prompts, completions, metadata), n
                )
        except _Hung:
            raise
        except Exception as exc:  # noqa: BLE001 - any raise is the finding
            problems.append(f"under {label!r}, judge(...) raised {_describe_exc(exc)} instead of returning -1")
            continue
        shape = _verdict_problems(verdicts, n, f"under {label!r}")
        if shape:
            problems += shape
        elif any(v.value != -1 for v in verdicts):
            bad = [(i, v.value, v.reason) for i, v in enumerate(verdicts) if v.value != -1][:3]
            problems.append(f"under {label!r}, some verdicts are not -1: {bad}")
    _fail_on(problems)
    return f"{', '.join(injectors)}: every verdict -1"


def _timeout_from_params(params: Any) -> float | None:
    for name in ("timeout_seconds", "timeout_s", "timeout"):
        value = getattr(params, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def check_judge(
    judge: Judge | type[Judge],
    samples: Iterable[Sample | Mapping[str, Any] | Sequence[Any]] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    rule: bool | None = None,
    timeout_s: float | None = None,
    timeout_margin_s: float = 2.0,
    call_timeout_s: float = 120.0,
    threads: int = 4,
    check_imports: bool = True,
    heavy_modules: Sequence[str] = HEAVY_MODULES,
    failure_injectors: Mapping[str, Callable[[Judge], contextlib.AbstractContextManager[Any]]] | None = None,
) -> ConformanceReport:
    """Run every conformance check on a judge and return the report (it never raises for a failed check).

    Args:
        judge: A judge instance, or a ``Judge`` subclass that the kit builds from ``params`` (and closes).
        samples: Inputs to judge: :class:`Sample` objects, ``{"prompt", "completion", ...metadata}``
            records or ``(prompt, completion[, metadata])`` tuples. Default :data:`DEFAULT_SAMPLES`; a judge
            with ``required_metadata`` needs samples that carry it. Include a pathological input to prove
            that your timeout holds on it.
        params: The ``params`` mapping of a task YAML, used when ``judge`` is a class.
        rule: Whether to demand determinism; default: ``kind == "rule"``.
        timeout_s: Per-sample time budget; default: the ``timeout_seconds`` (or ``timeout_s``/``timeout``)
            field of the judge's params. A call on a batch of ``n`` may take ``timeout_s * n +
            timeout_margin_s`` (the bound a serial judge can promise; pooled judges are faster).
        timeout_margin_s: Slack added to every budget (process start-up, a loaded machine).
        call_timeout_s: Watchdog for calls when no budget is known; a call past it fails the kit.
        threads: Threads in the thread-safety check.
        check_imports: Whether to import the judge's module in a fresh interpreter (about a second).
        heavy_modules: Modules the judge's module must not import at import time.
        failure_injectors: ``{label: f(judge) -> context manager}``; inside each context the judge's own
            machinery is broken and every verdict must be -1.

    Returns:
        The :class:`ConformanceReport`; ``report.ok`` is true when no check failed.

    Example::

        report = check_judge(MyJudge, [{"prompt": "2+2?", "completion": "4", "answer": "4"}],
                             params={"answer_format": "plain"})
        assert report.ok, report
    """
    built = isinstance(judge, type)
    instance = _instance(judge, params)
    if isinstance(instance, ConformanceReport):
        return instance
    cls = type(instance)
    items = [Sample.coerce(s) for s in (samples if samples is not None else DEFAULT_SAMPLES)]
    if not items:
        raise ValueError("check_judge needs at least one sample")
    ctx = _Context(
        judge=instance,
        samples=items,
        rule=(cls.kind == "rule") if rule is None else rule,
        budget_s=timeout_s if timeout_s is not None else _timeout_from_params(instance.params),
        margin_s=timeout_margin_s,
        call_timeout_s=call_timeout_s,
    )
    report = ConformanceReport(f"{cls.__module__}.{cls.__qualname__}", str(cls.kind))
    steps = _steps(ctx, check_imports=check_imports, heavy_modules=heavy_modules, threads=threads,
                   failure_injectors=failure_injectors or {})  # fmt: skip
    try:
        for check_name, step in steps:
            if ctx.hung is not None and check_name != "timeout":
                report.results.append(CheckResult(check_name, "skipped", f"the judge hung earlier: {ctx.hung}"))
                continue
            report.results.append(_run_step(check_name, step, ctx))
    finally:
        if built:
            report.results.append(_close_twice(instance, ctx))
        else:
            report.results.append(CheckResult("close", "skipped", "the caller owns the instance; not closed"))
    return report


def _instance(judge: Judge | type[Judge], params: Mapping[str, Any] | None) -> Judge | ConformanceReport:
    """The judge to check (built from ``params`` when a class is given), or a failed report when it is none."""
    if isinstance(judge, type):
        if not issubclass(judge, Judge):
            report = ConformanceReport(judge.__name__, "?")
            report.results.append(CheckResult("contract", "failed", f"{judge!r} is not a cgpo.judging.Judge subclass"))
            return report
        return judge(judge.parse_params(dict(params or {})))
    if not isinstance(judge, Judge):
        report = ConformanceReport(type(judge).__name__, "?")
        report.results.append(CheckResult("contract", "failed", f"{judge!r} is not a cgpo.judging.Judge"))
        return report
    if params is not None:
        raise TypeError("params applies only when a judge class is given; this is an instance")
    return judge


def _steps(
    ctx: _Context,
    *,
    check_imports: bool,
    heavy_modules: Sequence[str],
    threads: int,
    failure_injectors: Mapping[str, Callable[[Judge], contextlib.AbstractContextManager[Any]]],
) -> list[tuple[str, Callable[[], Any]]]:
    """The checks, in the order they run."""
    imports = (
        (lambda: _check_imports(ctx, heavy_modules)) if check_imports else (lambda: ("skipped", "check_imports=False"))
    )
    return [
        ("contract", lambda: _check_contract(ctx)),
        ("imports", imports),
        ("raw_output", lambda: _check_raw_output(ctx)),
        ("verdicts", lambda: _check_verdicts(ctx)),
        ("metadata_untouched", lambda: _check_metadata_untouched(ctx)),
        ("deterministic", lambda: _check_deterministic(ctx)),
        ("thread_safe", lambda: _check_thread_safe(ctx, threads)),
        ("timeout", lambda: _check_timeout(ctx)),
        ("failure_injection", lambda: _check_failure_injection(ctx)),
        ("injected_failures", lambda: _check_injected_failures(ctx, failure_injectors)),
    ]


def _run_step(name: str, step: Callable[[], Any], ctx: _Context) -> CheckResult:
    try:
        outcome = step()
    except _CheckFailed as exc:
        return CheckResult(name, "failed", str(exc))
    except _Hung as exc:
        return CheckResult(name, "failed", f"hung: {exc}")
    except Exception as exc:  # noqa: BLE001 - an unexpected error in the judge is a failure of that check, not of the kit
        return CheckResult(name, "failed", f"unexpected {_describe_exc(exc)}")
    if isinstance(outcome, tuple):
        status, detail = outcome
        return CheckResult(name, status, detail)
    return CheckResult(name, "passed", outcome)


def _close_twice(judge: Judge, ctx: _Context) -> CheckResult:
    if ctx.hung is not None:
        # A hung call may still hold the judge's resources; closing could block on it.
        return CheckResult("close", "skipped", "the judge hung; not closed")
    try:
        ctx.call("close", judge.close, 0, timed=False)
        ctx.call("close again", judge.close, 0, timed=False)
    except _Hung as exc:
        return CheckResult("close", "failed", f"hung: {exc}")
    except Exception as exc:  # noqa: BLE001 - any raise is the finding
        return CheckResult("close", "failed", f"close() raised {_describe_exc(exc)}")
    return CheckResult("close", "passed", "close() twice without error")


def assert_judge_conforms(
    judge: Judge | type[Judge],
    samples: Iterable[Sample | Mapping[str, Any] | Sequence[Any]] | None = None,
    **options: Any,
) -> ConformanceReport:
    """:func:`check_judge`, raising ``AssertionError`` with the full report when a check fails (for pytest).

    Example::

        def test_my_judge_conforms():
            assert_judge_conforms(MyJudge, params={"max_words": 5})
    """
    report = check_judge(judge, samples, **options)
    report.raise_for_failures()
    return report
