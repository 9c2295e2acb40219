"""CODPO: constrained online DPO (CGPO paper §4.1.2, eqs. 13-15; cgpo-algorithms.md §6).

Per prompt s, from its K on-policy samples [paper]::

    a+ = argmax of r(s,a) over the samples that satisfy every judge (X+)
    a- = argmin of r(s,a) over the samples that violate a judge (X-);
         if the prompt has no violating sample, the lowest-reward sample
    l_DPO  = log sigmoid(beta * [(log pi_w(a+) - log pi_ref(a+)) - (log pi_w(a-) - log pi_ref(a-))])   [eq. 13]
    l~_DPO = l_DPO + (lam / |a+|) * log pi_w(a+|s)                                                   [eq. 14]
    loss   = -mean over kept prompts of l~_DPO

Eq. 15 writes the update as w - alpha * grad(l~), which would *minimize* a log-likelihood; that sign is a
typo, and we minimize -l~ as TRL #2190 does. The lambda term is a length-normalized log-likelihood bonus
on the chosen response (|a+| counts response tokens), not DPOP's hinge.

Interpretations (cgpo-algorithms.md §6): selection masks with +-inf (``where(satisfied, r, -inf)`` /
``where(violated, r, +inf)``), never by multiplying by 0, which with signed rewards lets a masked-out
sample win (TRL #2190's bug, §15). A prompt is skipped when it has no satisfying sample, or when a+ and a-
are the same sample (K = 1, or every reward tied with no violator). Ties go to the lowest sample index.
Excluded samples (verdict -1) are never chosen as a+ or a-. No KL_max filter is described for CODPO;
beta is the regularizer. beta = 0.1 and lam = 5.0 are TRL #2190's defaults (the paper gives none).

With no judges (every verdict 1), a+ is the best and a- the worst sample, and CODPO reduces to online DPO
(``online_dpo``: best vs. worst of K) plus the lambda * log-likelihood / length term on the chosen answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from cgpo.optimizers.base import LossOutput, Optimizer, PolicyBatch
from cgpo.schema import Invalid


@dataclass(frozen=True)
class CODPOParams:
    """Hyperparameters of CODPO.

    Args:
        beta: DPO inverse temperature (eq. 13); also the only regularizer towards pi_ref.
        lam: Weight of the length-normalized log-likelihood of the chosen answer (eq. 14); 0 gives plain DPO.
    """

    beta: float = 0.1
    lam: float = 5.0

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise Invalid("beta", f"must be > 0, got {self.beta}")
        if not self.lam >= 0:
            raise Invalid("lam", f"must be >= 0, got {self.lam}")


class CODPO(Optimizer):
    """Constrained online DPO (eqs. 13-15); see the module docstring."""

    Params = CODPOParams
    kind: ClassVar[Literal["cgpo", "baseline"]] = "cgpo"
    min_samples: ClassVar[int] = 2
    description: ClassVar[str] = "CGPO's CODPO: DPO on best satisfying vs. worst violating sample (eqs. 13-15)"

    def loss(self, batch: PolicyBatch) -> LossOutput:
        """Eqs. 13-14, negated and averaged over kept prompts; see the module docstring."""
        import torch
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
        params: CODPOParams = self.params
        valid = batch.verdicts != -1
        satisfied = batch.verdicts == 1
        violated = batch.verdicts == 0
        rewards = batch.rewards.detach()

        chosen, has_positive = masked_argmax(rewards, satisfied)
        worst_violating, has_negative = masked_argmin(rewards, violated)
        worst_valid, _ = masked_argmin(rewards, valid)
        rejected = torch.where(has_negative, worst_violating, worst_valid)
        kept = has_positive & (chosen != rejected)

        n = int(kept.sum())
        stats = {
            "kept_prompts": float(n),
            "skipped_prompts": float(batch.num_prompts - n),
            "no_positive_prompts": float((~has_positive).sum()),
            "no_negative_prompts": float((has_positive & ~has_negative).sum()),
            "reward_margin_mean": safe_mean((take(rewards, chosen) - take(rewards, rejected))[kept]),
        }
        if n == 0:
            stats.update(dpo_accuracy=0.0, logit_mean=0.0, chosen_nll_per_token=0.0)
            return LossOutput(zero_loss(batch), stats)

        # Index the kept rows instead of masking with where(): a skipped row may point at an excluded sample
        # whose log-prob or length is arbitrary, and 0 * inf in the backward of where() would give NaN.
        rows = kept.nonzero().squeeze(1)
        pos, neg = chosen[rows], rejected[rows]
        chosen_logp = batch.logps[rows, pos]
        logit = dpo_logit(batch, rows, pos, neg, params.beta)  # eq. 13, pi_ref constant
        chosen_len = batch.lengths[rows, pos].to(chosen_logp.dtype)
        objective = F.logsigmoid(logit) + params.lam * chosen_logp / chosen_len  # eq. 14
        stats.update(
            dpo_accuracy=safe_mean((logit > 0).float()),
            logit_mean=safe_mean(logit),
            chosen_nll_per_token=safe_mean(-(chosen_logp / chosen_len)),
        )
        return LossOutput(-objective.sum() / n, stats)
