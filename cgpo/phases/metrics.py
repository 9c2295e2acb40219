"""What a step reports: the per-task keys of ``metrics.jsonl`` (see :mod:`cgpo.metrics`), reduced over processes."""

from __future__ import annotations

from typing import Any

import torch

from cgpo.phases.batches import TaskUpdate
from cgpo.phases.judge import judge_rates


def task_metrics(update: TaskUpdate) -> dict[str, float]:
    """``task/<name>/...``: reward, calibrated reward, pass rate, KL, loss, judge rates, objective statistics.

    KL(pi || pi_ref) is estimated from the sequence log-ratios ell = log pi(a|s) - log pi_ref(a|s). Samples
    come from the temperature-T policy, so self-normalized importance weights pi_1(a) / pi_T(a) make the
    estimate consistent; at T = 1 it is the plain mean of ell.
    """
    loss = update.loss
    scored, batch, stats = loss.scored, loss.batch, loss.output.stats
    mixture = scored.judged.mixture
    prefix = f"task/{loss.task.name}"
    ell = (batch.old_logps - batch.ref_logps).detach()
    if loss.tempered is not None:
        weights = torch.softmax((batch.old_logps - loss.tempered).flatten(), dim=0)
        kl = float((weights * ell.flatten()).sum())
    else:
        kl = float(ell.mean())
    combined = torch.tensor(mixture.verdicts)
    out = {
        f"{prefix}/reward": float(scored.rewards.mean()),
        f"{prefix}/calibrated_reward": float(scored.calibrated.mean()),
        f"{prefix}/pass_rate": float((combined == 1).float().mean()),
        f"{prefix}/kl": kl,
        f"{prefix}/loss": loss.value,
        # The losses sum log-probs over a response's tokens, so their scale grows with its length (a real
        # model's losses read in the hundreds); per token they compare across tasks and lengths.
        f"{prefix}/loss_per_token": loss.value / max(1.0, float(batch.lengths.float().mean())),
        f"{prefix}/skipped_prompts": float(stats.get("skipped_prompts", 0.0)),
        f"{prefix}/response_length": float(batch.lengths.float().mean()),
    }
    cut = scored.rollout.rollout.cut
    if cut is not None:  # a sampler's samples: the share the policy's max_new_tokens cut (cgpo.samplers)
        out[f"{prefix}/sampler_cut_rate"] = float(cut.float().mean())
    for label, rates in judge_rates(mixture).items():
        out[f"{prefix}/judge/{label}/violation_rate"] = rates["violation_rate"]
        out[f"{prefix}/judge/{label}/error_rate"] = rates["error_rate"]
    for key, value in stats.items():
        if key != "skipped_prompts":
            out[f"{prefix}/opt/{key}"] = float(value)
    return out


def reduce_floats(accelerator: Any, values: dict[str, float], op: str = "mean") -> dict[str, float]:
    """Average (or sum) a flat dict of floats over processes; keys are identical on every process."""
    if accelerator.num_processes == 1:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], device=accelerator.device, dtype=torch.float64)
    reduced = accelerator.reduce(tensor, reduction=op)
    return {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}
