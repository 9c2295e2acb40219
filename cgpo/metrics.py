"""Run feedback: ``metrics.jsonl``, phase timers, the reward-hacking monitor (a trend test) and the progress display.

Metric keys (one JSON line per step): ``step``, ``loss``, ``lr``, ``grad_norm``, ``time/<phase>`` (seconds
for generate, judge, reward, judge_wait, forward_backward, optimizer, step, and ``overhead``: the step
minus the phases the main thread ran; with ``training.overlap_judging`` judge and reward run in a worker
thread beside forward_backward, and judge_wait is the main thread's time blocked on them),
``tokens_per_s``; and per task ``task/<name>/{reward, calibrated_reward, pass_rate, kl, loss,
skipped_prompts}`` and ``task/<name>/judge/<judge>/{violation_rate, error_rate}``.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple, TextIO

PHASES = ("generate", "judge", "reward", "judge_wait", "forward_backward", "optimizer")


class PhaseTimer:
    """Accumulates wall-clock seconds per phase within a step (verl-style: the name is the metric key)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.background: set[str] = set()  # phases timed in a worker thread, beside the main thread's
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, phase: str, *, background: bool = False) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[phase] += time.perf_counter() - start
                if background:
                    self.background.add(phase)

    def metrics(self, step_seconds: float) -> dict[str, float]:
        out = {f"time/{phase}": round(self.seconds.get(phase, 0.0), 6) for phase in PHASES}
        out["time/step"] = round(step_seconds, 6)
        foreground = sum(self.seconds.get(p, 0.0) for p in PHASES if p not in self.background)
        out["time/overhead"] = round(max(0.0, step_seconds - foreground), 6)
        return out


class MetricsWriter:
    """Appends one JSON line per step to ``metrics.jsonl``, flushed at once so a crash loses nothing written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after ``step`` (a resumed run rewrites them)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, metrics: Mapping[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps({k: _plain(v) for k, v in metrics.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value is honest
    return value


class RewardHackingMonitor:
    """Warns when a task's reward trends up while its pass rate trends down (CGPO's reward-hacking signature).

    Each step adds the task's mean reward (``calibrated_reward`` when logged, else ``reward``) and its pass
    rate to a window of the last ``window`` steps. Once the window is full, each series gets a one-sided
    Mann-Kendall trend test (:func:`mann_kendall`); the monitor warns when the reward's upward trend and the
    pass rate's downward trend are *both* significant at ``confidence`` (one-sided p-value of each below
    ``1 - confidence``), at most once per window per task. Under the null of no trend (the two series
    independent noise) a single check warns with probability at most ``(1 - confidence) ** 2``; the warning
    quotes both p-values and the means of the window's two halves so a user can judge the evidence.

    Held-out evaluations (``training.eval_every``) go to :meth:`update_eval`: each is compared with the run's
    first one (step 0, before training) on the same prompts.

    Args:
        window: Steps per test (>= 10: the normal approximation of the Mann-Kendall statistic needs them).
        confidence: One-sided confidence level of each of the two tests, in (0.5, 1).
    """

    STATE_VERSION = 2

    def __init__(self, window: int = 20, confidence: float = 0.99) -> None:
        if window < 10:
            raise ValueError(f"RewardHackingMonitor window must be >= 10 steps, got {window}")
        if not 0.5 < confidence < 1:
            raise ValueError(f"RewardHackingMonitor confidence must be in (0.5, 1), got {confidence}")
        self.window, self.confidence = window, confidence
        self.history: dict[str, deque[tuple[float, float]]] = {}
        self.quiet_until: dict[str, int] = {}
        self.first_eval: dict[str, EvalPoint] = {}

    def update(self, step: int, metrics: Mapping[str, Any]) -> list[str]:
        """Record a step's metrics; return warnings (empty when all is well)."""
        warnings = []
        for key, value in metrics.items():
            if not (key.startswith("task/") and key.endswith("/pass_rate")):
                continue
            task = key[len("task/") : -len("/pass_rate")]
            reward = metrics.get(f"task/{task}/calibrated_reward", metrics.get(f"task/{task}/reward"))
            if not _finite(reward) or not _finite(value):
                continue  # a step without a judged sample (all skipped) says nothing about the trend
            series = self.history.setdefault(task, deque(maxlen=self.window))
            series.append((float(reward), float(value)))
            if len(series) < self.window or step < self.quiet_until.get(task, 0):
                continue
            rewards, pass_rates = [r for r, _ in series], [p for _, p in series]
            rising, falling = mann_kendall(rewards), mann_kendall([-p for p in pass_rates])
            alpha = 1 - self.confidence
            if rising.p_value < alpha and falling.p_value < alpha:
                warnings.append(
                    f"possible reward hacking in task {task}: over the last {self.window} steps the reward rose "
                    f"({_halves(rewards)}, one-sided Mann-Kendall p={rising.p_value:.1e}) while the pass rate "
                    f"fell ({_halves(pass_rates)}, p={falling.p_value:.1e}), both trends significant at "
                    f"{self.confidence:.0%}; check the judges and the KL threshold"
                )
                self.quiet_until[task] = step + self.window
        return warnings

    def update_eval(self, result: Mapping[str, Any] | None) -> list[str]:
        """Compare a held-out evaluation (an ``eval.jsonl`` row, ``{"step", "tasks": ...}``) with the run's first.

        Warns when a task's held-out pass rate fell significantly at ``confidence`` (one-sided two-proportion
        z-test, :func:`pass_rate_drop_p_value`) while its held-out reward is above the first evaluation's. The
        evaluation reports only the reward's mean, not per-prompt rewards, so the reward's rise is a
        condition here, not a test. ``None`` (what non-main processes get from the evaluation) is ignored.
        """
        if result is None:
            return []
        warnings = []
        for task, numbers in result.get("tasks", {}).items():
            now = EvalPoint.of(int(result.get("step", 0)), numbers)
            if now is None:
                continue
            first = self.first_eval.setdefault(task, now)
            if now.step == first.step:
                continue
            p_value = pass_rate_drop_p_value(first, now)
            if p_value < 1 - self.confidence and now.reward > first.reward:
                warnings.append(
                    f"possible reward hacking in task {task}: on the {now.n} held-out prompts, from step "
                    f"{first.step} to step {now.step}, the reward rose ({first.reward:.3f} -> {now.reward:.3f}) "
                    f"while the pass rate fell ({first.pass_rate:.3f} -> {now.pass_rate:.3f}, one-sided "
                    f"p={p_value:.1e}, significant at {self.confidence:.0%}); check the judges and the KL threshold"
                )
        return warnings

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "history": {k: [list(x) for x in v] for k, v in self.history.items()},
            "quiet_until": dict(self.quiet_until),
            "first_eval": {k: list(v) for k, v in self.first_eval.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], log: Callable[[str], None] | None = None) -> None:
        """Restore :meth:`state_dict`'s output.

        Checkpoints written before the trend test (no ``version``) hold the same ``history`` of
        ``(reward, pass rate)`` pairs and load as they are; the deque keeps the newest ``window`` of them. A
        state that cannot be read resets the monitor (it only warns; training is unaffected) and says so.
        """
        try:
            history = {
                str(k): deque(((float(r), float(p)) for r, p in v), maxlen=self.window)
                for k, v in state["history"].items()
            }
            quiet_until = {str(k): int(v) for k, v in state["quiet_until"].items()}
            # Absent before held-out evaluations were monitored: the next evaluation becomes the reference.
            first_eval = {str(k): EvalPoint(int(v[0]), int(v[1]), float(v[2]), float(v[3]))
                          for k, v in state.get("first_eval", {}).items()}  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            (log or _stderr)(
                f"reward-hacking monitor: the checkpoint's monitor state is unreadable ({exc!r}); "
                f"starting it afresh (it warns again once {self.window} steps are recorded)"
            )
            self.history, self.quiet_until, self.first_eval = {}, {}, {}
            return
        self.history, self.quiet_until, self.first_eval = history, quiet_until, first_eval


class EvalPoint(NamedTuple):
    """One task's held-out evaluation: its ``step``, ``n`` prompts, ``pass_rate`` and (calibrated) ``reward``."""

    step: int
    n: int
    pass_rate: float
    reward: float

    @classmethod
    def of(cls, step: int, numbers: Mapping[str, Any]) -> EvalPoint | None:
        """From a task's entry in an evaluation result; None when it lacks a finite pass rate, reward or n."""
        reward = numbers.get("calibrated_reward", numbers.get("reward"))
        n, pass_rate = numbers.get("n"), numbers.get("pass_rate")
        if not (_finite(reward) and _finite(pass_rate) and isinstance(n, int) and n > 0):
            return None
        return cls(step, n, float(pass_rate), float(reward))


def pass_rate_drop_p_value(before: EvalPoint, after: EvalPoint) -> float:
    """One-sided p-value of H1 "the pass rate fell from ``before`` to ``after``" (two-proportion z-test).

    ``z = (p0 - p1) / sqrt(p (1 - p) (1/n0 + 1/n1))`` with ``p`` the pooled rate, ``p = 1 - Phi(z)``. Both
    evaluations are greedy on the same prompts, so they are positively correlated; the unpaired test's
    variance is then larger than the paired difference's, which makes it conservative (the evaluation
    keeps no per-prompt verdicts for McNemar's paired test).
    """
    pooled = (before.pass_rate * before.n + after.pass_rate * after.n) / (before.n + after.n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / before.n + 1 / after.n))
    if se == 0:  # both all-pass or both all-fail: no change to detect
        return 1.0
    return 1 - NormalDist().cdf((before.pass_rate - after.pass_rate) / se)


class TrendTest(NamedTuple):
    """A one-sided Mann-Kendall test for an increasing trend: the statistic ``s``, its ``z`` and ``p_value``."""

    s: int
    z: float
    p_value: float


def mann_kendall(values: Sequence[float]) -> TrendTest:
    """One-sided Mann-Kendall test of H1 "``values`` increase with their index" against H0 "no trend".

    ``S = sum_{i<j} sign(x_j - x_i)``; under H0 (independent, identically distributed values) ``E[S] = 0`` and
    ``Var(S) = [n(n-1)(2n+5) - sum_g t_g(t_g-1)(2t_g+5)] / 18``, with ``t_g`` the size of each group of tied
    values (pass rates of a few dozen samples tie often). ``z = (S - sign(S)) / sqrt(Var(S))`` (continuity
    correction) and ``p = 1 - Phi(z)``, the normal approximation, accurate from n of about 10.

    Rank-based rather than an OLS slope's t-test: the per-step reward is heavy-tailed (a few long
    completions move it) and the pass rate is a bounded, discrete proportion, for which a t-test's normal
    residuals do not hold; and the normal quantile is in the standard library (``statistics.NormalDist``)
    where Student's t needs scipy, which cgpo does not depend on for one statistic of O(n^2) for n ~ 20.
    """
    n = len(values)
    s = sum(_sign(values[j] - values[i]) for i in range(n) for j in range(i + 1, n))
    ties = Counter(values).values()
    var = (n * (n - 1) * (2 * n + 5) - sum(t * (t - 1) * (2 * t + 5) for t in ties)) / 18
    if var <= 0:  # a constant series: no evidence of anything
        return TrendTest(s, 0.0, 1.0)
    z = (s - _sign(s)) / math.sqrt(var)  # continuity correction: S moves in steps of 2
    return TrendTest(s, z, 1 - NormalDist().cdf(z))


def _halves(values: Sequence[float]) -> str:
    """``mean of the window's first half -> mean of its second half``: the size of the change, for the reader."""
    half = len(values) // 2
    return f"mean {sum(values[:half]) / half:.3f} -> {sum(values[-half:]) / half:.3f}"


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


class Progress:
    """A rich progress bar with ETA on a terminal; plain log lines otherwise (or when asked)."""

    def __init__(
        self, mode: str, total: int, start: int, log: Callable[[str], None], stream: TextIO | None = None
    ) -> None:
        # sys.stderr is looked up now, not bound at import: callers may have redirected it since.
        stream = sys.stderr if stream is None else stream
        self.log = log
        use_bar = mode == "bar" or (mode == "auto" and stream.isatty())
        self.enabled = mode != "none"
        self._bar: Any = None
        if use_bar and self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("cgpo train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[summary]}"), transient=False,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, summary="")

    def update(self, step: int, metrics: Mapping[str, Any], tasks: list[str]) -> None:
        summary = (
            "  ".join(f"{t}: pass {metrics.get(f'task/{t}/pass_rate', float('nan')):.2f}" for t in tasks)
            + f"  loss {metrics.get('loss', float('nan')):.4f}"
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=step, summary=summary)
        elif self.enabled:
            self.log(f"step {step}  {summary}  ({metrics.get('time/step', 0.0):.2f} s/step)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
