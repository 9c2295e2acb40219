"""The judge error-rate alarm: a judge that keeps failing (-1) stops the run, or warns loudly.

A failing judge (a dead judge server, a timeout that breaks in worker threads, metadata it cannot read) makes
every verdict -1; under ``on_judge_failure: exclude`` those samples silently drop out of training, so a task
can stop training for a whole run without anyone noticing. Each step the trainer feeds this alarm the step's
``task/<task>/judge/<label>/error_rate`` metrics (the share of the step's samples that the judge scored -1,
averaged over processes, so every process decides alike); a judge whose rate stays above the task's
``judge_error_alarm.max_error_rate`` for ``judge_error_alarm.steps`` consecutive steps raises the alarm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from cgpo.config import JudgeErrorAlarmConfig
from cgpo.errors import UserError

_PREFIX, _INFIX, _SUFFIX = "task/", "/judge/", "/error_rate"


class JudgeErrorAlarmStop(UserError):
    """A judge's error rate stayed above its task's threshold and ``judge_error_alarm.action`` is ``stop``."""


class JudgeErrorAlarm:
    """Counts, per (task, judge), the consecutive steps whose error rate is above the task's threshold.

    When the count reaches ``steps``: ``stop`` raises :class:`JudgeErrorAlarmStop` (the trainer saves a
    checkpoint, then the CLI prints the message and exits 2); ``warn`` logs one line, once per episode (an
    episode ends at the first step back at or below the threshold). A step that does not report the judge
    (no sample of the task judged) neither extends nor ends an episode.

    Args:
        settings: Each task's ``judge_error_alarm`` by task name; a task not named gets the defaults.
        log: Where ``warn`` writes its line.
    """

    def __init__(self, settings: Mapping[str, JudgeErrorAlarmConfig], log: Callable[[str], None]) -> None:
        self.settings = dict(settings)
        self.log = log
        self.rates: dict[tuple[str, str], list[tuple[int, float]]] = {}  # the current episode's (step, rate)
        self.warned: set[tuple[str, str]] = set()

    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Feed one step's metrics; raise :class:`JudgeErrorAlarmStop` or log a warning when a judge keeps failing."""
        for key, value in metrics.items():
            parsed = _parse(key)
            if parsed is None or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            setting = self.settings.get(parsed[0], JudgeErrorAlarmConfig())
            if value <= setting.max_error_rate:
                self.rates.pop(parsed, None)
                self.warned.discard(parsed)
                continue
            episode = self.rates.setdefault(parsed, [])
            episode.append((step, float(value)))
            if len(episode) < setting.steps:
                continue
            message = _describe(parsed, episode[-setting.steps :], setting)
            if setting.action == "stop":
                raise JudgeErrorAlarmStop(
                    f"{message}; stopping the run (judge_error_alarm.action: stop). Fix the judge and resume "
                    "from the checkpoint, or set the task's judge_error_alarm to warn or a higher max_error_rate"
                )
            if parsed not in self.warned:
                self.warned.add(parsed)
                self.log(
                    f"WARNING: {message}; training goes on (judge_error_alarm.action: warn), the failed samples "
                    f"follow on_judge_failure"
                )

    def state_dict(self) -> dict[str, Any]:
        return {
            "rates": [[task, label, [list(x) for x in episode]] for (task, label), episode in self.rates.items()],
            "warned": sorted([task, label] for task, label in self.warned),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rates = {(str(t), str(j)): [(int(s), float(r)) for s, r in episode] for t, j, episode in state["rates"]}
        self.warned = {(str(t), str(j)) for t, j in state["warned"]}


def _parse(key: str) -> tuple[str, str] | None:
    """``task/<task>/judge/<label>/error_rate`` -> ``(task, label)``; None for any other key.

    Task names and judge labels cannot hold ``/`` (config.py's name pattern), so the split is unambiguous.
    """
    if not (key.startswith(_PREFIX) and key.endswith(_SUFFIX) and _INFIX in key):
        return None
    task, _, label = key[len(_PREFIX) : -len(_SUFFIX)].partition(_INFIX)
    return (task, label) if task and label and "/" not in label else None


def _describe(which: tuple[str, str], episode: list[tuple[int, float]], setting: JudgeErrorAlarmConfig) -> str:
    task, label = which
    first, last = episode[0][0], episode[-1][0]
    rates = ", ".join(f"{rate:.0%}" for _, rate in episode)
    return (
        f"task {task}: judge '{label}' failed (-1) on {rates} of its samples at steps {first}-{last} "
        f"({len(episode)} consecutive steps above judge_error_alarm.max_error_rate {setting.max_error_rate:g}); "
        "check its server, timeouts and the task's metadata"
    )
