"""What the phases of a step hand to each other: one dataclass per hand-off, per task.

Shapes: B = the task's prompts on this process, K = its samples per prompt, N = B * K rows, C = the longest
completion of the generation group (rows of a task keep their group's padding).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

from cgpo.config import ModelConfig, SamplingConfig, TaskConfig
from cgpo.data import PromptRecord, TaskSampler
from cgpo.judging import MixtureResult
from cgpo.optimizers import LossOutput, Optimizer, PolicyBatch
from cgpo.rollout import Rollout
from cgpo.samplers import SamplerModel
from cgpo.scoring import TaskScorer


@dataclass
class StepModels:
    """The models a step uses, and where its tensors live.

    Attributes:
        policy: pi_w as prepared by accelerate (DDP/FSDP-wrapped when distributed): forwards with gradients.
        unwrapped: The same model without its wrapper: generation and forwards without gradients.
        reference: pi_ref: the frozen copy, or the LoRA policy with its adapters disabled
            (:class:`cgpo.reference.AdaptersDisabled`).
        tokenizer: The policy's tokenizer (left padding, a pad token).
        device: Where the step's tensors go.
        samplers: The tasks' samplers (teachers), by their config; empty when every task samples the policy.
    """

    policy: Any
    unwrapped: Any
    reference: Any
    tokenizer: Any
    device: torch.device
    samplers: dict[ModelConfig, SamplerModel] = field(default_factory=dict)


@dataclass
class TaskState:
    """What the trainer keeps per task: config, data, sampler, scorer and the task's CGPO objective.

    ``objective`` is the task's optimizer in the paper's sense (CRPG, CRRAFT, CODPO or a plugin): a loss on
    a :class:`PolicyBatch`. The parameter update itself is the trainer's one AdamW (``trainer.optimizer``).
    """

    config: TaskConfig
    records: list[PromptRecord]
    prompt_ids: list[list[int]]
    sampler: TaskSampler
    scorer: TaskScorer
    objective: Optimizer

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class DrawnPrompts:
    """This process's B prompts of one task for this step (indices into ``task.records``)."""

    task: TaskState
    indices: list[int]

    # Read by every phase: gathered once per step, not per access.
    @functools.cached_property
    def records(self) -> list[PromptRecord]:
        return [self.task.records[i] for i in self.indices]

    @functools.cached_property
    def prompt_ids(self) -> list[list[int]]:
        return [self.task.prompt_ids[i] for i in self.indices]


@dataclass
class RolloutGroup:
    """One generate call: the rollout of the tasks with these sampling settings, and each task's rows.

    ``sampler`` is the model that generated it when that is not the policy (off-policy samples: no
    importance weights for the KL metric, :func:`cgpo.phases.loss.rollout_logprobs`).
    """

    sampling: SamplingConfig
    rollout: Rollout
    rows: dict[str, slice]
    sampler: ModelConfig | None = None


@dataclass
class TaskRollout:
    """Phase 1 for one task: K samples for each of its B prompts, and each prompt's baseline a_bar.

    Attributes:
        drawn: The task and its B prompts.
        group: The generate call the samples came from (phase 4 runs one forward per group).
        rows: This task's N = B * K rows of ``group.rollout``.
        rollout: Those rows (``[N, P]`` prompts, ``[N, C]`` completions, N texts), K consecutive per prompt.
        baselines: B a_bar texts ("" where the task has none).
    """

    drawn: DrawnPrompts
    group: RolloutGroup
    rows: slice
    rollout: Rollout
    baselines: list[str]

    @property
    def task(self) -> TaskState:
        return self.drawn.task


@dataclass
class Judged:
    """Phase 2 for one task: the mixture's verdicts on its samples (and on a_bar when the objective reads it).

    Attributes:
        verdicts: ``[N]`` int64 in {1, 0, -1} after the task's ``on_judge_failure`` policy.
        mixture: Every judge's verdicts and the combined ones before that policy (for the metrics).
        baseline_verdicts: ``[B]`` int64 verdicts on a_bar, -1 where a prompt has none; None unless the
            objective uses a_bar (CRRAFT's fallback).
    """

    rollout: TaskRollout
    verdicts: torch.Tensor
    mixture: MixtureResult
    baseline_verdicts: torch.Tensor | None

    @property
    def task(self) -> TaskState:
        return self.rollout.task


@dataclass
class Scored:
    """Phase 3 for one task: ``[N]`` raw rewards r(s, a) and calibrated rewards sigmoid(r(s,a) - r(s,a_bar))."""

    judged: Judged
    rewards: torch.Tensor
    calibrated: torch.Tensor

    @property
    def task(self) -> TaskState:
        return self.judged.task

    @property
    def rollout(self) -> TaskRollout:
        return self.judged.rollout


@dataclass
class TaskLoss:
    """Phase 4 for one task: the objective's inputs and loss.

    Attributes:
        scored: The task's scored samples.
        batch: The ``[B, K]`` :class:`PolicyBatch` the objective saw. With micro-batching its ``logps`` (and
            ``baseline_logps``) are detached leaves: phase 5 pushes their gradient through the model.
        tempered: ``[B, K]`` log-probs at the sampling temperature (the KL metric), or None at T = 1.
        output: The objective's loss (a mean over its units) and statistics.
        units: This process's number of units of that mean (samples or kept prompts).
        baseline_inputs: a_bar's ``(prompt ids, prompt mask, completion ids, completion mask)`` ``[B, *]``
            when the objective reads a_bar (micro-batching pushes its gradient too), else None.
    """

    scored: Scored
    batch: PolicyBatch
    tempered: torch.Tensor | None
    output: LossOutput
    units: float
    baseline_inputs: tuple[torch.Tensor, ...] | None

    @property
    def task(self) -> TaskState:
        return self.scored.task

    @property
    def value(self) -> float:
        return float(self.output.loss.detach())


@dataclass
class TaskUpdate:
    """Phase 5 for one task: what went into the backward, and whether it was replaced by a zero."""

    loss: TaskLoss
    scale: float
    nonfinite: bool
