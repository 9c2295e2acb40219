"""Generation of K samples per prompt, and sequence log-probs under the policy and the reference.

Shapes: N = B * K sequences; P = longest prompt (left-padded); C = longest completion (right-padded).

Log-probs are always taken at temperature 1 from one forward pass over ``[prompt | completion]``, whatever
the sampling temperature, so the sequence log-ratio ell(s, a) = log pi_w(a|s) - log pi_ref(a|s) of CRPG and
CRRAFT compares the two models themselves (cgpo-algorithms.md §15: log-probs read from temperature-scaled
generation scores would bias it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cgpo.config import SamplingConfig
from cgpo.distributed.fsdp import is_sharded


@dataclass
class Rollout:
    """Sampled completions of a group of prompts.

    Attributes:
        prompt_ids: ``[N, P]`` left-padded prompt token ids (each prompt repeated K times, consecutively).
        prompt_mask: ``[N, P]`` 1 for real prompt tokens.
        completion_ids: ``[N, C]`` sampled tokens, right-padded after the first EOS.
        completion_mask: ``[N, C]`` 1 for real completion tokens, up to and including the first EOS.
        texts: N decoded completions (special tokens removed).
        cut: ``[N]`` bool for a task sampler's (a teacher's) completions: True where the policy's
            ``max_new_tokens`` cut the re-encoded text (:mod:`cgpo.samplers`); None for the policy's own samples.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    texts: list[str]
    cut: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """``[N]`` completion lengths in tokens (at least 1: an immediate EOS counts)."""
        return self.completion_mask.sum(dim=1).clamp(min=1)

    def select(self, rows: slice) -> Rollout:
        """The sub-rollout of ``rows`` (trailing all-padding columns are kept; they are masked)."""
        return Rollout(
            self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows], self.completion_mask[rows],
            self.texts[rows], None if self.cut is None else self.cut[rows],
        )  # fmt: skip


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, L]`` left-padded ids and mask for token lists of different lengths."""
    length = max((len(s) for s in sequences), default=0)
    # Padded as lists, then one tensor each: one copy instead of a small tensor per row.
    ids = [[pad_id] * (length - len(s)) + list(s) for s in sequences]
    mask = [[0] * (length - len(s)) + [1] * len(s) for s in sequences]
    return _as_tensor(ids, len(sequences), length, device), _as_tensor(mask, len(sequences), length, device)


def right_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, L]`` right-padded ids and mask (L >= 1)."""
    length = max(1, max((len(s) for s in sequences), default=0))
    ids = [list(s) + [pad_id] * (length - len(s)) for s in sequences]
    mask = [[1] * len(s) + [0] * (length - len(s)) for s in sequences]
    return _as_tensor(ids, len(sequences), length, device), _as_tensor(mask, len(sequences), length, device)


def _as_tensor(rows: list[list[int]], n: int, length: int, device: Any) -> torch.Tensor:
    """``[n, length]`` int64 tensor of equal-length rows (``torch.tensor`` of an empty list has no columns)."""
    return torch.tensor(rows, dtype=torch.long).view(n, length).to(device)


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
    # The K samples of a prompt share its prefill when chunks hold whole groups (same chunks, same draws).
    share = k > 1 and step % k == 0 and _can_share_prefill(model)
    kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": pad_id,
                              "eos_token_id": eos_ids, "do_sample": not greedy}  # fmt: skip
    if not greedy:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or 0)
    if is_sharded(model):
        # Every forward of an FSDP2 policy gathers parameters collectively: all processes keep decoding until
        # the longest generation of any process ends (transformers does not detect fully_shard itself).
        kwargs["synced_gpus"] = True
    try:
        for start in range(0, len(repeated), step):
            if share:
                group_ids, group_mask = left_pad(prompts[start // k : (start + step) // k], pad_id, device)
                cache = _prefill(model, group_ids, group_mask, k)
                ids, mask = group_ids.repeat_interleave(k, dim=0), group_mask.repeat_interleave(k, dim=0)
                extra = {_cache_argument(): cache} if cache is not None else {}
            else:
                ids, mask = left_pad(repeated[start : start + step], pad_id, device)
                extra = {}
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs, **extra)
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


@functools.cache
def _cache_argument() -> str:
    """The name under which ``generate`` takes a prefilled KV cache, and a model output holds it.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns on every call and goes in
    6.0; reading ``output.past_key_values`` logs a deprecation once); earlier releases only know
    ``past_key_values``.
    """
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def _can_share_prefill(model: Any) -> bool:
    """Whether ``generate`` can continue from a prompt cache we fill: a decoder with the default dynamic cache."""
    hf = _hf_model(model)
    config = getattr(hf, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not getattr(config, "use_cache", True):
        return False
    if getattr(getattr(hf, "generation_config", None), "cache_implementation", None):
        return False  # a static or offloaded cache of its own: let generate build it
    return "position_ids" in _forward_parameters(model)


def _prefill(model: Any, ids: torch.Tensor, mask: torch.Tensor, k: int) -> Any:
    """The KV cache of B prompts but their last token, repeated K times per prompt (None: not a dynamic cache).

    ``generate`` then feeds only the last prompt token of each of the B * K rows, instead of prefilling every
    prompt K times. Positions count real tokens, as ``generate`` counts them.
    """
    if ids.shape[1] < 2:
        return None
    from transformers import DynamicCache

    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(model) else {}
    out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                use_cache=True, **kwargs)  # fmt: skip
    # The output's field has the same new name as generate's argument; reading the old one logs a deprecation.
    cache = getattr(out, _cache_argument(), None)
    if not isinstance(cache, DynamicCache):
        return None
    cache.batch_repeat_interleave(k)
    return cache


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
    group_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the completion under ``model``: ``log softmax(logits / T)[a_t]``.

    One forward pass. Position ids count real tokens only, so left padding does not shift positions (as in
    ``generate``), and logits are computed only where they are read (``logits_to_keep``) when the model
    supports it. With ``group_size`` K > 1 and rows in groups of K that share one prompt (a rollout), the K
    completions of a prompt are packed behind a single copy of it (:func:`_packed_inputs`) when the model
    allows it and that costs less; the log-probs are the same, up to floating-point rounding.

    Args:
        model: Causal LM (may be DDP-wrapped; gradients flow unless called under ``no_grad``).
        prompt_ids: ``[N, P]`` left-padded prompt ids.
        prompt_mask: ``[N, P]`` its attention mask.
        completion_ids: ``[N, C]`` right-padded completion ids.
        completion_mask: ``[N, C]`` 1 for real completion tokens.
        temperature: Temperature of the returned log-probs (1 for the KL terms and the loss).
        with_tempered: Also return log-probs at this sampling temperature (detached), from the same logits.
        group_size: K, consecutive rows that may share their prompt (1: no packing).

    Returns:
        ``([N, C] log-probs, zero where masked; [N, C] tempered log-probs or None)``.
    """
    plan = _packing_plan(model, prompt_ids, prompt_mask, completion_ids, group_size)
    if plan is not None:
        logits = _packed_logits(model, plan, prompt_ids, prompt_mask, completion_ids, group_size)
    else:
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention = torch.cat([prompt_mask, completion_mask], dim=1)
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions}
        width = completion_ids.shape[1]
        if width < input_ids.shape[1] and "logits_to_keep" in _forward_parameters(model):
            kwargs["logits_to_keep"] = width + 1  # the last prompt position predicts the first completion token
        logits = model(**kwargs).logits
        # The token at position t is predicted by the logits at t - 1.
        logits = logits[:, logits.shape[1] - width - 1 : -1, :].float()
    return completion_logprobs(logits, completion_ids, completion_mask, temperature, with_tempered)


def completion_logprobs(
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_tempered: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[N, C]`` log softmax(logits / T) at the completion tokens, zero where masked (and at ``with_tempered``).

    Args:
        logits: ``[N, C, V]`` float logits, row t predicting completion token t.
        completion_ids: ``[N, C]`` the tokens.
        completion_mask: ``[N, C]`` 1 for real tokens.
        temperature: T of the returned log-probs.
        with_tempered: Also return detached log-probs at this temperature.
    """
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


# ----------------------------------------------------------------------------------------------------------------
# Prompt sharing: the K completions of a prompt behind one copy of it
# ----------------------------------------------------------------------------------------------------------------
#: Attention implementations that take a custom 4D mask as given (flash-attention kernels take none).
_MASKABLE = {"sdpa": "bool", "eager": "additive"}


def _hf_model(model: Any) -> Any:
    """The Hugging Face model inside DDP/FSDP wrappers (``.module``) and PEFT (``get_base_model()``)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model


_FORWARD_PARAMETERS: dict[Any, frozenset[str]] = {}


def _forward_parameters(model: Any) -> frozenset[str]:
    """Argument names of the model's ``forward``, cached per forward function (``inspect`` is slow)."""
    import inspect

    forward = _hf_model(model).forward
    key = getattr(forward, "__func__", forward)
    if key not in _FORWARD_PARAMETERS:
        try:
            _FORWARD_PARAMETERS[key] = frozenset(inspect.signature(forward).parameters)
        except (TypeError, ValueError):  # a C-level or otherwise opaque forward: assume nothing
            _FORWARD_PARAMETERS[key] = frozenset()
    return _FORWARD_PARAMETERS[key]


def _packing_plan(
    model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, k: int
) -> str | None:
    """The mask kind (``bool`` or ``additive``) when the rollout is packed, or None for the plain forward.

    Packing needs: groups of K rows with identical prompts; an attention implementation that takes a custom
    4D mask (sdpa, eager) and no sliding window (a custom mask replaces the model's own); a forward that takes
    ``position_ids``; and a lower estimated cost. Per layer a token costs about 12 d^2 multiply-adds in its
    projections and MLP and a query-key pair about 4 d in attention, so with N = B * K rows, S = P + C and
    L = P + K * C the plain forward costs N (S 12 d^2 + S^2 4 d) and the packed one B (L 12 d^2 + L^2 4 d):
    packing drops (K - 1) B P prompt tokens and pays for attention across the K completions of a prompt
    (masked, but computed), which only long completions make dearer.
    """
    rows, width_p = prompt_ids.shape
    width_c = completion_ids.shape[1]
    if k <= 1 or rows % k or rows == 0 or width_p == 0:
        return None
    config = getattr(_hf_model(model), "config", None)
    kind = _MASKABLE.get(getattr(config, "_attn_implementation", None) or "")
    if kind is None or getattr(config, "sliding_window", None) is not None or getattr(config, "layer_types", None):
        return None  # layer_types: models that mix attention kinds (sliding, chunked) per layer
    if "position_ids" not in _forward_parameters(model):
        return None
    d = float(getattr(config, "hidden_size", 0) or 0)
    groups = rows // k
    seq, packed = width_p + width_c, width_p + k * width_c
    plain_cost = rows * (seq * 12 * d * d + seq * seq * 4 * d)
    packed_cost = groups * (packed * 12 * d * d + packed * packed * 4 * d)
    if d > 0 and packed_cost >= 0.9 * plain_cost:
        return None
    grouped = prompt_ids.view(groups, k, width_p)
    same = (grouped == grouped[:, :1]).all() & (
        prompt_mask.view(groups, k, width_p) == prompt_mask.view(groups, k, width_p)[:, :1]
    ).all()
    return kind if bool(same) else None


def _packed_logits(
    model: Any, kind: str, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, k: int
) -> torch.Tensor:
    """``[N, C, V]`` float logits predicting each completion token, from one forward over B packed rows.

    Row g of the packed batch is ``[prompt_g | completion_g0 | ... | completion_g(K-1)]`` (length
    L = P + K C). A prompt token attends to the real prompt tokens before it; a token of completion j to the
    real prompt tokens and to the tokens of completion j up to itself, never to another completion; every
    token attends to itself (so no row of the mask is empty). Completion token t sits at position
    ``prompt_length + t``, as in the plain forward. Token t of completion j is predicted by the logits at the
    last prompt position (t = 0) or at its predecessor in block j.
    """
    rows, width_p = prompt_ids.shape
    width_c = completion_ids.shape[1]
    groups, device = rows // k, prompt_ids.device
    length = width_p + k * width_c
    g_prompt_ids, g_prompt_mask = prompt_ids[::k], prompt_mask[::k]
    input_ids = torch.cat([g_prompt_ids, completion_ids.reshape(groups, k * width_c)], dim=1)

    pos = torch.arange(length, device=device)
    in_prompt = pos < width_p
    block = torch.where(in_prompt, -1, (pos - width_p) // width_c)
    causal = pos[None, :] <= pos[:, None]
    structure = causal & (in_prompt[None, :] | (block[:, None] == block[None, :]))  # [L, L]
    key_real = torch.cat([g_prompt_mask.bool(), torch.ones(groups, k * width_c, dtype=torch.bool, device=device)], 1)
    mask = (structure[None] & key_real[:, None, :]) | torch.eye(length, dtype=torch.bool, device=device)[None]
    mask = mask[:, None]  # [B, 1, L, L]
    if kind == "additive":
        dtype = next(_hf_model(model).parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)

    prompt_len = g_prompt_mask.sum(dim=1, keepdim=True)
    prompt_pos = (g_prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    offset = (pos[width_p:] - width_p) % width_c  # t within its completion
    positions = torch.cat([prompt_pos, prompt_len + offset[None, :]], dim=1)

    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    kept = length
    if "logits_to_keep" in _forward_parameters(model):
        kept = k * width_c + 1  # from the last prompt position on
        kwargs["logits_to_keep"] = kept
    logits = model(**kwargs).logits  # [B, kept, V]
    first = length - kept
    t = torch.arange(width_c, device=device)
    j = torch.arange(k, device=device)
    source = torch.where(t[None, :] == 0, width_p - 1, width_p + j[:, None] * width_c + t[None, :] - 1)  # [K, C]
    picked = logits[:, (source - first).flatten()]  # [B, K C, V]
    return picked.reshape(rows, width_c, -1).float()
