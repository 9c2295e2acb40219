"""Built-in reward functions: length penalty, repetition penalty, judge pass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cgpo.judging import JUDGES, Judge, failed, satisfied, violated
from cgpo.reward_functions import JudgePass, LengthPenalty, RepetitionPenalty
from cgpo.rewards import REWARD_FUNCTIONS, RewardFunction
from cgpo.schema import Invalid, SchemaError


def test_length_penalty_by_hand():
    fn = LengthPenalty(max_length=4, min_length=2, scale=2.0)
    texts = ["one", "one two", "a b c d", "a b c d e f", ""]
    # Outside [2, 4] words by 1, 0, 0, 2, 2 -> -2 * d / 4.
    assert fn(["p"] * 5, texts, [{}] * 5) == [-0.5, 0.0, 0.0, -1.0, -1.0]
    chars = LengthPenalty(max_length=3, unit="characters")
    assert chars(["p"], ["abcdef"], [{}]) == [-1.0]
    lines = LengthPenalty(max_length=1, unit="lines")
    assert lines(["p"], ["a\n\nb\n"], [{}]) == [-1.0]


def test_length_penalty_params():
    with pytest.raises(SchemaError, match="min_length"):
        LengthPenalty.parse_params({"max_length": 3, "min_length": 5})
    with pytest.raises(SchemaError, match="max_length"):
        LengthPenalty.parse_params({})


def test_repetition_penalty_by_hand():
    fn = RepetitionPenalty(n=2)
    # "a b a b a b": bigrams ab ba ab ba ab -> 2 distinct of 5 -> -(1 - 2/5).
    assert fn(["p"] * 3, ["a b a b a b", "all words differ here", "one"], [{}] * 3) == [
        pytest.approx(-0.6),
        0.0,
        0.0,
    ]
    chars = RepetitionPenalty(n=1, unit="characters", scale=2.0)
    assert chars(["p"], ["aaaa"], [{}]) == [pytest.approx(-1.5)]


@dataclass(frozen=True)
class _ContainsParams:
    word: str

    def __post_init__(self) -> None:
        if not self.word:
            raise Invalid("word", "must not be empty")


class _Contains(Judge):
    Params = _ContainsParams

    def judge_batch(self, prompts, completions, metadata):
        return [satisfied() if self.params.word in c else violated("missing") for c in completions]


class _FailsOnX(Judge):
    def judge_batch(self, prompts, completions, metadata):
        return [failed("x") if "x" in c else satisfied() for c in completions]


@pytest.fixture
def test_judges():
    JUDGES.register("test_rf_contains", _Contains)
    JUDGES.register("test_rf_fails_on_x", _FailsOnX)
    yield
    JUDGES.unregister("test_rf_contains")
    JUDGES.unregister("test_rf_fails_on_x")


def test_judge_pass_all_and_fraction(test_judges):
    judges = [{"name": "test_rf_contains", "params": {"word": "yes"}}, {"name": "test_rf_fails_on_x"}]
    completions = ["yes", "no", "yes x", "no x"]
    everything = JudgePass(JudgePass.parse_params({"judges": judges}))
    # Kleene AND: a violation wins over a failure ("no x" -> 0.0); a failure alone scores failure_reward.
    assert everything(["p"] * 4, completions, [{}] * 4) == [1.0, 0.0, 0.0, 0.0]
    lenient = JudgePass(JudgePass.parse_params({"judges": judges, "failure_reward": 0.5}))
    assert lenient(["p"] * 4, completions, [{}] * 4) == [1.0, 0.0, 0.5, 0.0]
    fraction = JudgePass(JudgePass.parse_params({"judges": judges, "mode": "fraction"}))
    assert fraction(["p"] * 4, completions, [{}] * 4) == [1.0, 0.5, 0.5, 0.0]
    fraction.close()


def test_judge_pass_validates_judges(test_judges):
    with pytest.raises(SchemaError, match=r"judges\.0\.name.*unknown judge"):
        JudgePass.parse_params({"judges": [{"name": "test_rf_contain"}]})
    with pytest.raises(SchemaError, match=r"judges\.0\.params\.word: must not be empty"):
        JudgePass.parse_params({"judges": [{"name": "test_rf_contains", "params": {"word": ""}}]})
    with pytest.raises(SchemaError, match="judges"):
        JudgePass.parse_params({"judges": []})


@pytest.mark.parametrize("cls", [LengthPenalty, RepetitionPenalty, JudgePass])
def test_reward_functions_satisfy_the_registry_contract(cls):
    assert issubclass(cls, RewardFunction)
    assert cls.description
    name = f"test_contract_{cls.__name__}"
    REWARD_FUNCTIONS.register(name, cls)  # runs the registry's check
    REWARD_FUNCTIONS.unregister(name)
