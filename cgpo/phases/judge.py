"""Phase 2: every task's samples (and a_bar, for objectives that read it) through its mixture of judges.

A sample is acceptable only when every judge of its task is satisfied (Kleene AND, :mod:`cgpo.judging`);
a judge that fails gives -1, which the task's ``on_judge_failure`` maps to excluded, violated or a stop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cgpo.judging import FAILED, VIOLATED, MixtureResult
from cgpo.phases.batches import Judged, TaskRollout


def judge_rollouts(rollouts: Sequence[TaskRollout]) -> list[Judged]:
    """Phase 2 for every task, in order."""
    return [judge_rollout(r) for r in rollouts]


def judge_rollout(r: TaskRollout) -> Judged:
    """``[N]`` verdicts of a task's samples; ``[B]`` verdicts of its a_bar when its objective uses them."""
    task = r.task
    records = r.drawn.records
    samples = [record for record in records for _ in range(task.config.sampling.num_samples)]
    verdicts, mixture = task.scorer.judge(samples, r.rollout.texts)
    baseline_verdicts = None
    if task.objective.uses_baseline_response:
        # A prompt without a_bar gets -1, so CRRAFT can never fall back to it; " " keeps judges from
        # seeing an empty completion they might reject for its own sake.
        judged = task.scorer.baseline_verdicts(records, [text or " " for text in r.baselines])
        absent = torch.tensor([not text for text in r.baselines])
        baseline_verdicts = torch.where(absent, torch.full_like(judged, FAILED), judged)
    return Judged(r, verdicts, mixture, baseline_verdicts)


def judge_rates(mixture: MixtureResult) -> dict[str, dict[str, float]]:
    """Per judge label: ``violation_rate`` = mean [v == 0] and ``error_rate`` = mean [v == -1] over the batch."""
    rates = {}
    for label, column in mixture.per_judge.items():
        values = [v.value for v in column]
        n = max(1, len(values))
        rates[label] = {
            "violation_rate": sum(v == VIOLATED for v in values) / n,
            "error_rate": sum(v == FAILED for v in values) / n,
        }
    return rates
