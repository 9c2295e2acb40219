"""A real byte-level BPE tokenizer (SmolLM2's, shipped in tests/fixtures/smollm2_tokenizer/) through the real paths.

SmolLM2's pad token is its EOS ``<|im_end|>``: a completion's ending EOS must stay in its mask while the
padding after it (the same id) is masked out, and ``<|im_end|>`` must not reach the decoded text the judges
read. The model is a small random Llama of the same 49,152-token vocabulary, seeded, built here; its weights are
set so that ``<|im_end|>`` is sampled with probability about 0.3 per token, so completions end at varied
lengths (see ``_bias_towards_eos`` in tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cgpo.cli import main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "smollm2_tokenizer"
REPO = Path(__file__).resolve().parent.parent
VOCAB = 49_152
EOS = "<|im_end|>"
MAX_POSITIONS = 96
MULTI_BYTE = "naïve 東京 🙂"


@pytest.fixture(scope="module")
def bpe_policy_dir(bpe_model_dir) -> Path:
    """The random 2-layer Llama of SmolLM2's vocabulary (tests/conftest.py: ``bpe_model_dir``)."""
    return bpe_model_dir


@pytest.fixture(scope="module")
def loaded(bpe_policy_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bpe_policy_dir)
    tokenizer.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(bpe_policy_dir, dtype=torch.float32), tokenizer


def test_rollouts_left_pad_keep_the_ending_eos_mask_the_padding_after_it_and_strip_it_from_the_text(loaded):
    from cgpo.config import FormatConfig, SamplingConfig
    from cgpo.data import encode_prompt
    from cgpo.rollout import generate

    model, tokenizer = loaded
    eos = tokenizer.eos_token_id
    prompts = [encode_prompt(tokenizer, FormatConfig(), m) for m in ("Hi", f"Say {MULTI_BYTE} twice, please.")]
    assert len(prompts[0]) < len(prompts[1])
    torch.manual_seed(1)
    rollout = generate(model, tokenizer, prompts, SamplingConfig(num_samples=8, max_new_tokens=10))
    # Left padding: the shorter prompt's rows start with pad (= EOS) ids the mask leaves out.
    gap = len(prompts[1]) - len(prompts[0])
    assert rollout.prompt_mask[0, :gap].sum() == 0 and bool((rollout.prompt_ids[0, :gap] == eos).all())
    assert rollout.prompt_ids[0, gap:].tolist() == prompts[0] and rollout.prompt_ids[8].tolist() == prompts[1]
    ended_early = 0
    for ids, mask, text in zip(rollout.completion_ids, rollout.completion_mask, rollout.texts, strict=True):
        ids, mask = ids.tolist(), mask.tolist()
        if eos in ids:
            end = ids.index(eos)
            assert mask == [1] * (end + 1) + [0] * (len(ids) - end - 1)  # the ending EOS is kept, padding masked
            assert ids[end + 1 :] == [eos] * (len(ids) - end - 1)
            ended_early += end + 1 < len(ids)
            real = ids[:end]
        else:
            assert mask == [1] * len(ids)
            real = ids
        assert EOS not in text and text == tokenizer.decode(real, skip_special_tokens=True)
    assert ended_early >= 2  # the seed gives completions that end early: the padding case is exercised
    assert rollout.lengths.min() >= 1


def test_multi_byte_text_roundtrips_through_the_prompt_and_the_completion_decoding(loaded):
    from cgpo.config import FormatConfig
    from cgpo.data import encode_prompt

    _, tokenizer = loaded
    ids = tokenizer(MULTI_BYTE, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 and tokenizer.decode(ids) == MULTI_BYTE  # byte-level BPE: several tokens per character
    prompt = tokenizer.decode(encode_prompt(tokenizer, FormatConfig(), MULTI_BYTE))
    assert f"<|im_start|>user\n{MULTI_BYTE}{EOS}\n<|im_start|>assistant\n" in prompt
    # Completion text is decoded from the ids as rollouts decode it: the EOS goes, the characters stay whole.
    assert tokenizer.batch_decode([[*ids, tokenizer.eos_token_id]], skip_special_tokens=True) == [MULTI_BYTE]


def _write_data(folder: Path) -> Path:
    """Prompts with multi-byte text, and one far longer than the model's 96 positions."""
    rows = [
        {"prompt": f"What is 2+{i}? {MULTI_BYTE}", "answer": str(2 + i), "completion": f"\\boxed{{{2 + i}}}"}
        for i in range(3)
    ]
    rows.append({"prompt": "Please add these numbers: " + " + ".join(["12"] * 80), "answer": "960",
                 "completion": "\\boxed{960}"})  # fmt: skip
    path = folder / "bpe.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_config(folder: Path, policy: Path) -> Path:
    data = str(_write_data(folder))
    task = {
        "include": str(REPO / "tasks" / "tiny_arithmetic.yaml"),
        "prompts": {"train": {"path": data}, "eval": {"path": data}, "reference_field": "completion",
                    "metadata_fields": ["answer"]},
        "reward": None, "batch_size": 2, "sampling": {"num_samples": 2, "max_new_tokens": 8},
    }  # fmt: skip
    config = {
        "policy": {"path": str(policy)},
        "tasks": [task],
        "training": {"max_steps": 1, "learning_rate": 1.0e-3, "seed": 0},
        "output_dir": str(folder / "run"),
        "logging": {"progress": "none"},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def test_one_training_step_and_cgpo_eval_on_the_bpe_tokenizer(tmp_path, bpe_policy_dir, capsys):
    config = _write_config(tmp_path, bpe_policy_dir)
    assert main(["train", str(config)]) == 0
    err = capsys.readouterr().err
    # The long prompt is left out, as fitting_prompts documents, with one line saying so.
    assert "task tiny_arithmetic: 1 of 4 prompts are too long for 96 positions with max_new_tokens 8; left out" in err
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["step"] == 1 and torch.isfinite(torch.tensor(line["loss"]))
    assert line["tokens_per_s"] > 0
    samples = tmp_path / "samples.jsonl"
    final = tmp_path / "run" / "final"
    assert main(["eval", str(config), "--model", str(final), "--samples", str(samples)]) == 0
    err = capsys.readouterr().err
    assert "1 of 4 eval prompts are too long for 96 positions with max_new_tokens 8; left out" in err
    rows = [json.loads(r) for r in samples.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all(MULTI_BYTE in r["prompt"] for r in rows)  # multi-byte prompts intact
    assert all(EOS not in r["completion"] for r in rows)


def test_a_tokenizer_without_a_pad_token_pads_with_its_eos(tmp_path, bpe_policy_dir, capsys):
    from transformers import AutoTokenizer

    policy = tmp_path / "no-pad"
    shutil.copytree(bpe_policy_dir, policy)
    settings = json.loads((policy / "tokenizer_config.json").read_text())
    settings.pop("pad_token")
    (policy / "tokenizer_config.json").write_text(json.dumps(settings))
    assert AutoTokenizer.from_pretrained(policy).pad_token is None
    config = _write_config(tmp_path, policy)
    assert main(["train", str(config)]) == 0
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    samples = tmp_path / "samples.jsonl"
    assert main(["eval", str(config), "--samples", str(samples)]) == 0
    assert all(EOS not in json.loads(r)["completion"] for r in samples.read_text(encoding="utf-8").splitlines())
    # The final model's tokenizer names the pad token it trained with: the EOS.
    assert AutoTokenizer.from_pretrained(tmp_path / "run" / "final").pad_token == EOS


@pytest.fixture(scope="module")
def bpe_reward_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama reward model (one score) of SmolLM2's vocabulary, with its tokenizer and ChatML."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("bpe") / "reward"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(FIXTURE / name, out / name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(1)
    LlamaForSequenceClassification(config).save_pretrained(out)
    return out


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "final" / "model.safetensors")


def test_reward_model_generated_baselines_checkpoint_and_resume_on_the_bpe_tokenizer(
    tmp_path, bpe_policy_dir, bpe_reward_dir, capsys
):
    """A BPE reward model with its chat template scores the samples against generated baselines a_bar
    (eq. 5); a run stopped after step 1 and resumed reaches the same weights as one that never stopped."""

    def configure(folder: Path, steps: int) -> Path:
        config = yaml.safe_load(_write_config(folder, bpe_policy_dir).read_text(encoding="utf-8"))
        config["tasks"][0]["reward"] = {"model": str(bpe_reward_dir), "baseline": "generated", "append_eos": True}
        config["training"].update({"max_steps": steps, "save_every": 1})
        path = folder / "run.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return path

    (tmp_path / "straight").mkdir()
    assert main(["train", str(configure(tmp_path / "straight", 2))]) == 0
    lines = [json.loads(r) for r in (tmp_path / "straight" / "run" / "metrics.jsonl").read_text().splitlines()]
    calibrated = [line["task/tiny_arithmetic/calibrated_reward"] for line in lines]
    assert all(0.0 < value < 1.0 for value in calibrated), calibrated  # sigmoid(r(s,a) - r(s,a_bar))
    assert any(abs(value - 0.5) > 1e-4 for value in calibrated), calibrated  # a_bar is not the sample itself

    (tmp_path / "resumed").mkdir()
    config = configure(tmp_path / "resumed", 1)
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    assert main(["train", str(config), "training.max_steps=2"]) == 0
    out, err = capsys.readouterr()
    assert f"resumed from {tmp_path / 'resumed' / 'run' / 'checkpoints' / 'step-1'} (step 1)" in out + err
    straight, resumed = _final_weights(tmp_path / "straight" / "run"), _final_weights(tmp_path / "resumed" / "run")
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
