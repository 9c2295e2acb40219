"""Phase 3: raw rewards r(s, a) and calibrated rewards sigmoid(r(s, a) - r(s, a_bar)) (CGPO eq. 5).

Tasks that share a reward model are scored in one call (:func:`cgpo.scoring.score_together`), with the
gold baselines their caches still lack; a task without a reward scores 1.0 when every judge is satisfied.
"""

from __future__ import annotations

from collections.abc import Sequence

from cgpo.phases.batches import Judged, Scored
from cgpo.scoring import score_together


def score_rollouts(judged: Sequence[Judged]) -> list[Scored]:
    """Phase 3 for every task, in order."""
    jobs = [(j.task.scorer, j.rollout.drawn.records, j.rollout.rollout.texts) for j in judged]
    raw = score_together(jobs)
    out = []
    for (scorer, records, texts), j, values in zip(jobs, judged, raw, strict=True):
        rewards, calibrated, _ = scorer.rewards(records, texts, j.verdicts, baselines=j.rollout.baselines, raw=values)
        out.append(Scored(j, rewards, calibrated))
    return out
