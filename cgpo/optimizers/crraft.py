"""CRRAFT: calibrated-regularized reward-ranked fine-tuning (CGPO paper §4.1.3, eqs. 16-18; cgpo-algorithms.md §7).

Per prompt s with samples a^1..a^K::

    eligible(a) = (a satisfies every judge) and ell(s,a) <= KL_max                            [eq. 17]
    a*          = argmax of r(s,a) over the eligible samples                                 [eq. 17]
    loss        = -(1/n) sum_{kept prompts} R_calib(s,a*) * log pi_w(a*|s)                   [eq. 18, as a loss]

``ell = old_logps - ref_logps`` is the per-sample sequence log-ratio; the paper writes the KL as
"log pi_wt / log pi_ref (s,a)", which we read as this log-ratio, as in CRPG [interpretation]. The weight
R_calib(s,a*) is detached. Violating samples (Option II) get no gradient at all.

Fallback [paper]: when no sample of a prompt is eligible, train on the baseline response a_bar if it
satisfies the judges (``baseline_verdicts == 1``) and the trainer provided its log-probs
(``baseline_logps``); its weight is R_calib(s, a_bar) = sigmoid(0) = 0.5 (TRL #2190 hard-codes 0.5; the
``fallback_weight`` parameter exposes it, e.g. 1.0 for a task without a reward model, where a satisfying
response's calibrated reward is 1). Otherwise the prompt is skipped. TRL #2190 also requires
ell(s, a_bar) <= KL_max, with ell from teacher-forcing a_bar through both models; the paper does not state
that condition, so it is off unless ``fallback_requires_kl: true``.

Interpretations: n is the number of kept prompts (the paper's 1/n does not say whether skipped prompts
count; dividing by B would only rescale). Ranking uses the raw reward r (within a prompt it orders exactly
like R_calib, §4); ties go to the lowest sample index. Masking uses -inf, never multiplication by 0.
Excluded samples (verdict -1) are never eligible. ``kl_threshold: None`` means no KL filter.

With no judges (every verdict 1), CRRAFT reduces to CGPO's RAFT (eq. 16: best-of-K by reward, one
gradient step) restricted to samples within KL_max and weighted by R_calib, falling back to a_bar when
every sample exceeds KL_max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from cgpo.optimizers.base import LossOutput, Optimizer, PolicyBatch
from cgpo.schema import Invalid


@dataclass(frozen=True)
class CRRAFTParams:
    """Hyperparameters of CRRAFT.

    Args:
        fallback_requires_kl: Also require ell(s, a_bar) <= KL_max before training on a_bar (TRL #2190's
            extra condition; off by default, the paper does not state it). Needs ``baseline_ref_logps``.
        fallback_weight: Weight of a_bar in the fallback: R_calib(s, a_bar) = sigmoid(0) = 0.5 by definition.
    """

    fallback_requires_kl: bool = False
    fallback_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.fallback_weight <= 1:
            raise Invalid("fallback_weight", f"must be in [0, 1] like a calibrated reward, got {self.fallback_weight}")


class CRRAFT(Optimizer):
    """Calibrated-regularized reward-ranked fine-tuning (eqs. 16-18); see the module docstring."""

    Params = CRRAFTParams
    kind: ClassVar[Literal["cgpo", "baseline"]] = "cgpo"
    accepts_off_policy_samples: ClassVar[bool] = True  # ranks and imitates: no importance weights
    uses_baseline_response: ClassVar[bool] = True
    uses_kl_threshold: ClassVar[bool] = True
    description: ClassVar[str] = "CGPO's CRRAFT: best eligible sample per prompt, weighted SFT (eqs. 16-18)"

    def loss(self, batch: PolicyBatch) -> LossOutput:
        """Eq. 18 as a loss over the ``[B, K]`` tensors of ``batch``; see the module docstring."""
        import torch

        from cgpo.optimizers._select import check_batch, masked_argmax, safe_mean, sequence_logratio, take, zero_loss

        check_batch(batch)
        params: CRRAFTParams = self.params
        satisfied = batch.verdicts == 1
        ell = sequence_logratio(batch)
        within_kl = torch.ones_like(satisfied) if batch.kl_threshold is None else ell <= batch.kl_threshold
        eligible = satisfied & within_kl  # eq. 17: filter, then rank

        best, has_eligible = masked_argmax(batch.rewards.detach(), eligible)
        weight = take(batch.calibrated_rewards.detach(), best)
        chosen_logp = take(batch.logps, best)

        fallback = torch.zeros_like(has_eligible)
        if batch.baseline_logps is not None and batch.baseline_verdicts is not None:
            fallback = ~has_eligible & (batch.baseline_verdicts == 1)
            if params.fallback_requires_kl and batch.kl_threshold is not None:
                if batch.baseline_ref_logps is None:
                    raise ValueError("fallback_requires_kl needs baseline_ref_logps (log pi_ref of a_bar)")
                bar_ell = (batch.baseline_logps.detach() - batch.baseline_ref_logps.detach()).nan_to_num(
                    nan=float("inf")
                )
                fallback = fallback & (bar_ell <= batch.kl_threshold)
            weight = torch.where(fallback, torch.full_like(weight, params.fallback_weight), weight)
            chosen_logp = torch.where(fallback, batch.baseline_logps, chosen_logp)
        kept = has_eligible | fallback

        n = int(kept.sum())
        stats = {
            "kept_prompts": float(n),
            "skipped_prompts": float(batch.num_prompts - n),
            "fallback_prompts": float(fallback.sum()),
            "eligible_rate": safe_mean(eligible[batch.verdicts != -1].float()),
            "kl_filtered_samples": float((satisfied & ~within_kl).sum()),
            "mean_weight": safe_mean(weight[kept]),
            "chosen_reward_mean": safe_mean(take(batch.rewards, best)[has_eligible]),
        }
        if n == 0:
            return LossOutput(zero_loss(batch), stats)
        # Boolean indexing, not a 0-weight: a skipped row's log-prob may be anything, and 0 * inf is NaN.
        loss = -(weight[kept] * chosen_logp[kept]).sum() / n
        # + zero_loss: the backward reaches baseline_logps (and every logp) whether or not a fallback was
        # used, so every DDP rank differentiates the same tensors.
        return LossOutput(loss + zero_loss(batch), stats)
