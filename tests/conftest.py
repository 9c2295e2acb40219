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

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


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
