"""Sampling with a shared prompt prefill, under the installed transformers."""

from __future__ import annotations

import logging
import warnings


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_shared_prefill_sampling_calls_no_deprecated_generate_argument(tiny_models_dir):
    """No deprecated name in our calls: neither a FutureWarning nor transformers' logged once-per-process line.

    transformers 5.24+ also logs "`past_key_values`/`cache_params` are deprecated" (``logger.warning_once``,
    not a warning) when a caller *reads* ``output.past_key_values``; the once-cache is cleared so that an
    earlier test's line cannot hide ours.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from cgpo.config import SamplingConfig
    from cgpo.rollout import _can_share_prefill, generate

    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / "policy")
    model = AutoModelForCausalLM.from_pretrained(tiny_models_dir / "policy", dtype=torch.float32)
    assert _can_share_prefill(model)  # the path that hands generate a prefilled cache
    prompts = [tokenizer("12+7=?", add_special_tokens=False)["input_ids"], tokenizer("3+4=?")["input_ids"]]
    logging.Logger.warning_once.cache_clear()  # transformers' warning_once is an lru_cache on Logger
    handler = _Lines()
    hf_logging.get_logger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rollout = generate(model, tokenizer, prompts, SamplingConfig(num_samples=2, max_new_tokens=4))
    finally:
        hf_logging.get_logger().removeHandler(handler)
    assert not [line for line in handler.lines if "deprecated" in line], handler.lines
    assert rollout.completion_ids.shape[0] == 4
    deprecations = [w for w in caught if issubclass(w.category, FutureWarning | DeprecationWarning)]
    assert not deprecations, [str(w.message) for w in deprecations]
