"""Online DPO: the unconstrained pairwise baseline (cgpo-algorithms.md §6 without the judges).

Per prompt s with K on-policy samples::

    a+ = argmax_k r(s,a^k),   a- = argmin_k r(s,a^k)           (over non-excluded samples)
    loss = -mean over kept prompts of log sigmoid(beta * [(log pi_w(a+) - log pi_ref(a+)) - (log pi_w(a-) - log pi_ref(a-))])

The judges are ignored except for verdict -1 (excluded samples are never chosen). A prompt is skipped
when a+ and a- are the same sample (K = 1, or every reward tied); ties go to the lowest index. This is
CODPO with no judges and lam = 0, the comparison the CGPO paper runs against DPO-style training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from cgpo.optimizers.base import LossOutput, Optimizer, PolicyBatch
from cgpo.schema import Invalid


@dataclass(frozen=True)
class OnlineDPOParams:
    """Hyperparameters of online DPO.

    Args:
        beta: DPO inverse temperature, the regularizer towards pi_ref.
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise Invalid("beta", f"must be > 0, got {self.beta}")


class OnlineDPO(Optimizer):
    """DPO on the best vs. the worst of K on-policy samples (unconstrained baseline)."""

    Params = OnlineDPOParams
    kind: ClassVar[Literal["cgpo", "baseline"]] = "baseline"
    min_samples: ClassVar[int] = 2
    description: ClassVar[str] = "Online DPO baseline: best vs. worst of K by reward, no judges"

    def loss(self, batch: PolicyBatch) -> LossOutput:
        """Negative mean DPO log-likelihood over kept prompts; see the module docstring."""
        import torch.nn.functional as F

        from cgpo.optimizers._select import (
            check_batch,
            dpo_logit,
            masked_argmax,
            masked_argmin,
            safe_mean,
            take,
            zero_loss,
        )

        check_batch(batch)
        params: OnlineDPOParams = self.params
        valid = batch.verdicts != -1
        rewards = batch.rewards.detach()
        chosen, found = masked_argmax(rewards, valid)
        rejected, _ = masked_argmin(rewards, valid)
        kept = found & (chosen != rejected)

        n = int(kept.sum())
        stats = {
            "kept_prompts": float(n),
            "skipped_prompts": float(batch.num_prompts - n),
            "reward_margin_mean": safe_mean((take(rewards, chosen) - take(rewards, rejected))[kept]),
        }
        if n == 0:
            stats.update(dpo_accuracy=0.0, logit_mean=0.0)
            return LossOutput(zero_loss(batch), stats)
        rows = kept.nonzero().squeeze(1)
        logit = dpo_logit(batch, rows, chosen[rows], rejected[rows], params.beta)
        stats.update(dpo_accuracy=safe_mean((logit > 0).float()), logit_mean=safe_mean(logit))
        return LossOutput(-F.logsigmoid(logit).sum() / n, stats)
