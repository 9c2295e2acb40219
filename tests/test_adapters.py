"""TRL adapters: the binary-judge signature, the GRPO reward-function calling convention, and a real GRPOTrainer run."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from cgpo.adapters import (
    GRPORewardFunction,
    TRLBinaryJudge,
    as_mixture,
    completion_text,
    judge_label,
    last_user_message,
)
from cgpo.judging import Judge, MixtureOfJudges, Verdict, failed, satisfied, violated


@dataclass(frozen=True)
class AnswerParams:
    key: str = "answer"


class AnswerJudge(Judge):
    """Satisfied when the completion contains the gold answer; -1 when the sample has no usable gold answer.

    Records what it was given, so tests can see exactly what the adapters pass on.
    """

    Params = AnswerParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[list[str], list[str], list[dict[str, Any]]]] = []
        self.lock = threading.Lock()
        self.closed = 0

    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        with self.lock:
            self.seen.append((list(prompts), list(completions), [dict(m) for m in metadata]))
        out = []
        for completion, meta in zip(completions, metadata, strict=True):
            gold = meta.get(self.params.key)
            if not isinstance(gold, str) or not gold:
                out.append(failed(f"no gold answer under '{self.params.key}'"))
            elif gold in completion:
                out.append(satisfied("contains the answer"))
            else:
                out.append(violated(f"does not contain {gold!r}"))
        return out

    def close(self) -> None:
        self.closed += 1


class ShortJudge(Judge):
    def judge_batch(self, prompts, completions, metadata):
        return [satisfied() if len(c) <= 12 else violated("too long") for c in completions]


def test_binary_judge_signature_and_gold_answers():
    inner = AnswerJudge()
    judge = TRLBinaryJudge(inner)
    assert judge.judge(["2+2?", "3+3?", "4+4?"], ["it is 4", "it is 5", "8"], ["4", "6", ""]) == [1, 0, -1]
    assert inner.seen[-1][2] == [{"answer": "4"}, {"answer": "6"}, {"answer": ""}]
    # TRL's positional order, with shuffle_order (meaningless for a binary judge) accepted and ignored.
    assert judge.judge(["q"], ["x"], None, False) == [-1]
    assert inner.seen[-1][2] == [{}]
    with pytest.raises(ValueError, match="2 gold completions for 1 completions"):
        judge.judge(["q"], ["x"], ["a", "b"])
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        judge.judge(["q", "r"], ["x"])
    judge.close()
    assert inner.closed == 1


def test_binary_judge_gold_key_and_extra_metadata():
    inner = AnswerJudge(key="solution")
    judge = TRLBinaryJudge(inner, gold_key="solution", close_judges=False)
    meta = [{"id": 1, "solution": "overridden"}, {"id": 2}]
    assert judge.judge(["a", "b"], ["x 7", "y"], gold_completions=["7", "9"], metadata=meta) == [1, 0]
    assert inner.seen[-1][2] == [{"id": 1, "solution": "7"}, {"id": 2, "solution": "9"}]
    assert meta[0]["solution"] == "overridden"  # the caller's records are not modified
    judge.close()
    assert inner.closed == 0


def test_binary_judge_over_a_mixture_is_a_kleene_and():
    # Sample 0: both pass -> 1. Sample 1: long and wrong -> 0. Sample 2: no gold (-1) but too long (0) -> 0.
    # Sample 3: no gold (-1) and short (1) -> -1.
    judge = TRLBinaryJudge({"answer": AnswerJudge(), "short": ShortJudge()})
    completions = ["4", "a very long wrong answer", "a very long answer", "short"]
    assert judge.judge(["q"] * 4, completions, ["4", "5", "", ""]) == [1, 0, 0, -1]


def test_as_mixture_and_labels():
    j = AnswerJudge()
    assert list(as_mixture(j).judges) == ["answer"]
    mixture = MixtureOfJudges({"a": j})
    assert as_mixture(mixture) is mixture
    with pytest.raises(TypeError, match="expected a cgpo Judge"):
        as_mixture({})
    with pytest.raises(TypeError, match="expected a cgpo Judge"):
        as_mixture(lambda p, c: [1])  # type: ignore[arg-type]

    class FalseRefusalJudge(ShortJudge):
        pass

    class IFEvalJudge(ShortJudge):
        pass

    assert judge_label(FalseRefusalJudge()) == "false_refusal"
    assert judge_label(IFEvalJudge()) == "ifeval"


def test_text_helpers_for_conversational_data():
    assert last_user_message("plain") == "plain"
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "second "}, {"type": "image"}, {"type": "text", "text": "turn"}],
        },
    ]
    assert last_user_message(conversation) == "second turn"
    assert last_user_message([{"role": "system", "content": "only system"}]) == "only system"
    assert last_user_message([]) == ""
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "The answer is 4."}]) == "The answer is 4."
    assert completion_text([{"content": "no role"}]) == "no role"
    tool_turns = [
        {"role": "assistant", "content": "Let me compute. "},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "It is 4."},
    ]
    assert completion_text(tool_turns) == "Let me compute. It is 4."


def test_reward_function_calling_convention_standard_format():
    inner = AnswerJudge()
    reward = GRPORewardFunction(inner)
    assert reward.__name__ == "cgpo_answer"
    metrics: dict[str, list[float]] = {}
    extra: dict[str, list[Any]] = {}
    out = reward(
        prompts=["2+2?", "2+2?", "3+3?"],
        completions=["4", "five", "6"],
        completion_ids=[[1], [2, 3], [4]],
        answer=["4", "4", None],
        difficulty=[1, 1, 2],
        trainer_state=object(),
        log_extra=lambda column, values: extra.setdefault(column, []).extend(values),
        log_metric=lambda name, value: metrics.setdefault(name, []).append(value),
        some_future_trl_kwarg=42,  # not a list: not a column
    )
    assert out == [1.0, 0.0, None]
    prompts, completions, metadata = inner.seen[-1]
    assert prompts == ["2+2?", "2+2?", "3+3?"] and completions == ["4", "five", "6"]
    assert metadata == [
        {"answer": "4", "difficulty": 1},
        {"answer": "4", "difficulty": 1},
        {"answer": None, "difficulty": 2},
    ]
    assert metrics == {
        "cgpo_answer/satisfied_rate": [1 / 3],
        "cgpo_answer/answer/violation_rate": [1 / 3],
        "cgpo_answer/answer/failure_rate": [1 / 3],
    }
    assert extra == {
        "cgpo_answer_reason": ["", "answer: does not contain '4'", "answer: no gold answer under 'answer'"]
    }


def test_reward_function_conversational_format_and_configured_values():
    inner = AnswerJudge(key="gold")
    reward = GRPORewardFunction(
        inner, name="math_ok", satisfied=2.0, violated=-1.0, failed=0.0, column_map={"gold": "solution"}
    )
    prompt = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "1+1?"}]
    out = reward(
        prompts=[prompt, prompt, prompt],
        completions=[
            [{"role": "assistant", "content": "It is 2."}],
            [{"role": "assistant", "content": "It is 3."}],
            [{"role": "assistant", "content": "?"}],
        ],
        solution=["2", "2", ""],
    )
    assert out == [2.0, -1.0, 0.0]
    assert reward.__name__ == "math_ok"
    prompts, completions, metadata = inner.seen[-1]
    assert prompts == ["1+1?"] * 3 and completions == ["It is 2.", "It is 3.", "?"]
    assert metadata[0] == {"solution": "2", "gold": "2"}
    # Positional arguments work too (plain Python callers).
    assert reward(["q"], ["2"], None, solution=["2"]) == [2.0]


def test_reward_function_errors_name_the_problem():
    reward = GRPORewardFunction({"a": AnswerJudge(), "s": ShortJudge()}, column_map={"answer": "solution"})
    assert reward.__name__ == "cgpo_judges"
    with pytest.raises(ValueError, match="column 'solution' has 1 values for 2 completions"):
        reward(prompts=["a", "b"], completions=["x", "y"], solution=["1"])
    with pytest.raises(
        ValueError, match="column_map maps 'answer' to column 'solution', which this call lacks; columns: id"
    ):
        reward(prompts=["a"], completions=["x"], id=[1], trainer_state=None)
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        reward(prompts=["a", "b"], completions=["x"], solution=["1"])
    assert reward(prompts=[], completions=[], solution=[]) == []


def test_reward_function_is_picklable_for_multiprocess_trainers():
    reward = GRPORewardFunction(ShortJudge(), failed=0.5)
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == "cgpo_short" and clone(prompts=["p"], completions=["ok"]) == [1.0]


@pytest.mark.slow
def test_grpo_trainer_runs_with_the_reward_adapter(tiny_models_dir, tmp_path):
    """A real (tiny) TRL GRPO run: conversational prompts, a dataset column as gold answer, some -1 verdicts."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    questions = [("1+1?", "2"), ("2+2?", "4"), ("3+1?", "4"), ("no gold", "")]
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": q}], "answer": a, "difficulty": i}
            for i, (q, a) in enumerate(questions)
        ]
    )
    inner = AnswerJudge()
    reward = GRPORewardFunction(inner)
    config = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        learning_rate=1e-4,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        dataloader_pin_memory=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(tiny_models_dir / "policy"), reward_funcs=[reward], args=config, train_dataset=dataset
    )
    trainer.train()

    assert inner.seen, "TRL never called the reward function"
    for prompts, completions, metadata in inner.seen:
        assert len(prompts) == len(completions) == len(metadata) == 4  # 2 prompts x 2 generations
        assert all(isinstance(c, str) for c in completions)  # message lists were turned into text
        by_prompt = dict(questions)
        for prompt, meta in zip(prompts, metadata, strict=True):
            assert meta["answer"] == by_prompt[prompt]  # the dataset column reached the judge per sample
            assert set(meta) == {"answer", "difficulty"}  # TRL's own kwargs are not metadata
    # Two steps of 2 prompts cover the 4-row dataset, so the gold-less prompt was judged -1 and TRL took None.
    assert {m["answer"] for _, _, metadata in inner.seen for m in metadata} == {"2", "4", ""}
    logged = {key for row in trainer.state.log_history for key in row}
    assert "rewards/cgpo_answer/mean" in logged  # TRL logs the reward under the adapter's __name__
    assert {"cgpo_answer/satisfied_rate", "cgpo_answer/answer/failure_rate"} <= logged  # our log_metric calls
