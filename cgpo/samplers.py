"""A task's sampler: another model (a teacher) generates its K samples; the policy trains on them as text.

Distillation by RAFT/CRRAFT (docs/distillation.md). The teacher renders each prompt with its own tokenizer and
chat template, samples K completions and decodes them to text (special tokens removed). The policy (the
student) re-encodes that text with its own tokenizer behind its own prompt ids, so the judges, the reward,
the log-probs and the KL to the student's reference all run on the student's tokenization.

The boundary, in student tokens (T = the task's ``sampling.max_new_tokens``)::

    ids = student(text)                      no special tokens added, none recognized in the text (a "</s>"
                                             the teacher wrote is text); the student's unknown token dropped
    ids = ids + [student eos]  if the teacher ended with its EOS
    ids = ids[:T]                            a completion cut here has no EOS: it ran out of room, exactly as
                                             a sample of the policy's own that reaches T tokens

The teacher also generates at most T tokens of its own; its text is re-encoded in full and then cut. Unknown
tokens are dropped because a student cannot learn to write a character its vocabulary lacks: it trains on
exactly the text the judges read (the completion is decoded again from the kept ids).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cgpo.config import ModelConfig, SamplingConfig
from cgpo.data import encode_prompt
from cgpo.errors import UserError
from cgpo.rollout import Rollout, eos_token_ids, generate, left_pad, right_pad


@dataclass
class SamplerModel:
    """A loaded sampler: frozen, in eval mode, on the training device.

    Attributes:
        config: The task's ``sampler`` entry (tasks naming the same one share this instance).
        model: The causal LM that generates.
        tokenizer: Its tokenizer (left padding, a pad token).
    """

    config: ModelConfig
    model: Any
    tokenizer: Any

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)


def load_samplers(
    configs: Sequence[ModelConfig | None], *, device: Any, dtype: Callable[[str], Any], log: Callable[[str], None]
) -> dict[ModelConfig, SamplerModel]:
    """Every distinct sampler of the tasks, loaded once each (``dtype`` maps a config's dtype name to torch's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgpo.models import resolve_model_path

    out: dict[ModelConfig, SamplerModel] = {}
    for cfg in configs:
        if cfg is None or cfg in out:
            continue
        path = resolve_model_path(cfg.path, log=log)
        common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        kwargs = dict(common, dtype=dtype(cfg.dtype))
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        model.requires_grad_(False)
        model.eval()
        out[cfg] = SamplerModel(cfg, model.to(device), tokenizer)
        log(f"sampler {cfg.path}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, frozen")
    return out


def finished_rows(rollout: Rollout, eos_ids: Sequence[int]) -> list[bool]:
    """Per row: whether the completion ended with an EOS (its last real token), not at the length limit."""
    lengths = rollout.completion_mask.sum(dim=1)
    out = []
    for row, length in zip(rollout.completion_ids, lengths.tolist(), strict=True):
        out.append(length > 0 and int(row[length - 1]) in eos_ids)
    return out


def reencode(
    texts: Sequence[str], finished: Sequence[bool], tokenizer: Any, max_new_tokens: int
) -> tuple[list[list[int]], list[bool]]:
    """The student's completion ids of each teacher text, and whether ``max_new_tokens`` cut it (module docstring)."""
    unk = tokenizer.unk_token_id
    out, cut = [], []
    for text, done in zip(texts, finished, strict=True):
        # split_special_tokens: a teacher that writes "</s>" as text wrote four characters, not the student's EOS.
        encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ids = [i for i in encoded if i != unk]
        if done:
            ids.append(tokenizer.eos_token_id)
        out.append(ids[:max_new_tokens])
        cut.append(len(ids) > max_new_tokens)
    return out, cut


def sampled_rollout(
    sampler: SamplerModel,
    student_tokenizer: Any,
    messages: Sequence[tuple[Any, str]],
    student_prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    device: Any,
    max_batch_size: int | None,
) -> Rollout:
    """K teacher samples per prompt, as a student :class:`Rollout` (``[N, P]`` student prompts, ``[N, C]``).

    Args:
        sampler: The teacher.
        student_tokenizer: The policy's tokenizer.
        messages: B ``(format, message)`` pairs: each prompt's task format and user message, which the teacher
            renders with its own chat template.
        student_prompts: The same B prompts as the policy's token ids.
        sampling: K, temperature, top-p/k and T = max_new_tokens (teacher tokens, then student tokens).
        device: Where the rollout's tensors go.
        max_batch_size: Most sequences per teacher ``generate`` call.
    """
    tok = sampler.tokenizer
    prompts = [encode_prompt(tok, fmt, message) for fmt, message in messages]
    longest = max((len(p) for p in prompts), default=0)
    if sampler.max_positions and longest + sampling.max_new_tokens > sampler.max_positions:
        raise UserError(
            f"sampler {sampler.config.path}: a prompt of {longest} tokens and max_new_tokens "
            f"{sampling.max_new_tokens} exceed its {sampler.max_positions} positions; lower sampling.max_new_tokens"
        )
    teacher = generate(sampler.model, tok, prompts, sampling, max_batch_size=max_batch_size)
    done = finished_rows(teacher, eos_token_ids(sampler.model, tok))
    completions, cut = reencode(teacher.texts, done, student_tokenizer, sampling.max_new_tokens)
    k = sampling.num_samples
    pad = student_tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_pad([p for p in student_prompts for _ in range(k)], pad, device)
    completion_ids, completion_mask = right_pad(completions, pad, device)
    texts = student_tokenizer.batch_decode(completions, skip_special_tokens=True)
    cut_rows = torch.tensor(cut, dtype=torch.bool, device=device)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts, cut_rows)


__all__ = ["SamplerModel", "finished_rows", "load_samplers", "reencode", "sampled_rollout"]
