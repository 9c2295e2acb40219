"""Named reward functions: the registry and the contract (reward models are loaded by the trainer).

A task's reward is one of: a Hugging Face sequence-classification reward model (``reward.model``), a
named reward function (``reward.function``, a built-in or a plugin of the ``cgpo.rewards`` entry-point
group, or ``module:Class``), or none (the judges alone).
"""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cgpo.registry import Registry
from cgpo.schema import Configurable


@dataclass(frozen=True)
class NoRewardParams:
    """Params of a reward function that takes none."""


class RewardFunction(Configurable, ABC):
    """Base class of named reward functions: raw scores r(s, a), one float per sample."""

    Params: ClassVar[type] = NoRewardParams
    description: ClassVar[str] = ""

    @abstractmethod
    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        """Raw reward of each (prompt, completion); higher is better."""


def _check_reward(obj: Any) -> None:
    if not (inspect.isclass(obj) and issubclass(obj, RewardFunction)):
        raise TypeError(f"{obj!r} is not a subclass of cgpo.rewards.RewardFunction")
    if not (dataclasses.is_dataclass(obj.Params) and isinstance(obj.Params, type)):
        raise TypeError(f"{obj.__name__}.Params must be a dataclass")


#: Reward-function classes by name, from the ``cgpo.rewards`` entry-point group.
REWARD_FUNCTIONS: Registry[type[RewardFunction]] = Registry("reward function", "cgpo.rewards", check=_check_reward)
