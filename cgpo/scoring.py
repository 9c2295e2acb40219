"""A task's judges and reward at run time: verdicts, raw rewards and calibrated rewards for a rollout.

Built once per task from its config (:class:`TaskScorer`). Tasks that name the same reward model share one
loaded instance (:func:`cgpo.reward_models.load_reward_model` caches by path, dtype and device).

Calibrated reward (CGPO eq. 5): sigmoid(r(s, a) - r(s, a_bar)) with a_bar from the task's
``reward.baseline`` source; ``none`` means r(s, a_bar) = 0, i.e. sigmoid(r). A task without a reward uses
the judges alone: reward 1.0 when every judge is satisfied, else 0.0, and the same value calibrated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from cgpo.calibration import (
    BaselineCache,
    baseline_rewards,
    calibrated_rewards,
    generate_baselines,
    judge_only_rewards,
    reference_baselines,
)
from cgpo.config import TaskConfig
from cgpo.data import PromptRecord
from cgpo.errors import UserError
from cgpo.judging import FAILED, JUDGES, VIOLATED, MixtureOfJudges, MixtureResult


class JudgeFailureStop(UserError):
    """A judge failed and the task's ``on_judge_failure`` is ``stop``."""


class TaskScorer:
    """The mixture of judges and the reward of one task.

    Args:
        task: The task's config.
        resolve_model: Maps a config model path (``tiny:reward``) to a loadable one.
        device: Device for the reward model.
        dtype: Reward-model dtype name, unless the task sets ``reward.dtype``.
    """

    def __init__(self, task: TaskConfig, *, resolve_model: Callable[[str], str], device: str, dtype: str) -> None:
        self.task = task
        judges = {}
        for spec in task.judges:
            judge_cls = JUDGES.get(spec.name)
            judges[spec.metric_label] = judge_cls(judge_cls.parse_params(spec.params))
        self.mixture = MixtureOfJudges(judges)
        self.reward_fn: Any = None
        self.reward_identity = ""
        reward = task.reward
        if reward.model is not None:
            from cgpo.reward_models import RewardModelError, load_reward_model

            settings: dict[str, Any] = {
                "device": device, "dtype": reward.dtype or dtype, "batch_size": reward.batch_size,
                "append_eos": reward.append_eos, "chat_template": reward.chat_template,
            }  # fmt: skip
            if reward.max_length is not None:
                settings["max_length"] = reward.max_length
            try:
                self.reward_fn = load_reward_model(resolve_model(reward.model), **settings)
            except RewardModelError as exc:  # e.g. chat_template: always and the RM tokenizer has none
                raise UserError(f"task {task.name}: reward: {exc}") from None
            self.reward_identity = self.reward_fn.identity
        elif reward.function is not None:
            from cgpo.rewards import REWARD_FUNCTIONS

            cls = REWARD_FUNCTIONS.get(reward.function)
            self.reward_fn = cls(cls.parse_params(reward.params))
            self.reward_identity = f"function:{reward.function}:{sorted(reward.params.items())!r}"
        self.baselines = BaselineCache()

    def judge(self, records: Sequence[PromptRecord], texts: Sequence[str]) -> tuple[torch.Tensor, MixtureResult]:
        """Verdicts of ``texts`` (one per record) after the failure policy; -1 stays only under ``exclude``."""
        result = self.mixture([r.prompt for r in records], list(texts), [r.metadata for r in records])
        verdicts = torch.tensor(result.verdicts, dtype=torch.long)
        if FAILED in result.verdicts:
            policy = self.task.on_judge_failure
            if policy == "stop":
                reasons = {
                    label: next(v.reason for v in column if v.value == FAILED)
                    for label, column in result.per_judge.items()
                    if any(v.value == FAILED for v in column)
                }
                raise JudgeFailureStop(
                    f"task {self.task.name}: a judge failed and on_judge_failure is stop: {reasons}"
                )
            if policy == "violate":
                verdicts = torch.where(verdicts == FAILED, VIOLATED, verdicts)
        return verdicts, result

    def raw_rewards(self, records: Sequence[PromptRecord], texts: Sequence[str]) -> torch.Tensor:
        """``[N]`` raw rewards from the reward model or function (not for judge-only tasks)."""
        values = self.reward_fn([r.message for r in records], list(texts), [r.metadata for r in records])
        return torch.as_tensor([float(v) for v in values], dtype=torch.float32)

    def baseline_texts(
        self,
        records: Sequence[PromptRecord],
        generate_fn: Callable[[list[str]], Sequence[str]] | None = None,
        generator: str = "",
    ) -> list[str]:
        """The B baseline responses a_bar of ``records`` (empty strings where a task has none).

        ``reference``: the gold responses; ``generated``: pi_ref's response, generated once per prompt with
        ``generate_fn`` and cached under ``generator``; ``none`` and judge-only tasks: the gold response where
        a record has one (the CRRAFT fallback still needs an a_bar), else "".
        """
        source = self.task.reward.baseline
        if self.reward_fn is None or source == "none":
            return [r.reference or "" for r in records]
        messages = [r.message for r in records]
        if source == "reference":
            return reference_baselines(messages, [r.reference for r in records])
        if generate_fn is None:
            raise ValueError("the 'generated' calibration baseline needs a generate_fn")
        return generate_baselines(messages, generate_fn, self.baselines, generator=generator)

    def rewards(
        self,
        prompts: Sequence[PromptRecord],
        texts: Sequence[str],
        verdicts: torch.Tensor,
        *,
        baselines: Sequence[str] | None = None,
        generate_fn: Callable[[list[str]], Sequence[str]] | None = None,
        generator: str = "",
        raw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Raw and calibrated rewards of B * K completions of B prompts (K consecutive ones per prompt).

        Args:
            prompts: B records.
            texts: B * K completions.
            verdicts: ``[B * K]`` combined verdicts (judge-only tasks derive their reward from them).
            baselines: The B a_bar texts from :meth:`baseline_texts`; computed here (with ``generate_fn``
                and ``generator``) when None.
            generate_fn: Generates a_bar with the reference model (``generated`` baselines).
            generator: Identity of that generation, part of the baseline cache key.
            raw: ``[N]`` raw rewards already computed (by :func:`score_together`); scored here when None.

        Returns:
            ``([N] raw rewards, [N] calibrated rewards, B baseline responses a_bar or empty strings)``.
        """
        if baselines is None:
            baselines = self.baseline_texts(prompts, generate_fn, generator)
        baselines = list(baselines)
        if self.reward_fn is None:
            rewards, calibrated = judge_only_rewards(verdicts)
            return rewards, calibrated, baselines
        k = len(texts) // len(prompts)
        rewards = raw if raw is not None else self.raw_rewards([r for r in prompts for _ in range(k)], texts)
        if self.task.reward.baseline == "none":
            bar = torch.zeros(len(prompts))  # r(s, a_bar) = 0: the calibrated reward is sigmoid(r)
        else:
            bar = baseline_rewards(
                [r.message for r in prompts], baselines, self.reward_fn, self.baselines,
                reward_identity=self.reward_identity, metadata=[r.metadata for r in prompts],
            )  # fmt: skip
        calibrated = calibrated_rewards(rewards.view(len(prompts), k), bar).flatten()
        return rewards, calibrated, baselines

    def missing_reference_baselines(self, records: Sequence[PromptRecord]) -> list[tuple[str, str]]:
        """Distinct (message, gold a_bar) pairs of ``reference`` baselines whose reward is not cached yet.

        Empty for other baseline sources and for records without a gold response (:meth:`rewards` then
        handles them, and reports a missing gold).
        """
        if self.task.reward.baseline != "reference" or self.reward_fn is None:
            return []
        out: dict[tuple[str, str], None] = {}
        for r in records:
            if r.reference and self.baselines.get_reward(r.message, r.reference, self.reward_identity) is None:
                out[(r.message, r.reference)] = None
        return list(out)

    def baseline_verdicts(self, records: Sequence[PromptRecord], baselines: Sequence[str]) -> torch.Tensor:
        """``[B]`` verdicts of each prompt's a_bar (for the CRRAFT fallback)."""
        verdicts, _ = self.judge(records, baselines)
        return verdicts

    def state_dict(self) -> dict[str, Any]:
        return {"baselines": self.baselines.to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.baselines = BaselineCache.from_dict(state["baselines"])

    def close(self) -> None:
        self.mixture.close()


def score_together(
    jobs: Sequence[tuple[TaskScorer, Sequence[PromptRecord], Sequence[str]]],
) -> list[torch.Tensor | None]:
    """Raw rewards of several tasks' samples, with one reward-model call per shared reward model.

    Args:
        jobs: Per task ``(scorer, B records, B * K completions)``, K consecutive completions per record.

    Returns:
        Per job the ``[B * K]`` raw rewards, or ``None`` where the task's reward is not a reward model (its
        :meth:`TaskScorer.rewards` computes them). Tasks whose reward is the same loaded model with the same
        settings are scored in one batch, together with the gold baselines a_bar their caches still lack;
        those are stored in the caches, so :meth:`TaskScorer.rewards` finds them. The scores are those of
        separate calls: a reward model scores each sequence alone, whatever else is in the batch.
    """
    from cgpo.reward_models import RewardModel

    out: list[torch.Tensor | None] = [None] * len(jobs)
    shared: dict[tuple[int, Any], list[int]] = {}
    for i, (scorer, _, _) in enumerate(jobs):
        if isinstance(scorer.reward_fn, RewardModel):
            shared.setdefault((id(scorer.reward_fn.model), scorer.reward_fn.settings), []).append(i)
    for members in shared.values():
        prompts: list[str] = []
        completions: list[str] = []
        spans, baselines = [], []
        for i in members:
            scorer, records, texts = jobs[i]
            k = len(texts) // len(records) if records else 0
            start = len(prompts)
            prompts += [r.message for r in records for _ in range(k)]
            completions += list(texts)
            spans.append((i, start, len(prompts)))
            for message, gold in scorer.missing_reference_baselines(records):
                baselines.append((scorer, message, gold, len(prompts)))
                prompts.append(message)
                completions.append(gold)
        scores = jobs[members[0]][0].reward_fn.score(prompts, completions)
        for i, start, end in spans:
            out[i] = scores[start:end].clone()
        for scorer, message, gold, index in baselines:
            scorer.baselines.put_reward(message, gold, scorer.reward_identity, float(scores[index]))
    return out
