"""Phase 5: one update's gradient, sum_l rho_l * grad L_l, normalized across processes.

Each objective's loss is a mean over its own units (samples or kept prompts). Under DDP every process
computes it on its own prompts and DDP averages gradients over processes, so each process's loss is
rescaled by ``units_local * world / units_global``: the update is then exactly rho_l times the gradient of
the mean over *all* units of all processes, even when processes keep different numbers of prompts (CODPO
and CRRAFT skip some).

Without micro-batching one backward of sum_l scale_l * L_l gives the sum of the per-task gradients and
synchronizes once. With micro-batching (``training.micro_batch_size``) a task's loss was computed on
detached log-probs (phase 4); its gradient with respect to them, c = dL/d(log pi), is pushed through the
model chunk by chunk as backward(sum_i c_i * log pi(a_i|s_i)). By the chain rule this is exactly the
full-batch gradient, at the cost of one extra forward without gradients. Every backward but the step's
last runs under ``no_sync``, so gradients are synchronized once (under FSDP2 they stay unsharded until then).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cgpo.distributed.fsdp import no_sync
from cgpo.phases.batches import StepModels, TaskLoss, TaskUpdate
from cgpo.phases.metrics import reduce_floats
from cgpo.rollout import token_logprobs

#: One gradient push: forward inputs ``[n, *]``, coefficients ``[n]``, and rows per shared prompt.
Push = tuple[tuple[torch.Tensor, ...], torch.Tensor, int]


def weighted_backward(
    losses: Sequence[TaskLoss],
    models: StepModels,
    accelerator: Any,
    *,
    micro_batch_size: int | None,
    step: int,
    log: Callable[[str], None],
) -> list[TaskUpdate]:
    """Phase 5 of step ``step``: backward of sum_l scale_l * L_l (module docstring); each task's scaling."""
    scaled, updates = scale_losses(losses, accelerator, step=step, log=log)
    if micro_batch_size is None:
        accelerator.backward(torch.stack(scaled).sum())
        return updates
    pushes = [push for loss, value in zip(losses, scaled, strict=True) for push in gradient_pushes(loss, value)]
    for i, (args, coef, k) in enumerate(pushes):
        push_gradient(
            args, coef, k, models, accelerator, micro_batch_size=micro_batch_size, final=i == len(pushes) - 1
        )
    return updates


def scale_losses(
    losses: Sequence[TaskLoss], accelerator: Any, *, step: int, log: Callable[[str], None]
) -> tuple[list[torch.Tensor], list[TaskUpdate]]:
    """rho_l * L_l normalized across processes (one reduction for all tasks), or a zero if L_l is not finite."""
    world = accelerator.num_processes
    units = reduce_floats(accelerator, {loss.task.name: loss.units for loss in losses}, op="sum")
    scaled, updates = [], []
    for loss in losses:
        global_units = units[loss.task.name]
        scale = loss.task.config.weight * loss.units * world / global_units if global_units > 0 else 0.0
        value = loss.output.loss * scale
        nonfinite = not math.isfinite(loss.value)
        if nonfinite:
            # Every process must still run the same backward calls: back-propagate a zero instead.
            log(f"warning: task {loss.task.name}: non-finite loss at step {step}; the step is skipped")
            value = loss.batch.logps.sum() * 0.0
        scaled.append(value)
        updates.append(TaskUpdate(loss, scale, nonfinite))
    return scaled, updates


def gradient_pushes(loss: TaskLoss, scaled: torch.Tensor) -> list[Push]:
    """The coefficients c = d(scaled loss)/d(log pi) for the samples (and a_bar), with the inputs of their forwards."""
    batch = loss.batch
    leaves = [batch.logps] + ([batch.baseline_logps] if batch.baseline_logps is not None else [])
    grads = torch.autograd.grad(scaled, leaves, allow_unused=True)
    coef = grads[0] if grads[0] is not None else torch.zeros_like(batch.logps)
    rollout = loss.scored.rollout.rollout
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    pushes: list[Push] = [(args, coef.flatten(), loss.task.config.sampling.num_samples)]
    if loss.baseline_inputs is not None and batch.baseline_logps is not None:
        # Every process must make the same DDP forward/backward calls: push a zero coefficient when this
        # process's loss did not use a_bar (e.g. a non-finite loss replaced by a zero).
        base = grads[1] if len(grads) > 1 and grads[1] is not None else torch.zeros_like(batch.baseline_logps)
        pushes.append((loss.baseline_inputs, base, 1))
    return pushes


def push_gradient(
    args: tuple[torch.Tensor, ...],
    coef: torch.Tensor,
    k: int,
    models: StepModels,
    accelerator: Any,
    *,
    micro_batch_size: int,
    final: bool,
) -> None:
    """backward(sum_i coef_i * log pi(a_i|s_i)) over micro-batches of rows: the chain rule, chunk by chunk.

    ``k``: rows come in groups of k sharing a prompt; chunks that keep whole groups share its forward.
    Only the step's very last backward (``final``) synchronizes gradients across processes.
    """
    size = micro_batch_size
    group = k if size % k == 0 else 1
    starts = list(range(0, len(coef), size))
    for start in starts:
        rows = slice(start, start + size)
        sync = final and start == starts[-1]
        with contextlib.nullcontext() if sync else no_sync(accelerator, models.policy):
            tok, _ = token_logprobs(models.policy, *(t[rows] for t in args), group_size=group)
            accelerator.backward((coef[rows].detach() * tok.sum(dim=1)).sum())
