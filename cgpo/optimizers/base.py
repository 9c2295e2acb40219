"""The optimizer contract: a pure loss over one task's rollout tensors (cgpo-algorithms.md §5-§9).

The trainer generates K samples for each of B prompts, judges and scores them, computes sequence
log-probs, and hands the result to the task's optimizer as a :class:`PolicyBatch`. The optimizer returns
a scalar loss (a mean over its own units: samples for CRPG, kept prompts for CRRAFT and CODPO) and plain
statistics. The trainer (:mod:`cgpo.phases.backward`) rescales each task's loss by its weight and its
share of the units across processes, runs one backward of the weighted sum of all tasks' losses, and
takes one AdamW step for all of them (Algorithm 2). In the trainer a task's instance of this class is
``TaskState.objective``; ``trainer.optimizer`` is the AdamW that applies the update.

Optimizers never touch models, tokenizers or judges: everything they see is a tensor, so each loss is
tested against hand-computed values on small tensors.
"""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cgpo.registry import Registry
from cgpo.schema import Configurable

if TYPE_CHECKING:
    import torch


@dataclass
class PolicyBatch:
    """One task's rollout, grouped by prompt: B prompts, K samples each.

    All tensors are on the policy's device. Only ``logps`` (and ``baseline_logps``) carry gradients.

    Attributes:
        logps: ``[B, K]`` float. Summed log-probs of each response's tokens under the current policy at
            temperature 1: log pi_w(a|s). Differentiable.
        old_logps: ``[B, K]`` float, detached. The same quantity at sampling time; equals ``logps.detach()``
            in the strictly on-policy single step that CGPO takes.
        ref_logps: ``[B, K]`` float, detached. Summed log-probs under the reference policy: log pi_ref(a|s).
        rewards: ``[B, K]`` float, detached. Raw reward r(s, a), used for ranking (signed, unbounded).
        calibrated_rewards: ``[B, K]`` float in [0, 1], detached. R_calib(s, a) = sigmoid(r(s,a) - r(s,a_bar))
            (eq. 5); for a task without a reward model, 1.0 where all judges are satisfied, else 0.0.
        verdicts: ``[B, K]`` int64 in {1, 0, -1}: the mixture's combined verdict after the task's
            ``on_judge_failure`` policy; -1 means "excluded" (left out of every loss term and baseline).
        lengths: ``[B, K]`` int64, number of response tokens (>= 1).
        kl_threshold: The task's KL_max (used by CRPG and CRRAFT), or ``None`` for no threshold.
        baseline_logps: ``[B]`` float, differentiable log pi_w(a_bar|s) of each prompt's baseline response,
            or ``None`` when the task has none (used by the CRRAFT fallback).
        baseline_ref_logps: ``[B]`` float, detached log pi_ref(a_bar|s), or ``None``.
        baseline_verdicts: ``[B]`` int64 in {1, 0, -1}, the mixture's verdict on a_bar, or ``None``.
        baseline_lengths: ``[B]`` int64 token counts of a_bar, or ``None``.
    """

    logps: torch.Tensor
    old_logps: torch.Tensor
    ref_logps: torch.Tensor
    rewards: torch.Tensor
    calibrated_rewards: torch.Tensor
    verdicts: torch.Tensor
    lengths: torch.Tensor
    kl_threshold: float | None = None
    baseline_logps: torch.Tensor | None = None
    baseline_ref_logps: torch.Tensor | None = None
    baseline_verdicts: torch.Tensor | None = None
    baseline_lengths: torch.Tensor | None = None

    @property
    def num_prompts(self) -> int:
        return int(self.logps.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.logps.shape[1])


@dataclass
class LossOutput:
    """What an optimizer returns.

    Attributes:
        loss: Scalar tensor attached to the graph of ``logps``. When nothing is usable (every prompt
            skipped) it is ``logps.sum() * 0``: a finite zero that still lets every DDP rank run the
            same backward calls.
        stats: Plain floats for the metrics log, e.g. ``skipped_prompts``, ``kl_factor_mean``.
    """

    loss: torch.Tensor
    stats: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class NoHyperparameters:
    """Hyperparameters of an optimizer that takes none."""


class Optimizer(Configurable, ABC):
    """Base class of every per-task optimizer, built-in or plugin.

    Subclasses set ``Params`` (a frozen dataclass of hyperparameters, validated from the task YAML's
    ``optimizer.params``), ``kind`` and ``min_samples``, and implement :meth:`loss`.
    """

    Params: ClassVar[type] = NoHyperparameters
    kind: ClassVar[Literal["cgpo", "baseline"]] = "cgpo"
    #: Smallest number of samples per prompt (K) the optimizer can use (CODPO needs a pair).
    min_samples: ClassVar[int] = 1
    #: Whether the loss reads ``baseline_*`` (so the trainer computes log-probs of a_bar).
    uses_baseline_response: ClassVar[bool] = False
    #: Whether the loss reads ``kl_threshold`` (so a task must set one).
    uses_kl_threshold: ClassVar[bool] = False
    #: Whether the loss is valid on samples drawn from another model (a task's ``sampler``, a teacher): true
    #: for losses that only rank, gate and imitate chosen samples (RAFT, CRRAFT); false for losses that are
    #: policy-gradient or preference estimates under the policy's own samples (CRPG, CODPO), which would
    #: need importance weights pi_w(a|s) / q(a|s) that a teacher of another tokenizer cannot give.
    accepts_off_policy_samples: ClassVar[bool] = False
    description: ClassVar[str] = ""

    @abstractmethod
    def loss(self, batch: PolicyBatch) -> LossOutput:
        """The task's loss on one rollout; see :class:`PolicyBatch` for shapes."""


def _check_optimizer(obj: Any) -> None:
    if not (inspect.isclass(obj) and issubclass(obj, Optimizer)):
        raise TypeError(f"{obj!r} is not a subclass of cgpo.optimizers.Optimizer")
    if not (dataclasses.is_dataclass(obj.Params) and isinstance(obj.Params, type)):
        raise TypeError(f"{obj.__name__}.Params must be a dataclass")


#: Optimizer classes by name: built-ins and plugins from the ``cgpo.optimizers`` entry-point group.
OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer", "cgpo.optimizers", check=_check_optimizer)
