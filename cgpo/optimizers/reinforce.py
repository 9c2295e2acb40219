"""REINFORCE / RLOO with a KL penalty: the PPO-like unconstrained baseline.

For each non-excluded sample i (prompt b, sample k)::

    R_i   = r_i - beta * ell_i                    (r raw or calibrated; ell = old_logps - ref_logps, stop-gradient)
    A_i   = R_i - baseline_i
            mean: baseline_i = mean of R over every non-excluded sample of the task batch
            rloo: baseline_i = mean of R over the *other* non-excluded samples of the same prompt
                  (leave-one-out, Kool et al. 2019; TRL's RLOO); A_i = 0 if it is the prompt's only one
    loss  = -(1/n) sum_i A_i * log pi_w(a_i|s_i)    (n = non-excluded samples; ``token``: total tokens)

The KL penalty in the reward is the PPO/RLOO form ("KL in reward" with the sequence log-ratio as the
per-sample KL estimate); there is no importance ratio or clipping because the step is on-policy. The
judges are ignored except for verdict -1 (excluded samples are left out of the sum and of every baseline),
so this is the reward-hacking-prone reference the CGPO paper compares against (its PPO). With
``reward: calibrated, baseline: mean, beta: 0`` and no judges it is CRPG without the KL factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from cgpo.optimizers.base import LossOutput, Optimizer, PolicyBatch
from cgpo.schema import Invalid


@dataclass(frozen=True)
class ReinforceParams:
    """Hyperparameters of REINFORCE / RLOO with a KL penalty.

    Args:
        beta: Weight of the KL penalty ``beta * ell`` subtracted from the reward (TRL's RLOO default 0.05).
        reward: ``raw`` reward-model scores r, or ``calibrated`` R_calib in [0, 1].
        baseline: ``rloo`` (leave-one-out per prompt) or ``mean`` (batch mean, as CRPG).
        normalize: ``sample`` (1/n over samples) or ``token`` (1/total completion tokens).
    """

    beta: float = 0.05
    reward: Literal["raw", "calibrated"] = "raw"
    baseline: Literal["rloo", "mean"] = "rloo"
    normalize: Literal["sample", "token"] = "sample"

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            raise Invalid("beta", f"must be >= 0, got {self.beta}")


class Reinforce(Optimizer):
    """REINFORCE with a KL penalty and a mean or leave-one-out baseline; see the module docstring."""

    Params = ReinforceParams
    kind: ClassVar[Literal["cgpo", "baseline"]] = "baseline"
    description: ClassVar[str] = "REINFORCE/RLOO baseline with a KL penalty in the reward (PPO-like reference)"

    def loss(self, batch: PolicyBatch) -> LossOutput:
        """Negative REINFORCE objective; see the module docstring."""
        import torch

        from cgpo.optimizers._select import check_batch, safe_mean, sequence_logratio, zero_loss

        check_batch(batch)
        params: ReinforceParams = self.params
        valid = batch.verdicts != -1
        base = batch.rewards if params.reward == "raw" else batch.calibrated_rewards
        ell = sequence_logratio(batch)
        zeros = torch.zeros_like(ell)
        # Excluded samples may carry anything (NaN included): zero them before any sum.
        reward = torch.where(valid, base.detach() - params.beta * ell, zeros)

        n = int(valid.sum())
        stats = {
            "kept_samples": float(n),
            "excluded_samples": float((~valid).sum()),
            "reward_mean": safe_mean(base[valid]),
            "kl_penalized_reward_mean": safe_mean(reward[valid]),
            "logratio_mean": safe_mean(ell[valid]),
        }
        if n == 0:
            stats.update(mean_advantage=0.0, mean_abs_advantage=0.0)
            return LossOutput(zero_loss(batch), stats)

        if params.baseline == "mean":
            baseline = reward[valid].mean().expand_as(reward)
        else:
            count = valid.sum(dim=1, keepdim=True)  # [B, 1]
            others = (reward.sum(dim=1, keepdim=True) - reward) / (count - 1).clamp(min=1)
            # A prompt with a single non-excluded sample has no leave-one-out baseline: advantage 0.
            baseline = torch.where(count > 1, others, reward)
        advantage = torch.where(valid, reward - baseline, zeros)
        terms = advantage[valid] * batch.logps[valid]
        denom = float(n) if params.normalize == "sample" else float(batch.lengths[valid].sum())
        stats.update(mean_advantage=safe_mean(advantage[valid]), mean_abs_advantage=safe_mean(advantage[valid].abs()))
        return LossOutput(-terms.sum() / denom, stats)
