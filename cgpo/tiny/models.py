"""Tiny Llama-architecture policy and reward-model configurations for the local default and the tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerBase

#: Sizes of the embedded default (about 1.1M policy parameters): big enough to learn the bundled tasks
#: in a minute of CPU time, small enough for a 2-core laptop.
DEFAULT_SIZE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
#: Sizes for unit tests (a few thousand parameters, built in well under a second).
TEST_SIZE: dict[str, Any] = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerBase,
    *,
    num_layers: int,
    size: dict[str, Any] | None = None,
    max_positions: int = 256,
    **extra: Any,
) -> LlamaConfig:
    """A small ``LlamaConfig`` whose special-token ids match ``tokenizer``.

    Args:
        tokenizer: Tokenizer whose vocabulary size and pad/bos/eos ids the model uses.
        num_layers: Number of decoder layers.
        size: Width settings; :data:`DEFAULT_SIZE` unless given.
        max_positions: Longest prompt + response in tokens (characters, for the tiny tokenizer).
        extra: Further ``LlamaConfig`` fields, e.g. ``num_labels=1`` for a reward model.
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=num_layers,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **(size or DEFAULT_SIZE),
        **extra,
    )
