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
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

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

    Over the last ``window`` steps it fits a least-squares slope to each series; it warns when the reward
    rises by more than ``min_reward_rise`` (in reward units) and the pass rate falls by more than
    ``min_pass_drop`` (absolute) across the window, at most once per window per task.
    """

    def __init__(self, window: int = 20, min_reward_rise: float = 0.02, min_pass_drop: float = 0.05) -> None:
        self.window, self.min_reward_rise, self.min_pass_drop = window, min_reward_rise, min_pass_drop
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
            if reward is None or value is None:
                continue
            series = self.history.setdefault(task, deque(maxlen=self.window))
            series.append((float(reward), float(value)))
            if len(series) < self.window or step < self.quiet_until.get(task, 0):
                continue
            rise = _slope([r for r, _ in series]) * (self.window - 1)
            drop = -_slope([p for _, p in series]) * (self.window - 1)
            if rise > self.min_reward_rise and drop > self.min_pass_drop:
                warnings.append(
                    f"possible reward hacking in task {task}: over the last {self.window} steps the reward rose by "
                    f"{rise:.3f} while the pass rate fell by {drop:.3f}; check the judges and the KL threshold"
                )
                self.quiet_until[task] = step + self.window
        return warnings

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}, "quiet_until": dict(self.quiet_until)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = {k: deque((tuple(x) for x in v), maxlen=self.window) for k, v in state["history"].items()}
        self.quiet_until = {k: int(v) for k, v in state["quiet_until"].items()}


def _slope(values: list[float]) -> float:
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    var = sum((x - mean_x) ** 2 for x in range(n))
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / var if var else 0.0


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
