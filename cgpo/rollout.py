"""Generation of K samples per prompt, and sequence log-probs under the policy and the reference.

Shapes: N = B * K sequences; P = longest prompt (left-padded); C = longest completion (right-padded).

Log-probs are always taken at temperature 1 from one forward pass over ``[prompt | completion]``, whatever
the sampling temperature, so the sequence log-ratio ell(s, a) = log pi_w(a|s) - log pi_ref(a|s) of CRPG and
CRRAFT compares the two models themselves (cgpo-algorithms.md §15: log-probs read from temperature-scaled
generation scores would bias it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cgpo.config import SamplingConfig


@dataclass
class Rollout:
    """Sampled completions of a group of prompts.

    Attributes:
        prompt_ids: ``[N, P]`` left-padded prompt token ids (each prompt repeated K times, consecutively).
        prompt_mask: ``[N, P]`` 1 for real prompt tokens.
        completion_ids: ``[N, C]`` sampled tokens, right-padded after the first EOS.
        completion_mask: ``[N, C]`` 1 for real completion tokens, up to and including the first EOS.
        texts: N decoded completions (special tokens removed).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    texts: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        """``[N]`` completion lengths in tokens (at least 1: an immediate EOS counts)."""
        return self.completion_mask.sum(dim=1).clamp(min=1)

    def select(self, rows: slice) -> Rollout:
        """The sub-rollout of ``rows`` (trailing all-padding columns are kept; they are masked)."""
        return Rollout(
            self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows], self.completion_mask[rows],
            self.texts[rows],
        )  # fmt: skip


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, L]`` left-padded ids and mask for token lists of different lengths."""
    length = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, length - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def right_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, L]`` right-padded ids and mask (L >= 1)."""
    length = max(1, max((len(s) for s in sequences), default=0))
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def completion_mask_after_eos(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """``[N, C]`` mask of tokens up to and including the first EOS of each row (all tokens if none)."""
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= completion_ids == eos
    # Position of the first EOS, or C when there is none; tokens at positions <= it are real.
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), completion_ids.shape[1])
    positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
    return (positions[None, :] <= first[:, None]).long()


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a response: the generation config's (it may list several) and the tokenizer's."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    return ids


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    num_samples: int | None = None,
    greedy: bool = False,
    max_batch_size: int | None = None,
) -> Rollout:
    """Sample ``num_samples`` (default ``sampling.num_samples``) completions for each prompt.

    Args:
        model: A causal LM (unwrapped from DDP); it is put in eval mode for generation and restored.
        tokenizer: Its tokenizer (pad and EOS ids).
        prompts: B prompt token lists.
        sampling: Temperature, top_p, top_k, max_new_tokens.
        num_samples: K; each prompt appears K times in a row in the output.
        greedy: Decode greedily (evaluation); K must then be 1.
        max_batch_size: Most sequences per ``generate`` call.

    Returns:
        A :class:`Rollout` of N = B * K sequences.
    """
    k = sampling.num_samples if num_samples is None else num_samples
    device = next(model.parameters()).device
    repeated = [list(p) for p in prompts for _ in range(k)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = eos_token_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    chunks = []
    step = max_batch_size or len(repeated) or 1
    try:
        for start in range(0, len(repeated), step):
            ids, mask = left_pad(repeated[start : start + step], pad_id, device)
            kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": pad_id,
                                      "eos_token_id": eos_ids, "do_sample": not greedy}  # fmt: skip
            if not greedy:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or 0)
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            chunks.append((ids, mask, out[:, ids.shape[1] :]))
    finally:
        model.train(was_training)
    width_p = max(c[0].shape[1] for c in chunks)
    width_c = max(max(c[2].shape[1] for c in chunks), 1)
    prompt_ids = torch.cat([_pad_left(c[0], width_p, pad_id) for c in chunks])
    prompt_mask = torch.cat([_pad_left(c[1], width_p, 0) for c in chunks])
    completion_ids = torch.cat([_pad_right(c[2], width_c, pad_id) for c in chunks])
    completion_mask = completion_mask_after_eos(completion_ids, eos_ids)
    completion_ids = torch.where(completion_mask.bool(), completion_ids, pad_id)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts)


def _pad_left(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)


def _pad_right(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def token_logprobs(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_tempered: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the completion under ``model``: ``log softmax(logits / T)[a_t]``.

    One forward pass over ``[prompt | completion]``; position ids count real tokens only, so left padding
    does not shift positions (as in ``generate``).

    Args:
        model: Causal LM (may be DDP-wrapped; gradients flow unless called under ``no_grad``).
        prompt_ids: ``[N, P]`` left-padded prompt ids.
        prompt_mask: ``[N, P]`` its attention mask.
        completion_ids: ``[N, C]`` right-padded completion ids.
        completion_mask: ``[N, C]`` 1 for real completion tokens.
        temperature: Temperature of the returned log-probs (1 for the KL terms and the loss).
        with_tempered: Also return log-probs at this sampling temperature (detached), from the same logits.

    Returns:
        ``([N, C] log-probs, zero where masked; [N, C] tempered log-probs or None)``.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    # The token at position t is predicted by the logits at t - 1.
    logits = logits[:, prompt_ids.shape[1] - 1 : -1, :].float()
    targets = completion_ids.unsqueeze(-1)
    scaled = logits / temperature if temperature != 1.0 else logits
    logps = torch.gather(scaled, -1, targets).squeeze(-1) - torch.logsumexp(scaled, dim=-1)
    logps = logps * completion_mask
    tempered = None
    if with_tempered is not None:
        with torch.no_grad():
            hot = logits.detach() / with_tempered
            tempered = (torch.gather(hot, -1, targets).squeeze(-1) - torch.logsumexp(hot, dim=-1)) * completion_mask
    return logps, tempered
