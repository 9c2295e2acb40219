"""The calibrated reward (eq. 5) on the real model: SmolLM2-135M-Instruct's backbone with a score head.

The real-model study (examples/real_model) trains with judges and rule rewards only (its README says why);
this test makes sure the reward-model path still works on that model end to end: ``cgpo eval`` of the real
policy on two GSM8K prompts, scored by a Bradley-Terry-shaped reward model built from SmolLM2's own weights (a
seeded random ``num_labels=1`` head, SmolLM2's tokenizer and chat template), with the gold answers as a_bar.
Every per-prompt reward and calibrated reward is recomputed independently with
:class:`cgpo.reward_models.RewardModel`. Skipped when SmolLM2 is not converted locally
(``cgpo bootstrap smollm2``; the test never downloads).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cgpo import model_sources, reward_models
from cgpo.cli import main

DATA = Path(__file__).resolve().parent.parent / "tasks" / "data"


def smollm2_dir() -> Path:
    folder = model_sources.model_dir(model_sources.named_source("smollm2:135m-instruct"))
    if not model_sources.is_converted(folder):
        pytest.skip("SmolLM2-135M-Instruct is not converted locally (cgpo bootstrap smollm2)")
    return folder


@pytest.fixture(scope="module")
def smollm2_reward_dir(tmp_path_factory) -> Path:
    """SmolLM2's backbone under a seeded random score head, saved as a sequence-classification checkpoint."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = smollm2_dir()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    out = tmp_path_factory.mktemp("smollm2-rm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_calibrated_reward_on_the_real_model(tmp_path, smollm2_reward_dir):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"""
policy: {{path: smollm2:135m-instruct, dtype: float32}}
tasks:
  - name: gsm8k_rm
    prompts:
      train: {{path: {DATA / "gsm8k_train.jsonl"}}}
      eval: {{path: {DATA / "gsm8k_test.jsonl"}}}
      prompt_field: question
      reference_field: answer
      metadata_fields: [answer]
    format: {{chat: true}}
    reward: {{model: {smollm2_reward_dir}, baseline: reference}}
    judges:
      - name: math
        params: {{answer_format: final_answer}}
    optimizer: {{name: crpg}}
    kl_threshold: 20.0
    sampling: {{num_samples: 1, max_new_tokens: 8}}
training: {{max_steps: 1}}
output_dir: {tmp_path / "run"}
""",
        encoding="utf-8",
    )
    samples = tmp_path / "samples.jsonl"
    assert main(["eval", str(config), "--max-prompts", "2", "--output", str(tmp_path / "e.json"),
                 "--samples", str(samples)]) == 0  # fmt: skip
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    gold = [json.loads(line)["answer"] for line in (DATA / "gsm8k_test.jsonl").open(encoding="utf-8")][:2]
    assert [row["baseline"] for row in rows] == gold  # a_bar: the gold solutions
    reward_models.clear_cache()
    rm = reward_models.load_reward_model(smollm2_reward_dir)
    prompts = [row["prompt"] for row in rows]
    r = rm.score(prompts, [row["completion"] for row in rows]).tolist()
    r_bar = rm.score(prompts, gold).tolist()
    assert len(set(r + r_bar)) == 4  # a real head: four different scores, not a constant
    for row, ri, bi in zip(rows, r, r_bar, strict=True):
        assert math.isclose(row["reward"], ri, rel_tol=0, abs_tol=1e-4)
        assert math.isclose(row["calibrated_reward"], 1 / (1 + math.exp(-(ri - bi))), rel_tol=0, abs_tol=1e-5)
    result = json.loads((tmp_path / "e.json").read_text(encoding="utf-8"))["tasks"]["gsm8k_rm"]
    assert math.isclose(result["calibrated_reward"], sum(row["calibrated_reward"] for row in rows) / 2, abs_tol=1e-6)
    reward_models.clear_cache()
