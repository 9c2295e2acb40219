"""RAFT: reward-ranked fine-tuning, the unconstrained best-of-K baseline (cgpo-algorithms.md §13; CGPO eq. 16).

Per prompt s with K samples (K and the sampling temperature come from the task's sampling settings)::

    a*   = argmax_k  r(s,a^k) - beta * ell(s,a^k)            (beta = 0: plain best-of-K, RAFT's default)
    loss = -(1/n) sum_{prompts} log pi_w(a*|s)                (SFT on the winners; n = prompts with a sample)

This is RAFT as the CGPO paper states it (eq. 16): one gradient step per online batch, whereas RAFT proper
runs multi-epoch SFT per stage (run several steps on the same data for that). ``kl_beta`` is RAFT's
KL-ranking variant: the log-ratio ``ell = old_logps - ref_logps`` changes only which sample wins; the
update stays plain SFT. RAFT ignores the judges: it is the unconstrained reference. The only verdict it
reads is -1 (the task's "exclude" policy for a failed judge), whose samples are never chosen.
``normalize: token`` divides by the winners' total token count instead (the usual SFT cross-entropy).

Interpretations: local ranking only (RAFT's global ranking compares raw Bradley-Terry scores across
prompts, which are not comparable); ties go to the lowest sample index; K = 1 is plain SFT on the only
sample. LMFlow's cleaning (-inf reward for some samples) is the trainer's business: mark them -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from cgpo.optimizers.base import LossOutput, Optimizer, PolicyBatch
from cgpo.schema import Invalid


@dataclass(frozen=True)
class RAFTParams:
    """Hyperparameters of RAFT.

    Args:
        kl_beta: Rank by ``r - kl_beta * ell`` instead of ``r`` (RAFT's KL-ranking variant); 0 = plain best-of-K.
        normalize: ``sample``: mean of the winners' summed log-probs (CGPO eq. 16); ``token``: their sum
            divided by the winners' total token count (per-token SFT cross-entropy).
    """

    kl_beta: float = 0.0
    normalize: Literal["sample", "token"] = "sample"

    def __post_init__(self) -> None:
        if not self.kl_beta >= 0:
            raise Invalid("kl_beta", f"must be >= 0, got {self.kl_beta}")


class RAFT(Optimizer):
    """Best-of-K by reward, then SFT on the winner (unconstrained baseline); see the module docstring."""

    Params = RAFTParams
    kind: ClassVar[Literal["cgpo", "baseline"]] = "baseline"
    accepts_off_policy_samples: ClassVar[bool] = True  # ranks and imitates: no importance weights
    description: ClassVar[str] = "RAFT baseline: best-of-K by reward (optionally r - beta*KL), SFT on the winner"

    def loss(self, batch: PolicyBatch) -> LossOutput:
        """Negative mean log-likelihood of each prompt's best sample; see the module docstring."""
        from cgpo.optimizers._select import check_batch, masked_argmax, safe_mean, sequence_logratio, take, zero_loss

        check_batch(batch)
        params: RAFTParams = self.params
        valid = batch.verdicts != -1
        score = batch.rewards.detach()
        if params.kl_beta > 0:
            score = score - params.kl_beta * sequence_logratio(batch)
        best, kept = masked_argmax(score, valid)

        n = int(kept.sum())
        stats = {
            "kept_prompts": float(n),
            "skipped_prompts": float(batch.num_prompts - n),
            "chosen_reward_mean": safe_mean(take(batch.rewards, best)[kept]),
            "reward_mean": safe_mean(batch.rewards[valid]),
        }
        if n == 0:
            return LossOutput(zero_loss(batch), stats)
        rows = kept.nonzero().squeeze(1)
        chosen_logp = batch.logps[rows, best[rows]]
        denom = float(n) if params.normalize == "sample" else float(batch.lengths[rows, best[rows]].sum())
        return LossOutput(-chosen_logp.sum() / denom, stats)
