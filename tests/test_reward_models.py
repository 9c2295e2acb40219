"""Reward models: loading, formatting, batched scoring, padding, the shared-instance cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cgpo import reward_models
from cgpo.reward_models import RewardModelError, RewardModelSettings, load_reward_model
from cgpo.schema import SchemaError, build

PROMPTS = ["hi", "what is 2+2?", "xxxxx", "tell me a story", "ok"]
COMPLETIONS = ["hello there", "4", "yy", "once upon a time there was a tiny model", ""]


@pytest.fixture(autouse=True)
def _fresh_cache():
    reward_models.clear_cache()
    yield
    reward_models.clear_cache()


@pytest.fixture(scope="module")
def gpt2_reward_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny GPT-2 reward model: absolute position embeddings, so left padding needs explicit position ids."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("gpt2-rm")
    config = GPT2Config(
        vocab_size=len(tiny_tokenizer),
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=128,
        num_labels=1,
        pad_token_id=tiny_tokenizer.pad_token_id,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def test_scores_are_one_float_per_pair(tiny_models_dir):
    rm = load_reward_model(tiny_models_dir / "reward")
    scores = rm.score(PROMPTS, COMPLETIONS)
    assert scores.shape == (len(PROMPTS),)
    assert scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert len(set(scores.tolist())) > 1  # different inputs, different scores
    assert rm(PROMPTS, COMPLETIONS) == pytest.approx(scores.tolist())


def test_batched_equals_one_by_one(tiny_models_dir):
    rm = load_reward_model(tiny_models_dir / "reward", batch_size=3)
    batched = rm.score(PROMPTS, COMPLETIONS)
    single = torch.stack([rm.score([p], [c])[0] for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_scores_come_back_in_input_order(tiny_models_dir):
    rm = load_reward_model(tiny_models_dir / "reward", batch_size=2)
    forward = rm.score(PROMPTS, COMPLETIONS)
    backward = rm.score(PROMPTS[::-1], COMPLETIONS[::-1])
    torch.testing.assert_close(backward, forward.flip(0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_left_and_right_padding_give_the_same_scores(tiny_models_dir, gpt2_reward_dir, which):
    path = tiny_models_dir / "reward" if which == "llama" else gpt2_reward_dir
    left = load_reward_model(path, padding_side="left", batch_size=5).score(PROMPTS, COMPLETIONS)
    right = load_reward_model(path, padding_side="right", batch_size=5).score(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(left, right, rtol=0, atol=1e-5)


def test_position_ids_are_what_makes_left_padding_safe(gpt2_reward_dir):
    # With absolute position embeddings, the default positions shift under left padding and the score
    # changes: this is the failure the explicit position ids prevent.
    rm = load_reward_model(gpt2_reward_dir, padding_side="left", batch_size=5)
    fixed = rm.score(PROMPTS, COMPLETIONS)
    rm._accepts_position_ids = False
    shifted = rm.score(PROMPTS, COMPLETIONS)
    assert (fixed - shifted).abs().max() > 1e-3


def test_same_path_shares_one_instance(tiny_models_dir):
    path = tiny_models_dir / "reward"
    a = load_reward_model(path, max_length=64)
    b = load_reward_model(str(path / ".." / "reward"), append_eos=True)  # another spelling, other formatting
    assert a.model is b.model
    assert a.tokenizer is b.tokenizer
    assert a.max_length == 64 and b.max_length != 64  # formatting stays per view
    c = load_reward_model(path, dtype="bfloat16")
    assert c.model is not a.model
    assert next(c.model.parameters()).dtype == torch.bfloat16


def test_num_labels_other_than_one_is_rejected(tmp_path, tiny_tokenizer):
    from transformers import LlamaForSequenceClassification

    from cgpo.tiny.models import TEST_SIZE, tiny_llama_config

    out = tmp_path / "two-labels"
    LlamaForSequenceClassification(
        tiny_llama_config(tiny_tokenizer, num_layers=1, size=TEST_SIZE, num_labels=2)
    ).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    with pytest.raises(RewardModelError, match="num_labels=2"):
        load_reward_model(out)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RewardModelError, match="cannot read the reward model config"):
        load_reward_model(tmp_path / "nothing-here")


def test_chat_template_formatting(tiny_models_dir, tiny_tokenizer):
    rm = load_reward_model(tiny_models_dir / "reward")
    assert rm.use_chat_template
    assert rm.format("hi", "hello") == "user: hi</s>assistant: hello</s>"
    chat = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    assert rm.format(chat, "hello") == "system: be nice</s>user: hi</s>assistant: hello</s>"
    # The template writes the special tokens itself: the ids are exactly the template text's ids.
    assert (
        rm.encode("hi", "hello")
        == tiny_tokenizer("user: hi</s>assistant: hello</s>", add_special_tokens=False)["input_ids"]
    )
    plain = load_reward_model(tiny_models_dir / "reward", chat_template="never")
    assert plain.format("hi", "hello") == "hihello"
    with pytest.raises(RewardModelError, match="chat template"):
        plain.format(chat, "hello")


def _reward_model_without_chat_template(tmp_path: Path, tiny_models_dir: Path, tiny_tokenizer: Any) -> Path:
    """A copy of the tiny reward model whose tokenizer has no chat template."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "no-template"
    AutoModelForSequenceClassification.from_pretrained(tiny_models_dir / "reward").save_pretrained(out)
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_models_dir / "reward")
    tokenizer.chat_template = None
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def test_chat_template_always_requires_one(tmp_path, tiny_models_dir, tiny_tokenizer):
    out = _reward_model_without_chat_template(tmp_path, tiny_models_dir, tiny_tokenizer)
    rm = load_reward_model(out)
    assert not rm.use_chat_template
    assert rm.format("a", "b") == "ab"
    with pytest.raises(RewardModelError, match="no chat template"):
        load_reward_model(out, chat_template="always")


def test_truncation_keeps_the_end(tiny_models_dir):
    full = load_reward_model(tiny_models_dir / "reward").encode("a long prompt " * 5, "the answer")
    cut = load_reward_model(tiny_models_dir / "reward", max_length=12).encode("a long prompt " * 5, "the answer")
    assert len(full) > 12
    assert cut == full[-12:]


def test_append_eos_is_idempotent(tiny_models_dir, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    templated = load_reward_model(tiny_models_dir / "reward", append_eos=True).encode("hi", "yo")
    assert templated[-1] == eos and templated[-2] != eos  # the template already ends the turn with EOS
    plain = load_reward_model(tiny_models_dir / "reward", chat_template="never", append_eos=True).encode("hi", "yo")
    without = load_reward_model(tiny_models_dir / "reward", chat_template="never").encode("hi", "yo")
    assert without[-1] != eos
    assert plain == [*without, eos]


def test_missing_pad_token_falls_back_to_eos(tmp_path, tiny_tokenizer):
    from transformers import LlamaForSequenceClassification, PreTrainedTokenizerFast

    from cgpo.tiny.models import TEST_SIZE, tiny_llama_config

    out = tmp_path / "no-pad"
    config = tiny_llama_config(tiny_tokenizer, num_layers=1, size=TEST_SIZE, num_labels=1)
    config.pad_token_id = None
    torch.manual_seed(1)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(out)
    rm = load_reward_model(out, chat_template="never", batch_size=4)
    assert rm.tokenizer.pad_token_id == rm.tokenizer.eos_token_id
    assert rm.model.config.pad_token_id == rm.tokenizer.eos_token_id
    batched = rm.score(PROMPTS, COMPLETIONS)
    single = torch.stack([rm.score([p], [c])[0] for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_identity_is_stable_and_tracks_settings(tiny_models_dir):
    a = load_reward_model(tiny_models_dir / "reward")
    assert a.identity == load_reward_model(tiny_models_dir / "reward").identity
    assert a.identity != load_reward_model(tiny_models_dir / "reward", max_length=32).identity
    assert a.identity != load_reward_model(tiny_models_dir / "reward", append_eos=True).identity


def test_settings_validate_from_yaml_data():
    settings = build(RewardModelSettings, {"path": "x", "dtype": "bfloat16", "max_length": 512})
    assert settings.max_length == 512
    with pytest.raises(SchemaError, match="dtype"):
        build(RewardModelSettings, {"path": "x", "dtype": "float64"})
    with pytest.raises(SchemaError, match="batch_size"):
        build(RewardModelSettings, {"path": "x", "batch_size": 0})


def test_prompts_and_completions_must_match(tiny_models_dir):
    with pytest.raises(ValueError, match="must match"):
        load_reward_model(tiny_models_dir / "reward").score(["a", "b"], ["c"])


def _task_with_reward(reward: dict) -> object:
    from cgpo.config import TaskConfig

    task = {"name": "t", "prompts": {"train": {"path": "x.jsonl"}}, "optimizer": {"name": "crpg"}, "reward": reward}
    return build(TaskConfig, task)


def test_the_task_reward_settings_reach_the_loaded_reward_model(tiny_models_dir, tiny_tokenizer):
    from cgpo.scoring import TaskScorer

    path = str(tiny_models_dir / "reward")
    configured = {"model": path, "baseline": "none", "dtype": "bfloat16", "append_eos": True,
                  "chat_template": "never", "max_length": 6}  # fmt: skip
    rm = TaskScorer(_task_with_reward(configured), resolve_model=str, device="cpu", dtype="float32").reward_fn
    default = TaskScorer(_task_with_reward({"model": path, "baseline": "none"}), resolve_model=str, device="cpu",
                         dtype="float32").reward_fn  # fmt: skip
    assert rm.model.dtype == torch.bfloat16 and default.model.dtype == torch.float32  # none: the device's default
    eos = tiny_tokenizer.eos_token_id
    plain = tiny_tokenizer("hi" + "hello")["input_ids"]  # chat_template: never scores prompt + completion
    assert rm.encode("hi", "hello") == [*plain, eos][-6:]  # EOS appended, then the end kept
    assert (
        default.encode("hi", "hello")
        == tiny_tokenizer("user: hi</s>assistant: hello</s>", add_special_tokens=False)["input_ids"]
    )
    assert rm.identity != default.identity  # cached baseline rewards never cross settings
    assert torch.isfinite(rm.score(PROMPTS, COMPLETIONS)).all()


def test_chat_template_always_on_a_reward_model_without_one_stops_cgpo_train_with_one_line(
    tmp_path, tiny_models_dir, tiny_tokenizer, capsys
):
    import yaml

    from cgpo.cli import main

    rm_dir = _reward_model_without_chat_template(tmp_path, tiny_models_dir, tiny_tokenizer)
    repo = Path(__file__).resolve().parent.parent
    task = {"include": str(repo / "tasks" / "tiny_arithmetic.yaml"),
            "reward": {"model": str(rm_dir), "chat_template": "always"}}  # fmt: skip
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"policy": {"path": str(tiny_models_dir / "policy")}, "tasks": [task],
                                      "training": {"max_steps": 1}, "output_dir": str(tmp_path / "run")}))  # fmt: skip
    assert main(["validate", str(config)]) == 0  # a valid config: the tokenizer is only read when loading
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"cgpo train: task tiny_arithmetic: reward: chat_template: always, but the tokenizer of '{rm_dir}' has no "
        "chat template"
    )
