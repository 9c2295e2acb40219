"""Phase 6: one gradient clip, one AdamW step and one scheduler step for all tasks together.

A step with a non-finite loss on any process, or a non-finite gradient norm, is skipped on every process
(the schedule still advances: it counts steps), so replicas never diverge.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cgpo.phases.metrics import reduce_floats


def optimizer_step(
    params: Sequence[torch.nn.Parameter],
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    *,
    nonfinite_tasks: int,
    max_grad_norm: float | None,
    step: int,
    log: Callable[[str], None],
) -> float:
    """Clip to ``max_grad_norm`` (None: measure only), step unless any process saw a non-finite value.

    Args:
        params: The trainable parameters (of the prepared model: FSDP replaces them).
        optimizer: The prepared AdamW.
        scheduler: Its learning-rate schedule, stepped once per training step.
        accelerator: For the clip and the cross-process sum of non-finite tasks.
        nonfinite_tasks: This process's tasks whose loss was not finite.
        max_grad_norm: The clipping threshold.
        step: The step number, for the warning.
        log: Where the warning goes.

    Returns:
        The gradient norm before clipping.
    """
    # accelerate's clip is DTensor-aware (FSDP2 shards: each process's partial norms are reduced); an infinite
    # threshold only measures.
    norm = accelerator.clip_grad_norm_(params, max_grad_norm if max_grad_norm is not None else math.inf)
    norm_value = float(norm)
    flag = float(reduce_floats(accelerator, {"bad": float(nonfinite_tasks)}, op="sum")["bad"])
    if flag > 0 or not math.isfinite(norm_value):
        if math.isfinite(norm_value):
            log(f"warning: step {step} skipped: a non-finite loss on {int(flag)} task(s)")
        else:
            log(f"warning: step {step} skipped: the gradient norm is {norm_value}")
    else:
        optimizer.step()
    with warnings.catch_warnings():
        # A skipped step still advances the schedule (it counts steps); torch warns about that order.
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm_value
