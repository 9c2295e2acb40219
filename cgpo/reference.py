"""pi_ref, the reference policy of the KL terms and of a_bar, as one object whatever the training mode.

Full fine-tuning keeps a frozen copy of the initial policy. With LoRA the reference is the same model with
its adapters disabled, so that no second copy sits in memory; :class:`AdaptersDisabled` makes that view
look like a model (calls and ``generate`` run with the adapters off), so the trainer and ``cgpo eval``
never branch on the mode.
"""

from __future__ import annotations

from typing import Any


class AdaptersDisabled:
    """A PEFT policy seen as pi_ref: every forward and generate call runs with its adapters disabled."""

    def __init__(self, model: Any) -> None:
        self._model = model

    @property
    def wrapped(self) -> Any:
        """The PEFT model seen without its adapters."""
        return self._model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._model.disable_adapter():
            return self._model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._model.disable_adapter():
            return self._model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def reference_policy(frozen: Any, policy: Any) -> Any:
    """pi_ref: the frozen reference copy when there is one, else ``policy`` (a PEFT model) without adapters."""
    return frozen if frozen is not None else AdaptersDisabled(policy)
