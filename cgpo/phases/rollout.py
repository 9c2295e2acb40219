"""Phase 1: K samples per prompt for every task, and each prompt's baseline response a_bar ~ pi_ref(.|s).

One generate call per group of tasks with equal sampling settings and sampler (the policy, or a task's
``sampler``: a teacher whose samples the policy re-encodes, :mod:`cgpo.samplers`); a_bar (``reward.baseline: generated``)
is generated once per prompt and cached.

a_bar is generated here, not while scoring, so that its time counts as generation and its verdicts can be
taken with the samples' in phase 2.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from cgpo.config import ModelConfig, SamplingConfig
from cgpo.data import encode_prompt
from cgpo.phases.batches import DrawnPrompts, RolloutGroup, StepModels, TaskRollout
from cgpo.rollout import Rollout, generate
from cgpo.samplers import sampled_rollout

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def fitting_prompts(prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, max_positions: int) -> list[int]:
    """Indices of the prompts that leave room for ``max_new_tokens`` in ``max_positions`` (0: no limit).

    Training and ``cgpo eval`` leave the others out (and say how many); a position past the model's limit
    would fail inside ``generate`` or silently wrap the position embeddings.
    """
    return [i for i, ids in enumerate(prompt_ids) if not max_positions or len(ids) + max_new_tokens <= max_positions]


def grouped(items: Sequence[T], key: Callable[[T], K]) -> list[tuple[K, list[T]]]:
    """``items`` grouped by ``key`` (first-seen order, items in order): one generate call per group."""
    groups: dict[K, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.items())


def row_slices(counts: Sequence[int]) -> list[slice]:
    """Consecutive row ranges of the given sizes: each task's rows in its group's rollout."""
    out, start = [], 0
    for count in counts:
        out.append(slice(start, start + count))
        start += count
    return out


def generate_rollouts(
    drawn: Sequence[DrawnPrompts], models: StepModels, *, max_batch_size: int | None, policy_name: str
) -> list[TaskRollout]:
    """Phase 1 for every task (in ``drawn`` order).

    Args:
        drawn: Each task's B prompts for this step.
        models: The policy (or a task's sampler, a teacher) generates the samples; the reference generates a_bar.
        max_batch_size: Most sequences per ``generate`` call (``generation.max_batch_size``).
        policy_name: The policy's path; with the sampling settings it names the a_bar generator in the cache.
    """
    located: dict[str, tuple[RolloutGroup, slice]] = {}
    for (sampler, sampling), members in grouped(drawn, key=lambda d: (d.task.config.sampler, d.task.config.sampling)):
        rollout = group_rollout(members, sampler, sampling, models, max_batch_size=max_batch_size)
        slices = row_slices([len(d.indices) * sampling.num_samples for d in members])
        rows = {d.task.name: r for d, r in zip(members, slices, strict=True)}
        group = RolloutGroup(sampling, rollout, rows, sampler=sampler)
        for d, r in zip(members, slices, strict=True):
            located[d.task.name] = (group, r)
    out = []
    for d in drawn:
        group, rows = located[d.task.name]
        baselines = baseline_responses(d, models, policy_name)
        out.append(TaskRollout(d, group, rows, group.rollout.select(rows), baselines))
    return out


def group_rollout(
    members: Sequence[DrawnPrompts],
    sampler: ModelConfig | None,
    sampling: SamplingConfig,
    models: StepModels,
    *,
    max_batch_size: int | None,
) -> Rollout:
    """One generate call for tasks with equal sampling settings: by the policy, or by their ``sampler``.

    A sampler's samples cross as text and come back in the policy's tokens (:func:`cgpo.samplers.sampled_rollout`).
    """
    prompts = [ids for d in members for ids in d.prompt_ids]
    if sampler is None:
        return generate(models.unwrapped, models.tokenizer, prompts, sampling, max_batch_size=max_batch_size)
    messages = [(d.task.config.format, r.message) for d in members for r in d.records]
    return sampled_rollout(models.samplers[sampler], models.tokenizer, messages, prompts, sampling,
                           device=models.device, max_batch_size=max_batch_size)  # fmt: skip


def baseline_responses(drawn: DrawnPrompts, models: StepModels, policy_name: str) -> list[str]:
    """The B a_bar texts of a task: gold, cached, or generated now by pi_ref with the task's sampling settings."""
    cfg = drawn.task.config

    def generate_with_reference(messages: list[str]) -> list[str]:
        prompts = [encode_prompt(models.tokenizer, cfg.format, m) for m in messages]
        return generate(models.reference, models.tokenizer, prompts, cfg.sampling, num_samples=1).texts

    generator = f"{policy_name}|{cfg.sampling}"
    return drawn.task.scorer.baseline_texts(drawn.records, generate_with_reference, generator)


__all__ = ["baseline_responses", "fitting_prompts", "generate_rollouts", "group_rollout", "grouped", "row_slices"]
