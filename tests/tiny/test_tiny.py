"""The embedded tiny default: tokenizer, bundled synthetic data, and the builder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cgpo.tiny import data
from cgpo.tiny.build import (
    DEFAULT_RECIPE,
    TinyRecipe,
    build_tiny_models,
    corrupt,
    ensure_tiny_models,
    tiny_models_dir,
)
from cgpo.tiny.embedded import shipped_models_dir, tiny_models

REPO = Path(__file__).resolve().parents[2]


def test_tokenizer_round_trips_and_has_a_chat_template(tiny_tokenizer):
    text = 'What is 12+7?\n\\boxed{19} {"cat": 7} ```python\ndef f(x):\n    return x*3\n```'
    ids = tiny_tokenizer(text)["input_ids"]
    assert len(ids) == len(text) and tiny_tokenizer.decode(ids) == text
    rendered = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert rendered == "user: hi</s>assistant: "
    assert tiny_tokenizer.pad_token_id == 0 and tiny_tokenizer.eos_token_id == 2


def test_bundled_files_equal_the_generator_output(tmp_path):
    written = data.write_bundled(tmp_path)
    for path in written:
        assert path.read_bytes() == (REPO / "tasks" / "data" / path.name).read_bytes(), path.name


@pytest.mark.parametrize("family", sorted(data.FAMILIES))
def test_eval_prompts_are_held_out_of_training_and_sft(family):
    splits = data.bundled_splits(family)
    eval_prompts = {r["prompt"] for r in splits["eval"]}
    assert len(eval_prompts) == len(splits["eval"])
    assert not eval_prompts & {r["prompt"] for r in splits["train"]}
    assert not eval_prompts & {r["prompt"] for r in data.sft_records(seed=3, per_family=200)}


@pytest.mark.parametrize("family", sorted(data.FAMILIES))
def test_corruptions_differ_from_gold(family):
    import random

    rng = random.Random(0)
    for record in data.generate(family, seed=5, count=50):
        assert corrupt(record, rng) != record["completion"]


def test_builder_is_deterministic_and_loads_with_auto_classes(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    recipe = TinyRecipe(sft_records_per_family=8, sft_steps=3, sft_batch_size=4, rm_steps=2, rm_batch_size=4,
                        eval_prompts_per_family=2, policy_layers=1, reward_layers=1)  # fmt: skip
    reports = [build_tiny_models(tmp_path / name, recipe, log=lambda _: None) for name in ("a", "b")]
    assert reports[0]["sft_final_loss"] == reports[1]["sft_final_loss"]
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "policy")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "policy")
    for p, q in zip(policy.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    reward = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a" / "reward")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a" / "reward")
    assert reward.config.num_labels == 1
    scores = reward(**tokenizer(["user: a</s>", "user: bb</s>"], return_tensors="pt", padding=True)).logits
    assert scores.shape == (2, 1)
    assert json.loads((tmp_path / "a" / "build.json").read_text())["recipe_id"] == recipe.identity()


def test_ensure_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CGPO_HOME", str(tmp_path))
    recipe = TinyRecipe(sft_records_per_family=4, sft_steps=1, sft_batch_size=2, rm_steps=1, rm_batch_size=2,
                        eval_prompts_per_family=1, policy_layers=1, reward_layers=1)  # fmt: skip
    messages: list[str] = []
    folder = ensure_tiny_models(recipe, log=messages.append)
    assert folder == tiny_models_dir(recipe) and folder.parent == tmp_path / "tiny"
    assert (folder / "policy" / "config.json").is_file() and (folder / "reward" / "config.json").is_file()
    built_messages = len(messages)
    assert ensure_tiny_models(recipe, log=messages.append) == folder
    assert len(messages) == built_messages  # cached: nothing rebuilt
    assert not list(folder.parent.glob("*.tmp-*"))  # no half-built folder left behind


def test_recipe_identity_changes_with_every_field():
    base = TinyRecipe()
    for field in dataclasses.fields(TinyRecipe):
        value = getattr(base, field.name)
        changed = dataclasses.replace(base, **{field.name: value + 1 if not isinstance(value, float) else value * 2})
        assert changed.identity() != base.identity(), field.name


@pytest.mark.slow
def test_default_build_gives_a_partly_competent_policy(tmp_path, monkeypatch):
    """The warm start must leave RL something to improve: some held-out answers right, not all."""
    import torch

    monkeypatch.setenv("CGPO_HOME", str(tmp_path))
    shipped_folder = shipped_models_dir()
    assert shipped_folder is not None
    shipped = json.loads((shipped_folder / "build.json").read_text())
    # The build's floating-point reduction order depends on the thread count (one thread in tests, two in
    # the shipped build): rebuild with the shipped build's threads, or the comparison measures that instead.
    threads = torch.get_num_threads()
    torch.set_num_threads(int(shipped["torch_threads"]))
    try:
        folder = ensure_tiny_models(log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    report = json.loads((folder / "build.json").read_text())
    accuracy = report["sft_heldout_exact_match"]
    assert 0.0 < sum(accuracy.values()) / len(accuracy) < 1.0, accuracy
    assert report["reward_heldout_pair_accuracy"] > 0.7, report
    # A rebuild reaches the shipped models' quality: it may come out better, not worse by more than a few
    # held-out prompts (0.1 of exact match per family of 32 prompts, 0.05 of pair accuracy). Bits are not
    # promised across CPUs (float order), and the short SFT amplifies that: on two x86-64 machines of this
    # project with the same torch and thread count, the instructions family came out 0.531 (shipped) and 0.781.
    assert report["recipe_id"] == shipped["recipe_id"]
    for family, value in shipped["sft_heldout_exact_match"].items():
        assert accuracy[family] >= value - 0.1, (family, accuracy, shipped["sft_heldout_exact_match"])
    assert report["reward_heldout_pair_accuracy"] >= shipped["reward_heldout_pair_accuracy"] - 0.05, report


def test_the_package_ships_the_default_build_and_uses_it_without_building(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from cgpo.models import resolve_model_path

    shipped = shipped_models_dir()
    assert shipped is not None, (
        f"cgpo/tiny/assets/ holds no build for recipe {DEFAULT_RECIPE.identity()}: the tiny builder or its recipe "
        "changed; run `cgpo bootstrap --rebuild` and copy $CGPO_HOME/tiny/<id> to cgpo/tiny/assets/"
    )
    monkeypatch.setenv("CGPO_HOME", str(tmp_path))  # empty: nothing built locally
    messages: list[str] = []
    policy_path = resolve_model_path("tiny:policy", log=messages.append)
    assert Path(policy_path) == shipped / "policy" and not messages  # no build, nothing to say
    assert not (tmp_path / "tiny").exists()
    AutoModelForCausalLM.from_pretrained(policy_path)
    AutoTokenizer.from_pretrained(policy_path)
    AutoModelForSequenceClassification.from_pretrained(resolve_model_path("tiny:reward"))


def test_a_local_build_takes_precedence_over_the_shipped_one(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("CGPO_HOME", str(tmp_path))
    local = tiny_models_dir()
    shutil.copytree(shipped_models_dir(), local)  # stands for `cgpo bootstrap --rebuild`
    assert tiny_models() == local
