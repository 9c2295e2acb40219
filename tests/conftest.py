"""Test-wide settings: offline, one torch thread, tiny models built locally in fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports transformers or datasets: an accidental download must fail loudly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", str(Path(__file__).resolve().parent.parent / ".hf-home-tests"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BPE_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "smollm2_tokenizer"
BPE_VOCAB = 49_152
BPE_MAX_POSITIONS = 96


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Shared 2-core machines: thread oversubscription costs more than it gains."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (GSM8K, HumanEval, IFEval); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from cgpo.tiny.tokenizer import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """Unit-test-sized policy (``policy/``) and reward model (``reward/``), saved with their tokenizer.

    Load them by path with ``AutoTokenizer`` / ``AutoModelForCausalLM`` /
    ``AutoModelForSequenceClassification``. Weights are random (seeded), built in well under a second.
    """
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from cgpo.tiny.models import TEST_SIZE, tiny_llama_config

    out = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(tiny_tokenizer, num_layers=2, size=TEST_SIZE)).save_pretrained(out / "policy")
    LlamaForSequenceClassification(
        tiny_llama_config(tiny_tokenizer, num_layers=2, size=TEST_SIZE, num_labels=1)
    ).save_pretrained(out / "reward")
    for name in ("policy", "reward"):
        tiny_tokenizer.save_pretrained(out / name)
    return out


def _bias_towards_eos(model: Any, eos_id: int, eos_logit: float = 10.0) -> None:
    """Make ``<|im_end|>`` about 30% likely at every position: exp(10) / (exp(10) + 49151) ~ 0.31.

    Hidden dimension 0 of every input embedding is set to 10, so after the final RMSNorm that dimension is
    about 10 / rms ~ 5.6 whatever the token (attention and MLP outputs of a random init are ~0.02); the
    EOS row of the (untied) output layer reads only it. Every other token keeps a near-zero random logit.
    """
    import torch

    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        rms = (10.0**2 / model.config.hidden_size) ** 0.5
        model.lm_head.weight[eos_id].zero_()
        model.lm_head.weight[eos_id, 0] = eos_logit / (10.0 / rms)


@pytest.fixture(scope="session")
def bpe_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 32) of SmolLM2's vocabulary, saved with the shipped tokenizer files.

    SmolLM2's real byte-level BPE tokenizer (tests/fixtures/smollm2_tokenizer/), its pad token its EOS
    ``<|im_end|>``, about 30% likely at every position (:func:`_bias_towards_eos`): completions end at varied
    lengths. A policy of another tokenizer than the tiny models', or a teacher for them.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("bpe") / "policy"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(BPE_FIXTURE / name, out / name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    # SmolLM2's case: the pad token is the EOS
    assert len(tokenizer) == BPE_VOCAB and tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    config = LlamaConfig(
        vocab_size=BPE_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=BPE_MAX_POSITIONS, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    _bias_towards_eos(model, tokenizer.eos_token_id)
    model.save_pretrained(out)
    return out
