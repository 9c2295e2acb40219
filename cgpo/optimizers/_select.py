"""Tensor helpers shared by the optimizers: batch checks, masked selection, empty-safe reductions.

Everything here works on ``[B, K]`` tensors (B prompts, K samples each). Selection masks with +-inf and
never multiplies by 0: raw reward-model scores are signed, so ``mask * reward`` would let a masked-out
sample with reward 0 beat every kept sample with a negative reward (the TRL PR #2190 CODPO bug,
cgpo-algorithms.md §15).

This module imports torch at module level; optimizer modules import it inside ``loss`` so that listing and
validating optimizers stays free of torch.
"""

from __future__ import annotations

import torch

from cgpo.optimizers.base import PolicyBatch

EXCLUDED = -1
VIOLATED = 0
SATISFIED = 1


def check_batch(batch: PolicyBatch) -> None:
    """Fail loudly on a malformed batch instead of training on garbage.

    Checks that every ``[B, K]`` tensor has the shape of ``logps``, that verdicts lie in {1, 0, -1}, that
    the rewards of non-excluded samples are finite (a NaN reward is an upstream bug: it would poison the
    CRPG baseline or win an argmax silently), that calibrated rewards lie in [0, 1], that lengths are >= 1
    and that the ``baseline_*`` tensors, when given, are ``[B]``.

    Raises:
        ValueError: naming the offending field.
    """
    if batch.logps.dim() != 2:
        raise ValueError(f"logps must be [B, K], got shape {tuple(batch.logps.shape)}")
    shape = batch.logps.shape
    for name in ("old_logps", "ref_logps", "rewards", "calibrated_rewards", "verdicts", "lengths"):
        value = getattr(batch, name)
        if value.shape != shape:
            raise ValueError(f"{name} must have the shape of logps {tuple(shape)}, got {tuple(value.shape)}")
    verdicts = batch.verdicts
    if verdicts.numel() and not bool(((verdicts == 1) | (verdicts == 0) | (verdicts == -1)).all()):
        raise ValueError("verdicts must be in {1, 0, -1}")
    valid = verdicts != EXCLUDED
    for name in ("rewards", "calibrated_rewards", "old_logps", "ref_logps"):
        value = getattr(batch, name)[valid]
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} has a non-finite value on a non-excluded sample")
    calibrated = batch.calibrated_rewards[valid]
    if calibrated.numel() and not bool(((calibrated >= 0) & (calibrated <= 1)).all()):
        raise ValueError("calibrated_rewards must lie in [0, 1]")
    if batch.lengths[valid].numel() and int(batch.lengths[valid].min()) < 1:
        raise ValueError("lengths must be >= 1 for every non-excluded sample")
    if batch.kl_threshold is not None and not batch.kl_threshold > 0:
        raise ValueError(f"kl_threshold must be > 0 or None, got {batch.kl_threshold}")
    for name in ("baseline_logps", "baseline_ref_logps", "baseline_verdicts", "baseline_lengths"):
        value = getattr(batch, name)
        if value is not None and tuple(value.shape) != (shape[0],):
            raise ValueError(f"{name} must be [B] = ({shape[0]},), got {tuple(value.shape)}")


def zero_loss(batch: PolicyBatch) -> torch.Tensor:
    """A finite scalar zero attached to the graph of ``logps`` (and of ``baseline_logps`` when present).

    Every DDP rank must run the same backward calls, so a task with nothing usable still returns a loss
    whose backward reaches every tensor the other ranks differentiate (cgpo-algorithms.md §9).
    """
    # nan_to_num first: an excluded sample may carry a -inf or NaN log-prob, and 0 * inf is NaN.
    zero = torch.nan_to_num(batch.logps, nan=0.0, posinf=0.0, neginf=0.0).sum() * 0.0
    if batch.baseline_logps is not None and batch.baseline_logps.requires_grad:
        zero = zero + torch.nan_to_num(batch.baseline_logps, nan=0.0, posinf=0.0, neginf=0.0).sum() * 0.0
    return zero


def sequence_logratio(batch: PolicyBatch) -> torch.Tensor:
    """``[B, K]`` ell(s, a) = log pi_old(a|s) - log pi_ref(a|s), detached (the stop-gradient of eq. 11)."""
    return (batch.old_logps - batch.ref_logps).detach()


def masked_argmax(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row argmax of ``values`` over the entries where ``mask`` is true.

    Args:
        values: ``[B, K]`` float.
        mask: ``[B, K]`` bool.

    Returns:
        ``(index [B] int64, found [B] bool)``. Ties go to the lowest index. ``index`` always points at a
        masked-in entry where ``found``; where a row has no such entry, ``index`` is 0 and meaningless.
    """
    filled = torch.where(mask, values, torch.full_like(values, float("-inf")))
    index = filled.argmax(dim=1)
    found = mask.any(dim=1)
    # If every masked-in value is itself -inf, argmax may land on a masked-out entry (all -inf): take the
    # first masked-in entry instead, which is then a genuine (tied) maximum.
    hit = mask.gather(1, index[:, None]).squeeze(1)
    first = mask.to(torch.int8).argmax(dim=1)
    return torch.where(hit, index, first), found


def masked_argmin(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row argmin of ``values`` over the entries where ``mask`` is true; see :func:`masked_argmax`."""
    filled = torch.where(mask, values, torch.full_like(values, float("inf")))
    index = filled.argmin(dim=1)
    found = mask.any(dim=1)
    hit = mask.gather(1, index[:, None]).squeeze(1)
    first = mask.to(torch.int8).argmax(dim=1)
    return torch.where(hit, index, first), found


def dpo_logit(
    batch: PolicyBatch, rows: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, beta: float
) -> torch.Tensor:
    """``[n]`` DPO logit beta * [(log pi_w(a+) - log pi_ref(a+)) - (log pi_w(a-) - log pi_ref(a-))] (CGPO eq. 13).

    Args:
        batch: The task's rollout; only ``logps`` (differentiable) and ``ref_logps`` (constant) are read.
        rows: ``[n]`` int64 indices of the kept prompts.
        pos: ``[n]`` int64 sample index of each kept prompt's chosen answer a+.
        neg: ``[n]`` int64 sample index of each kept prompt's rejected answer a-.
        beta: DPO inverse temperature.
    """
    # Rows are indexed rather than masked: a skipped row may point at an excluded sample with an arbitrary
    # log-prob, and 0 * inf in the backward of where() would give NaN.
    chosen = batch.logps[rows, pos] - batch.ref_logps[rows, pos]
    rejected = batch.logps[rows, neg] - batch.ref_logps[rows, neg]
    return beta * (chosen - rejected)


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[B]`` values[b, index[b]] for ``[B, K]`` values and ``[B]`` index (keeps gradients)."""
    return values.gather(1, index[:, None].to(torch.int64)).squeeze(1)


def safe_mean(values: torch.Tensor) -> float:
    """Mean of a (possibly empty) tensor as a plain float; 0.0 when empty (a statistic, never a loss)."""
    return float(values.detach().float().mean()) if values.numel() else 0.0
