"""Phase 4: sequence log-probs under the policy and the reference, and each task objective's loss L_l.

Log-probs are taken at temperature 1 for both models (the KL terms compare the models themselves,
cgpo-algorithms.md §15), and also at the sampling temperature for the policy (the KL metric's importance
weights). Without micro-batching, one policy forward with gradients and one reference forward run per
generation group, the K completions of a prompt sharing one copy of it. With micro-batching the forwards
are taken without gradients, one task at a time, and the loss is computed on detached leaves; phase 5
pushes its gradient through the model chunk by chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from cgpo.optimizers import PolicyBatch
from cgpo.phases.batches import RolloutGroup, Scored, StepModels, TaskLoss, TaskRollout
from cgpo.rollout import Rollout, left_pad, right_pad, token_logprobs

#: ``([N, C] policy log-probs, [N, C] tempered policy log-probs or None, [N, C] reference log-probs)``.
TokenLogprobs = tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor]


def sample_logprobs(rollouts: Sequence[TaskRollout], models: StepModels, *, with_grad: bool) -> list[TokenLogprobs]:
    """Phase 4a for every task: the ``[N, C]`` token log-probs of its samples (nothing here reads a verdict).

    Args:
        rollouts: Every task's samples.
        models: Policy, reference, tokenizer.
        with_grad: Forwards with gradients, one per generation group (no micro-batching), each task's rows
            sliced from its group's; otherwise no-grad forwards per task (micro-batching).
    """
    if not with_grad:
        return [rollout_logprobs(r.rollout, r.group, models, grad=False) for r in rollouts]
    forwards: dict[int, TokenLogprobs] = {}  # one forward of each model per group, shared by its tasks
    for r in rollouts:
        if id(r.group) not in forwards:
            forwards[id(r.group)] = rollout_logprobs(r.group.rollout, r.group, models, grad=True)
    return [_rows(forwards[id(r.group)], r.rows) for r in rollouts]


def task_losses(
    scored: Sequence[Scored], logprobs: Sequence[TokenLogprobs], models: StepModels, *, with_grad: bool
) -> list[TaskLoss]:
    """Phase 4b for every task: the ``[B, K]`` :class:`PolicyBatch` from its log-probs and verdicts, the loss.

    ``logprobs`` are :func:`sample_logprobs` of the same tasks, in the same order; ``with_grad`` as there.
    """
    return [task_loss(s, lp, models, grad=with_grad) for s, lp in zip(scored, logprobs, strict=True)]


def rollout_logprobs(rollout: Rollout, group: RolloutGroup, models: StepModels, *, grad: bool) -> TokenLogprobs:
    """``[N, C]`` token log-probs of a rollout (all or some rows of ``group``): the policy's, tempered, pi_ref's.

    The policy's carry gradients if ``grad``. The tempered ones (the KL metric's importance weights
    pi_1 / pi_T) are None for a sampler's rollout: the samples did not come from pi_T at all.
    """
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    k = group.sampling.num_samples
    tempered = None if group.sampler is not None else group.sampling.temperature
    with torch.no_grad():
        ref_tok, _ = token_logprobs(models.reference, *args, group_size=k)
    with contextlib.nullcontext() if grad else torch.no_grad():
        model = models.policy if grad else models.unwrapped
        pol_tok, hot = token_logprobs(model, *args, with_tempered=tempered, group_size=k)
    return pol_tok, hot, ref_tok


def task_loss(s: Scored, logprobs: TokenLogprobs, models: StepModels, *, grad: bool) -> TaskLoss:
    """The objective's loss on one task's ``[B, K]`` batch (a_bar's log-probs added when it reads them)."""
    task = s.task
    b, k = len(s.rollout.drawn.indices), task.config.sampling.num_samples
    pol_tok, hot, ref_tok = logprobs
    device = models.device
    logps = pol_tok.sum(dim=1).view(b, k)
    batch = PolicyBatch(
        logps=logps,
        old_logps=logps.detach(),  # strictly on-policy: the sampling policy is the current one
        ref_logps=ref_tok.sum(dim=1).view(b, k),
        rewards=s.rewards.to(device).view(b, k),
        calibrated_rewards=s.calibrated.to(device).view(b, k),
        verdicts=s.judged.verdicts.to(device).view(b, k),
        lengths=s.rollout.rollout.lengths.view(b, k),
        kl_threshold=task.config.kl_threshold,
    )
    tempered = hot.sum(dim=1).view(b, k) if hot is not None else None
    baseline_inputs = add_baseline(s, batch, models, grad=grad) if task.objective.uses_baseline_response else None
    if not grad:  # micro-batching: the loss on detached leaves; phase 5 pushes its gradient through the model
        batch.logps = batch.logps.detach().requires_grad_(True)
        if batch.baseline_logps is not None:
            batch.baseline_logps = batch.baseline_logps.detach().requires_grad_(True)
    output = task.objective.loss(batch)
    units = float(output.stats.get("kept_samples", output.stats.get("kept_prompts", 1.0)))
    return TaskLoss(s, batch, tempered, output, units, baseline_inputs)


def add_baseline(s: Scored, batch: PolicyBatch, models: StepModels, *, grad: bool) -> tuple[torch.Tensor, ...]:
    """``[B]`` log pi(a_bar|s) under the policy and pi_ref, a_bar's verdicts and lengths, into ``batch``.

    Returns the forward inputs (prompt ids, prompt mask, completion ids, completion mask), ``[B, *]``.
    """
    tokenizer, device = models.tokenizer, models.device
    eos = tokenizer.eos_token or ""
    completions = [tokenizer(t + eos, add_special_tokens=False)["input_ids"] if t else [] for t in s.rollout.baselines]
    prompt_ids, prompt_mask = left_pad(s.rollout.drawn.prompt_ids, tokenizer.pad_token_id, device)
    completion_ids, completion_mask = right_pad(completions, tokenizer.pad_token_id, device)
    args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
    with torch.no_grad():
        ref_tok, _ = token_logprobs(models.reference, *args)
    with contextlib.nullcontext() if grad else torch.no_grad():
        pol_tok, _ = token_logprobs(models.policy if grad else models.unwrapped, *args)
    assert s.judged.baseline_verdicts is not None  # judged in phase 2 for objectives that read a_bar
    batch.baseline_logps = pol_tok.sum(dim=1)
    batch.baseline_ref_logps = ref_tok.sum(dim=1)
    batch.baseline_verdicts = s.judged.baseline_verdicts.to(device)
    batch.baseline_lengths = completion_mask.sum(dim=1).clamp(min=1)
    return args


def _rows(logprobs: TokenLogprobs, rows: slice) -> TokenLogprobs:
    pol_tok, hot, ref_tok = logprobs
    return pol_tok[rows], hot[rows] if hot is not None else None, ref_tok[rows]
