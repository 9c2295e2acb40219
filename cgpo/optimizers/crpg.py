"""CRPG: calibrated-regularized policy gradient (CGPO paper §4.1.1, eqs. 10-12; cgpo-algorithms.md §5).

For each non-excluded sample i of the task batch::

    R_cr(s,a)  = R_calib(s,a) if (s,a) satisfies every judge else 0                     [eq. 8]
    R~(s,a)    = max{1 - ell(s,a) / KL_max, 0} * R_cr(s,a)                               [eq. 11]
    loss       = -(1/n) sum_i (R~_i - (1/n) sum_j R~_j) * log pi_w(a_i|s_i)             [eq. 12, as a loss]

``ell = old_logps - ref_logps`` is the sequence log-ratio under stop-gradient, and R~ is detached, so the
gradient is exactly eq. 12's REINFORCE estimator with a batch-mean baseline: no importance ratio, no
clipping, no critic. A violating sample has R~ = 0 and so the advantage ``-mean(R~)``: whenever the batch
mean is positive its likelihood is pushed down, which is how CRPG "lowers X-".

Interpretations (cgpo-algorithms.md §5):

* n counts every non-excluded sample of the task batch (up to B*K); verdict -1 samples are left out of
  the baseline mean and of the sum.
* The KL factor is not clipped above 1 (the paper's formula; TRL #2190 also clips only at 0). Set
  ``kl_factor_max: 1.0`` to clip it.
* ``normalize: sample`` (default) is the paper's 1/n with summed sequence log-probs; ``token`` divides the
  same sum by the total number of completion tokens instead, as TRL #2190 does (a different estimator).
* ``kl_threshold: None`` on the batch means no KL regularization (factor 1); tasks normally set one.

With no judges (every verdict 1), R_cr = R_calib and CRPG reduces to unconstrained REINFORCE on the
calibrated reward with a batch-mean baseline, each reward scaled by the KL factor
(``reinforce`` with ``reward: calibrated, baseline: mean`` differs only in using a KL penalty instead of
the multiplicative factor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from cgpo.optimizers.base import LossOutput, Optimizer, PolicyBatch
from cgpo.schema import Invalid


@dataclass(frozen=True)
class CRPGParams:
    """Hyperparameters of CRPG.

    Args:
        kl_factor_max: Upper clip of the KL factor ``max{1 - ell/KL_max, 0}``; ``None`` (default, the
            paper) leaves factors above 1 (negative log-ratios) unclipped.
        normalize: ``sample`` divides the summed loss by the number of samples n (the paper);
            ``token`` by the total number of completion tokens (TRL #2190).
    """

    kl_factor_max: float | None = None
    normalize: Literal["sample", "token"] = "sample"

    def __post_init__(self) -> None:
        if self.kl_factor_max is not None and not self.kl_factor_max > 0:
            raise Invalid("kl_factor_max", f"must be > 0 or null, got {self.kl_factor_max}")


class CRPG(Optimizer):
    """Calibrated-regularized policy gradient (eqs. 10-12); see the module docstring."""

    Params = CRPGParams
    kind: ClassVar[Literal["cgpo", "baseline"]] = "cgpo"
    uses_kl_threshold: ClassVar[bool] = True
    description: ClassVar[str] = "CGPO's CRPG: REINFORCE on the KL-scaled constrained calibrated reward (eqs. 10-12)"

    def loss(self, batch: PolicyBatch) -> LossOutput:
        """Eq. 12 as a loss over the ``[B, K]`` tensors of ``batch``; see the module docstring."""
        import torch

        from cgpo.optimizers._select import check_batch, safe_mean, sequence_logratio, zero_loss

        check_batch(batch)
        params: CRPGParams = self.params
        valid = batch.verdicts != -1
        satisfied = batch.verdicts == 1
        ell = sequence_logratio(batch)
        if batch.kl_threshold is None:
            factor = torch.ones_like(ell)
        else:
            factor = (1.0 - ell / batch.kl_threshold).clamp(min=0.0)  # eq. 11
        if params.kl_factor_max is not None:
            factor = factor.clamp(max=params.kl_factor_max)
        reward = torch.where(satisfied, batch.calibrated_rewards.detach() * factor, torch.zeros_like(factor))

        n = int(valid.sum())
        stats = {
            "kept_samples": float(n),
            "excluded_samples": float((~valid).sum()),
            "satisfied_rate": safe_mean(satisfied[valid].float()),
            "kl_factor_mean": safe_mean(factor[valid]),
            "kl_factor_zero_frac": safe_mean((factor[valid] == 0).float()),
            "logratio_mean": safe_mean(ell[valid]),
        }
        if n == 0:  # every sample excluded: nothing to learn from, but keep the graph
            stats.update(reward_mean=0.0, mean_advantage=0.0, mean_abs_advantage=0.0)
            return LossOutput(zero_loss(batch), stats)

        baseline = reward[valid].mean()  # batch-mean baseline over the non-excluded samples (eq. 12)
        advantage = torch.where(valid, reward - baseline, torch.zeros_like(reward))
        # Boolean indexing, not a 0-weight: an excluded sample's log-prob may be anything, and 0 * inf is NaN.
        terms = advantage[valid] * batch.logps[valid]
        denom = float(n) if params.normalize == "sample" else float(batch.lengths[valid].sum())
        loss = -terms.sum() / denom
        stats.update(
            reward_mean=float(baseline),
            mean_advantage=safe_mean(advantage[valid]),
            mean_abs_advantage=safe_mean(advantage[valid].abs()),
        )
        return LossOutput(loss, stats)
