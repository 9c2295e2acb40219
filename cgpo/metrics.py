"""Run feedback: ``metrics.jsonl``, phase timers, the reward-hacking monitor and the progress display.

Metric keys (one JSON line per step): ``step``, ``loss``, ``lr``, ``grad_norm``, ``time/<phase>`` (seconds
for generate, judge, reward, forward_backward, optimizer, step, and ``overhead``: the step minus those
phases), ``tokens_per_s``; and per task ``task/<name>/{reward, calibrated_reward, pass_rate, kl, loss,
skipped_prompts}`` and ``task/<name>/judge/<judge>/{violation_rate, error_rate}``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple, TextIO

PHASES = ("generate", "judge", "reward", "forward_backward", "optimizer")


class PhaseTimer:
    """Accumulates wall-clock seconds per phase within a step (verl-style: the name is the metric key)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def metrics(self, step_seconds: float) -> dict[str, float]:
        out = {f"time/{phase}": round(self.seconds.get(phase, 0.0), 6) for phase in PHASES}
        out["time/step"] = round(step_seconds, 6)
        out["time/overhead"] = round(max(0.0, step_seconds - sum(self.seconds.get(p, 0.0) for p in PHASES)), 6)
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

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "history": {k: [list(x) for x in v] for k, v in self.history.items()},
            "quiet_until": dict(self.quiet_until),
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
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            (log or _stderr)(
                f"reward-hacking monitor: the checkpoint's monitor state is unreadable ({exc!r}); "
                f"starting it afresh (it warns again once {self.window} steps are recorded)"
            )
            self.history, self.quiet_until = {}, {}
            return
        self.history, self.quiet_until = history, quiet_until


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
    print(line, file=sys.stderr)


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
