"""A character-level tokenizer with a chat template, built in code (no hub, no training).

One token per printable ASCII character plus newline, and four specials, so any text the tiny tasks use
round-trips exactly. The chat template renders ``role: content`` followed by the EOS token for each
message and ends with ``assistant: `` when a generation prompt is asked for; the model therefore learns
to end an assistant turn with EOS, which is what generation stops on.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3
CHARACTERS = "\n" + "".join(sorted(set(string.printable) - set("\t\n\r\x0b\x0c")))

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_char_tokenizer(*, padding_side: str = "left") -> PreTrainedTokenizerFast:
    """Return the tiny tokenizer: 100 tokens (4 specials, newline and 95 printable characters).

    Args:
        padding_side: ``"left"`` for generation (the policy), ``"right"`` is also fine for scoring.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # exact round trip: no spaces inserted between tokens
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side=padding_side,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
