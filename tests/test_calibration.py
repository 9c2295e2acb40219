"""Calibrated reward (eq. 5), judge-only rewards, the baseline cache and the two baseline sources."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cgpo import reward_models
from cgpo.calibration import (
    BaselineCache,
    baseline_rewards,
    calibrated_rewards,
    generate_baselines,
    judge_only_rewards,
    resolve_baselines,
)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class CountingScorer:
    """A reward function that records what it was asked to score: r = len(completion) - len(prompt)."""

    def __init__(self):
        self.calls: list[list[tuple[str, str]]] = []

    def __call__(self, prompts, completions, metadata):
        assert len(metadata) == len(prompts)
        self.calls.append(list(zip(prompts, completions, strict=True)))
        return [float(len(c) - len(p)) for p, c in zip(prompts, completions, strict=True)]


class CountingGenerator:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return [f"answer to {p}" for p in prompts]


def test_calibrated_reward_matches_eq5_by_hand():
    rewards = torch.tensor([[1.0, 2.0, -3.0], [0.0, -1.0, 4.0]])
    bar = torch.tensor([1.0, -1.0])
    got = calibrated_rewards(rewards, bar)
    expected = torch.tensor([[0.5, sigmoid(1.0), sigmoid(-4.0)], [sigmoid(1.0), 0.5, sigmoid(5.0)]])
    torch.testing.assert_close(got, expected)
    # Same ranking as the raw reward within each prompt; comparable across prompts.
    assert torch.equal(got.argsort(dim=1), rewards.argsort(dim=1))
    # One sample per prompt ([B]) works too.
    torch.testing.assert_close(
        calibrated_rewards(torch.tensor([2.0, 0.0]), bar), torch.tensor([sigmoid(1.0), sigmoid(1.0)])
    )


def test_calibrated_reward_checks_the_baseline_shape():
    with pytest.raises(ValueError, match=r"\[B\]"):
        calibrated_rewards(torch.zeros(2, 3), torch.zeros(3))


def test_judge_only_rewards():
    reward, calibrated = judge_only_rewards(torch.tensor([[1, 0, -1], [1, 1, 0]]))
    assert reward.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert torch.equal(reward, calibrated)


def test_reference_source_scores_each_distinct_baseline_once():
    scorer, cache = CountingScorer(), BaselineCache()
    prompts = ["p1", "p2", "p1"]
    gold = ["gold one", "g2", "gold one"]
    completions, bar = resolve_baselines(
        prompts, source="reference", gold=gold, score_fn=scorer, cache=cache, reward_identity="rm-a"
    )
    assert completions == gold
    assert bar.tolist() == [6.0, 0.0, 6.0]
    assert scorer.calls == [[("p1", "gold one"), ("p2", "g2")]]
    # Cached: no further scoring, even for a new batch of the same prompts.
    resolve_baselines(
        prompts[::-1], source="reference", gold=gold[::-1], score_fn=scorer, cache=cache, reward_identity="rm-a"
    )
    assert len(scorer.calls) == 1
    # A different reward model, or a changed gold response, is scored anew.
    resolve_baselines(
        ["p1"], source="reference", gold=["gold one"], score_fn=scorer, cache=cache, reward_identity="rm-b"
    )
    resolve_baselines(
        ["p1"], source="reference", gold=["new gold"], score_fn=scorer, cache=cache, reward_identity="rm-a"
    )
    assert scorer.calls[1:] == [[("p1", "gold one")], [("p1", "new gold")]]


def test_reference_source_requires_every_gold_response():
    with pytest.raises(ValueError, match="prompt 1 has no gold response"):
        resolve_baselines(
            ["a", "b"],
            source="reference",
            gold=["x", None],
            score_fn=CountingScorer(),
            cache=BaselineCache(),
            reward_identity="r",
        )
    with pytest.raises(ValueError, match="needs the dataset's gold"):
        resolve_baselines(
            ["a"], source="reference", score_fn=CountingScorer(), cache=BaselineCache(), reward_identity="r"
        )


def test_generated_source_generates_once_per_prompt():
    generator, scorer, cache = CountingGenerator(), CountingScorer(), BaselineCache()
    completions, bar = resolve_baselines(
        ["a", "bb", "a"], source="generated", generate_fn=generator, generator="ref-v1", score_fn=scorer, cache=cache, reward_identity="rm"
    )  # fmt: skip
    assert completions == ["answer to a", "answer to bb", "answer to a"]
    assert generator.calls == [["a", "bb"]]
    assert bar.tolist() == [10.0, 10.0, 10.0]
    generate_baselines(["bb", "c", "a"], generator, cache, generator="ref-v1")
    assert generator.calls[1] == ["c"]  # only the missing prompt
    generate_baselines(["a"], generator, cache, generator="ref-v2")  # another generator: its own entries
    assert generator.calls[2] == ["a"]
    with pytest.raises(ValueError, match="needs a generate_fn"):
        resolve_baselines(["a"], source="generated", score_fn=scorer, cache=cache, reward_identity="rm")


def test_generate_fn_must_return_one_string_per_prompt():
    with pytest.raises(ValueError, match="returned 1 completions for 2 prompts"):
        generate_baselines(["a", "b"], lambda ps: ["x"], BaselineCache(), generator="g")
    with pytest.raises(TypeError, match="strings"):
        generate_baselines(["a"], lambda ps: [None], BaselineCache(), generator="g")


def test_chat_prompts_are_keyed_by_content():
    cache, scorer = BaselineCache(), CountingScorer()
    chat = [{"role": "user", "content": "hi"}]
    generate_baselines([chat, [dict(chat[0])]], CountingGenerator(), cache, generator="g")
    assert cache.get_completion([{"content": "hi", "role": "user"}], "g") is not None
    assert cache.get_completion("hi", "g") is None
    baseline_rewards(["q"], ["ans"], scorer, cache, reward_identity="rm", metadata=[{"answer": 1}])
    assert scorer.calls == [[("q", "ans")]]


def test_cache_round_trip(tmp_path):
    cache = BaselineCache()
    generate_baselines(["a", "b"], CountingGenerator(), cache, generator="g")
    baseline_rewards(["a", "b"], ["x", "yy"], CountingScorer(), cache, reward_identity="rm")
    path = tmp_path / "sub" / "baselines.json"
    cache.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["baselines.json"]  # no temp file left behind
    loaded = BaselineCache.load(path)
    assert loaded.to_dict() == cache.to_dict()
    assert loaded.get_completion("a", "g") == "answer to a"
    assert loaded.get_reward("b", "yy", "rm") == 1.0
    # A loaded cache answers without calling the generator or the scorer.
    generator, scorer = CountingGenerator(), CountingScorer()
    _, bar = resolve_baselines(["a", "b"], source="generated", generate_fn=generator, generator="g", score_fn=scorer, cache=loaded, reward_identity="rm")  # fmt: skip
    assert generator.calls == [] and len(scorer.calls) == 1  # rewards of the generated a_bar were not cached yet
    assert bar.tolist() == [10.0, 10.0]
    assert BaselineCache.from_dict(json.loads(path.read_text())).to_dict() == cache.to_dict()


def test_cache_load_edge_cases(tmp_path):
    assert len(BaselineCache.load(tmp_path / "missing.json")) == 0
    with pytest.raises(ValueError, match="not a cgpo baseline cache"):
        BaselineCache.from_dict({"kind": "something else"})
    old = BaselineCache()
    old.put_reward("a", "b", "rm", 1.0)
    data = old.to_dict() | {"format_version": -1}
    assert len(BaselineCache.from_dict(data)) == 0


def test_with_the_tiny_reward_model(tiny_models_dir):
    reward_models.clear_cache()
    rm = reward_models.load_reward_model(tiny_models_dir / "reward")
    prompts, gold = ["what is 1+1?", "say hi"], ["2", "hi"]
    completions, bar = resolve_baselines(prompts, source="reference", gold=gold, score_fn=rm, cache=BaselineCache(), reward_identity=rm.identity)  # fmt: skip
    # a_bar is scored exactly like a sample, so R_calib(s, a_bar) = sigmoid(0) = 0.5.
    samples = rm.score(prompts, completions)
    torch.testing.assert_close(bar, samples, rtol=0, atol=1e-6)
    torch.testing.assert_close(calibrated_rewards(samples, bar), torch.full((2,), 0.5), rtol=0, atol=1e-6)
    reward_models.clear_cache()
