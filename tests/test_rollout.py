"""Sampling with a shared prompt prefill, under the installed transformers."""

from __future__ import annotations

import warnings


def test_shared_prefill_sampling_calls_no_deprecated_generate_argument(tiny_models_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgpo.config import SamplingConfig
    from cgpo.rollout import _can_share_prefill, generate

    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / "policy")
    model = AutoModelForCausalLM.from_pretrained(tiny_models_dir / "policy", dtype=torch.float32)
    assert _can_share_prefill(model)  # the path that hands generate a prefilled cache
    prompts = [tokenizer("12+7=?", add_special_tokens=False)["input_ids"], tokenizer("3+4=?")["input_ids"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rollout = generate(model, tokenizer, prompts, SamplingConfig(num_samples=2, max_new_tokens=4))
    assert rollout.completion_ids.shape[0] == 4
    deprecations = [w for w in caught if issubclass(w.category, FutureWarning | DeprecationWarning)]
    assert not deprecations, [str(w.message) for w in deprecations]
