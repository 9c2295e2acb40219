"""Hugging Face sequence-classification reward models: loading, formatting and batched scoring.

A reward model (RM) is any ``AutoModelForSequenceClassification`` checkpoint with ``num_labels == 1``,
read with its *own* tokenizer: the policy's tokenizer and chat template play no part here, because the RM
must see text formatted the way it was trained (cgpo-algorithms.md §4: a and a_bar formatted identically).

Formatting of one (prompt, completion) pair:

* **Chat template** (``chat_template: auto`` and the RM tokenizer has one, or ``always``): the messages
  ``[user: prompt, assistant: completion]`` (or the prompt's own message list followed by the assistant
  message) rendered by the RM tokenizer's template, tokenized *without* adding special tokens, since the
  template writes its own BOS and turn markers.
* **Plain** (no template, or ``never``): ``prompt + completion`` tokenized with the tokenizer's special
  tokens, as ``tokenizer(text)`` did in training.
* ``append_eos: true`` appends the EOS token when the sequence does not already end with it (RMs trained
  by TRL's RewardTrainer see a final EOS).
* **Truncation keeps the end** (``max_length`` tokens, dropping the start of the prompt). The RM's score is
  read at the last token, so cutting the end would score an unfinished response and make two completions
  that differ only after the cut tie; losing the start of a very long prompt costs less.

Batching: we pad ourselves on the RM tokenizer's padding side (or ``padding_side``), pass the attention
mask, and pass position ids counted from the first real token so that left padding gives the same
positions (and the same score) as right padding. The model's own pooling reads the last non-pad token.
When the tokenizer has no pad token, pad = EOS and ``config.pad_token_id`` is set to it (the usual HF
recipe); HF pooling then reads the token *before* a trailing EOS, exactly as it did when such an RM was
trained with HF code. Scoring runs under ``torch.no_grad()`` in eval mode, sorted by length to minimize
padding, and returns the scores in input order.

Tasks that name the same RM share one loaded instance: a process-level cache keyed by the resolved path,
dtype and device holds the model and tokenizer; each :class:`RewardModel` is a light view with its own
formatting settings.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cgpo.schema import Invalid

if TYPE_CHECKING:
    import torch

Prompt = str | Sequence[Mapping[str, str]]
"""A prompt: plain user text, or a chat as a list of ``{"role", "content"}`` messages."""

#: Bumped whenever the formatting below changes, so cached baseline rewards are recomputed.
FORMAT_VERSION = 1

_DTYPES = ("float32", "bfloat16", "float16", "auto")


class RewardModelError(ValueError):
    """A reward model that cannot be used as configured (wrong head, missing chat template, ...)."""


@dataclass(frozen=True)
class RewardModelSettings:
    """How to load and format for one reward model.

    Args:
        path: Local directory (or cached hub id) of the checkpoint; its tokenizer is loaded from the same place.
        dtype: Weights' dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (the checkpoint's).
        device: Torch device string, e.g. ``cpu`` or ``cuda:0``.
        max_length: Longest input in tokens (truncation keeps the end); ``None``: the tokenizer's
            ``model_max_length`` or the model's ``max_position_embeddings``, whichever is smaller.
        append_eos: Append EOS to every sequence that does not already end with it.
        chat_template: ``auto`` uses the RM tokenizer's chat template when it has one; ``always`` requires
            one; ``never`` scores ``prompt + completion``.
        padding_side: ``left`` or ``right``; ``None`` keeps the RM tokenizer's (scores do not depend on it).
        batch_size: Pairs per forward pass.
    """

    path: str
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = "cpu"
    max_length: int | None = None
    append_eos: bool = False
    chat_template: Literal["auto", "always", "never"] = "auto"
    padding_side: Literal["left", "right"] | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise Invalid("dtype", f"must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.max_length is not None and self.max_length < 2:
            raise Invalid("max_length", f"must be >= 2 or null, got {self.max_length}")
        if self.batch_size < 1:
            raise Invalid("batch_size", f"must be >= 1, got {self.batch_size}")


def resolve_path(path: str | Path) -> str:
    """An existing local path made absolute (so two spellings share one instance); a hub id unchanged."""
    candidate = Path(path).expanduser()
    return str(candidate.resolve()) if candidate.exists() else str(path)


_LOADED: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def _torch_dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def _load_shared(path: str, dtype: str, device: str) -> tuple[Any, Any]:
    """Load (or return the already loaded) model and tokenizer for ``(path, dtype, device)``."""
    key = (path, dtype, device)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise RewardModelError(f"cannot read the reward model config at '{path}': {exc}") from exc
        if config.num_labels != 1:
            raise RewardModelError(
                f"reward model '{path}' has num_labels={config.num_labels}; a reward model must output one "
                "scalar (num_labels=1), e.g. one trained with TRL's RewardTrainer"
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=_torch_dtype(dtype))
        except ValueError as exc:  # a config type with no sequence-classification head
            raise RewardModelError(f"'{path}' cannot be loaded as a sequence classifier: {exc}") from exc
        model.to(device)
        model.eval()
        model.requires_grad_(False)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise RewardModelError(f"the tokenizer of '{path}' has neither a pad nor an EOS token")
            tokenizer.pad_token = tokenizer.eos_token  # pad = EOS, the usual HF recipe
        if model.config.pad_token_id is None:
            # Batched HF pooling finds the last non-pad token through config.pad_token_id; without it
            # a batch of more than one sequence raises.
            model.config.pad_token_id = tokenizer.pad_token_id
        _LOADED[key] = (model, tokenizer)
        return model, tokenizer


def clear_cache() -> None:
    """Forget every loaded reward model (tests; freeing memory between runs in one process)."""
    with _LOCK:
        _LOADED.clear()


def load_reward_model(path: str | Path, **settings: Any) -> RewardModel:
    """Load a reward model, sharing weights with any earlier load of the same (path, dtype, device).

    Args:
        path: Checkpoint directory or hub id (offline: must be cached).
        settings: Fields of :class:`RewardModelSettings` other than ``path``.

    Raises:
        RewardModelError: the checkpoint is not a one-label sequence classifier.
    """
    return RewardModel(RewardModelSettings(path=str(path), **settings))


def _prompt_key(prompt: Prompt) -> Any:
    """A hashable stand-in for a prompt: the text, or a canonical JSON of a message list."""
    return prompt if isinstance(prompt, str) else json.dumps(list(prompt), sort_keys=True, default=str)


def _messages(prompt: Prompt, completion: str) -> list[dict[str, str]]:
    """The conversation the RM's chat template renders: the prompt (text or messages), then the completion."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    messages.append({"role": "assistant", "content": completion})
    return messages


class RewardModel:
    """Scores (prompt, completion) pairs with a one-label sequence classifier: raw r(s, a), unbounded.

    ``model`` and ``tokenizer`` are the process-wide shared instances for (resolved path, dtype, device);
    do not modify them. Call as ``rm(prompts, completions)`` (the reward-function signature) for a list of
    floats, or :meth:`score` for a ``[N]`` tensor.
    """

    def __init__(self, settings: RewardModelSettings) -> None:
        self.settings = settings
        self.path = resolve_path(settings.path)
        self.model, self.tokenizer = _load_shared(self.path, settings.dtype, settings.device)
        self.padding_side = settings.padding_side or self.tokenizer.padding_side
        if settings.chat_template == "always" and not self.tokenizer.chat_template:
            raise RewardModelError(f"chat_template: always, but the tokenizer of '{self.path}' has no chat template")
        self.use_chat_template = settings.chat_template != "never" and bool(self.tokenizer.chat_template)
        self.max_length = settings.max_length or self._default_max_length()
        self._accepts_position_ids = "position_ids" in inspect.signature(self.model.forward).parameters
        self._identity: str | None = None

    def _default_max_length(self) -> int:
        limits = [int(self.tokenizer.model_max_length)] if self.tokenizer.model_max_length < 1e9 else []
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions:
            limits.append(int(positions))
        return min(limits) if limits else 4096

    # -- formatting --------------------------------------------------------------------------------------------
    def format(self, prompt: Prompt, completion: str) -> str:
        """The text the RM reads for one pair (before tokenization, truncation and EOS)."""
        if self.use_chat_template:
            return str(self.tokenizer.apply_chat_template(_messages(prompt, completion), tokenize=False))
        if not isinstance(prompt, str):
            raise RewardModelError(
                f"a chat-formatted prompt needs a reward tokenizer with a chat template ('{self.path}' has none)"
            )
        return prompt + completion

    def encode(self, prompt: Prompt, completion: str) -> list[int]:
        """Token ids of one pair: formatted, EOS appended if configured, truncated keeping the end."""
        return self.encode_batch([prompt], [completion])[0]

    def encode_batch(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for N pairs, with one chat-template call and one tokenizer call for the whole batch.

        Batching changes nothing in the result (the template renders each conversation alone, the tokenizer
        encodes each text alone); it saves the per-call work of N separate calls.
        """
        if not prompts:
            return []
        if self.use_chat_template:
            conversations = [_messages(p, c) for p, c in zip(prompts, completions, strict=True)]
            texts = [str(t) for t in self.tokenizer.apply_chat_template(conversations, tokenize=False)]
        else:
            texts = [self.format(p, c) for p, c in zip(prompts, completions, strict=True)]
        # The chat template writes its own special tokens (BOS included); adding them again would
        # double the BOS, which the RM never saw in training.
        encoded = self.tokenizer(texts, add_special_tokens=not self.use_chat_template, return_attention_mask=False)[
            "input_ids"
        ]
        return [self._finish(list(ids)) for ids in encoded]

    def _finish(self, ids: list[int]) -> list[int]:
        """EOS appended if configured, truncation keeping the end; an empty result is an error."""
        eos = self.tokenizer.eos_token_id
        if self.settings.append_eos and eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        if not ids:
            raise ValueError(
                "an empty prompt with an empty completion tokenizes to nothing; there is nothing to score"
            )
        return ids[-self.max_length :]

    # -- scoring -----------------------------------------------------------------------------------------------
    def _pad(self, batch: list[list[int]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        left = self.padding_side == "left"
        # Padded as Python lists, then one tensor each (one copy instead of one small tensor per row).
        rows = [[pad] * (width - len(ids)) + ids if left else ids + [pad] * (width - len(ids)) for ids in batch]
        masks = [
            [0] * (width - len(ids)) + [1] * len(ids) if left else [1] * len(ids) + [0] * (width - len(ids))
            for ids in batch
        ]
        input_ids = torch.tensor(rows, dtype=torch.long)
        mask = torch.tensor(masks, dtype=torch.long)
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if self._accepts_position_ids:
            # Count positions from the first real token: with left padding the default arange would shift
            # every position by the pad count and change the score.
            inputs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
        device = self.settings.device
        return {k: v.to(device) for k, v in inputs.items()}

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> torch.Tensor:
        """Raw rewards of N pairs.

        Args:
            prompts: N prompts (text, or message lists).
            completions: N completions.

        Returns:
            ``[N]`` float32 CPU tensor, in input order.

        Identical (prompt, completion) pairs are formatted and scored once (K samples of a prompt often
        repeat a short answer): the score of a sequence does not depend on the rest of its batch.
        """
        import torch

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts and {len(completions)} completions; they must match")
        first: dict[tuple[Any, str], int] = {}
        representative: list[int] = []  # the first occurrence of each distinct pair
        slot = []  # the distinct pair of each input
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            key = (_prompt_key(prompt), completion)
            if key not in first:
                first[key] = len(representative)
                representative.append(i)
            slot.append(first[key])
        encoded = self.encode_batch([prompts[i] for i in representative], [completions[i] for i in representative])
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        scores = torch.empty(len(encoded), dtype=torch.float32)
        step = self.settings.batch_size
        with torch.no_grad():
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                logits = self.model(**self._pad([encoded[i] for i in chunk])).logits  # [b, 1]
                scores[torch.tensor(chunk, dtype=torch.long)] = logits[:, 0].float().cpu()
        return scores[torch.tensor(slot, dtype=torch.long)] if len(representative) < len(slot) else scores

    def __call__(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[float]:
        """The reward-function signature: one raw reward per pair (``metadata`` is unused by an RM)."""
        return [float(x) for x in self.score(prompts, completions)]

    @property
    def identity(self) -> str:
        """A fingerprint of the weights' files and the formatting settings, for caches of r(s, a_bar).

        Made of the resolved path, the name, size and modification time of every file in the checkpoint
        directory, and every setting that changes the score; a retrained RM or a changed ``max_length``
        therefore never reuses a cached baseline reward.
        """
        if self._identity is None:
            files: list[tuple[str, int, int]] = []
            root = Path(self.path)
            if root.is_dir():
                for item in sorted(root.rglob("*")):
                    if item.is_file():
                        stat = item.stat()
                        files.append((str(item.relative_to(root)), stat.st_size, stat.st_mtime_ns))
            payload = {
                "path": self.path,
                "files": files,
                "dtype": self.settings.dtype,
                "max_length": self.max_length,
                "append_eos": self.settings.append_eos,
                "chat_template": self.use_chat_template,
                "format_version": FORMAT_VERSION,
            }
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
            self._identity = f"rm:{Path(self.path).name}:{digest}"
        return self._identity
