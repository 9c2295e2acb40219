"""Use cgpo judges from TRL: a binary-judge adapter and a GRPO reward-function adapter.

* :class:`TRLBinaryJudge` has the signature of TRL's former ``BaseBinaryJudge`` (TRL PR #2159, removed from
  TRL in v1.1.0): ``judge(prompts, completions, gold_completions=None, shuffle_order=True) -> list[int]``,
  values 1 satisfied, 0 violated, -1 the judge failed.
* :class:`GRPORewardFunction` is a reward function in TRL's calling convention (``GRPOTrainer``,
  ``RLOOTrainer``, ``OnlineDPOTrainer``): ``f(prompts=..., completions=..., completion_ids=...,
  **dataset_columns, trainer_state=..., log_extra=..., log_metric=...) -> list[float | None]``.

Both wrap a :class:`cgpo.judging.Judge`, a :class:`cgpo.judging.MixtureOfJudges` or a mapping
``{label: Judge}`` (made into a mixture: the Kleene AND, any 0 -> 0, else any -1 -> -1, else 1).

Example::

    from trl import GRPOConfig, GRPOTrainer
    from cgpo.adapters import GRPORewardFunction
    from cgpo_judges.math import MathJudge

    reward = GRPORewardFunction(MathJudge(answer_format="gsm8k"))   # dataset column `answer` -> metadata
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], args=GRPOConfig(...), train_dataset=dataset)

Nothing here imports TRL: the adapters only follow its calling conventions.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cgpo.judging import FAILED, SATISFIED, VIOLATED, Judge, MixtureOfJudges, Verdict

JudgeLike = Judge | MixtureOfJudges | Mapping[str, Judge]

#: Keyword arguments TRL adds to every reward-function call that are not dataset columns.
TRL_RESERVED_KWARGS = frozenset({"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"})


def judge_label(judge: Judge) -> str:
    """A metric label from the class name: ``MathJudge`` -> ``math``, ``FalseRefusalJudge`` -> ``false_refusal``."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(judge).__name__).lower()  # IFEvalJudge -> ifeval_judge
    return name.removesuffix("_judge") or name


def as_mixture(judge: JudgeLike) -> MixtureOfJudges:
    """A judge, a mixture or ``{label: judge}`` as a :class:`MixtureOfJudges` (one judge: see :func:`judge_label`)."""
    if isinstance(judge, MixtureOfJudges):
        return judge
    if isinstance(judge, Judge):
        return MixtureOfJudges({judge_label(judge): judge})
    if isinstance(judge, Mapping) and judge and all(isinstance(j, Judge) for j in judge.values()):
        return MixtureOfJudges(judge)
    raise TypeError(f"expected a cgpo Judge, a MixtureOfJudges or a non-empty {{label: Judge}} mapping, got {judge!r}")


def _combined_reason(per_judge: Mapping[str, list[Verdict]], i: int, value: int) -> str:
    """The reason of the mixture's value for sample ``i``: the first judge that decided it."""
    if value == SATISFIED:
        return ""
    for label, verdicts in per_judge.items():
        if verdicts[i].value == value:
            return f"{label}: {verdicts[i].reason}"
    return ""


class TRLBinaryJudge:
    r"""A cgpo judge (or mixture) behind TRL's binary-judge interface.

    Args:
        judge: A judge, a mixture, or ``{label: judge}``.
        gold_key: Metadata key that receives ``gold_completions[i]`` (default ``answer``, which the math and
            factuality judges read).
        close_judges: Whether :meth:`close` also closes the wrapped judges (default: yes, the adapter owns
            them).

    Example::

        judge = TRLBinaryJudge(MathJudge(answer_format="gsm8k"))
        judge.judge(["What is 3 * 4?"], ["3 * 4 = 12\n#### 12"], gold_completions=["12"])   # -> [1]
    """

    def __init__(self, judge: JudgeLike, *, gold_key: str = "answer", close_judges: bool = True) -> None:
        self.mixture = as_mixture(judge)
        self.gold_key = gold_key
        self.close_judges = close_judges

    def judge(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        gold_completions: Sequence[Any] | None = None,
        shuffle_order: bool = True,
        *,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Judge each (prompt, completion): 1 satisfied, 0 violated, -1 a judge failed.

        Args:
            prompts: One prompt per completion.
            completions: The completions to judge.
            gold_completions: Optional gold answer per sample, passed to the judges as
                ``metadata[gold_key]``.
            shuffle_order: Accepted for signature compatibility and ignored: a binary judge sees one
                completion at a time, so there is no order to shuffle.
            metadata: Further per-sample metadata (tests, instruction ids, ...), merged under the gold answer.

        Raises:
            ValueError: the sequences have different lengths.
        """
        del shuffle_order  # meaningful for pairwise judges only
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        if gold_completions is not None and len(gold_completions) != n:
            raise ValueError(f"{len(gold_completions)} gold completions for {n} completions")
        if metadata is not None and len(metadata) != n:
            raise ValueError(f"{len(metadata)} metadata records for {n} completions")
        meta = [dict(m) for m in metadata] if metadata is not None else [{} for _ in range(n)]
        if gold_completions is not None:
            for record, gold in zip(meta, gold_completions, strict=True):
                record[self.gold_key] = gold
        return list(self.mixture(list(prompts), list(completions), meta).verdicts)

    def close(self) -> None:
        """Close the wrapped judges (worker pools, HTTP sessions), if this adapter owns them."""
        if self.close_judges:
            self.mixture.close()


def message_text(content: Any) -> str:
    """Text of a chat message's ``content``: a string, or a list of parts (``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            part.get("text", "") if isinstance(part, Mapping) else str(part)
            for part in content
            if not isinstance(part, Mapping) or part.get("type", "text") == "text"
        )
    return "" if content is None else str(content)


def last_user_message(prompt: Any) -> str:
    """The prompt as judges see it: a plain string as is; for a conversation, the last user turn.

    Judges compare a completion with the request it answers (IFEval's ``repeat_prompt``, safety and
    false-refusal judges), and that request is the last user message; earlier turns and the system
    prompt are context. A conversation without a user turn gives its last message.
    """
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return message_text(messages[-1].get("content")) if messages else ""


def completion_text(completion: Any) -> str:
    """A completion as text.

    A string stays as is; TRL's conversational form (a list of messages) gives the concatenated text of its
    assistant messages (of all messages if none has the assistant role).
    """
    if isinstance(completion, str):
        return completion
    messages = list(completion)
    assistant = [m for m in messages if m.get("role") == "assistant"]
    return "".join(message_text(m.get("content")) for m in (assistant or messages))


class GRPORewardFunction:
    """A judge (or mixture) as a TRL reward function: 1 -> ``satisfied``, 0 -> ``violated``, -1 -> ``failed``.

    TRL calls it with keyword arguments: ``prompts`` and ``completions`` (strings, or message lists for
    conversational datasets), ``completion_ids``, one list per dataset column (each repeated for the
    prompt's ``num_generations`` completions), and ``trainer_state``, ``log_extra`` and ``log_metric``.
    Every dataset column becomes per-sample metadata under its own name (and, through ``column_map``,
    under the names the judges expect), so a column ``answer`` reaches the math judge as
    ``metadata["answer"]``.

    A -1 (the judge could not decide) returns ``failed``, ``None`` by default. TRL turns ``None`` into NaN
    and skips it: a NaN reward is left out of the group's mean and standard deviation, and a completion
    for which *every* reward function returned ``None`` gets advantage 0, so it neither pushes nor pulls
    the policy. That is CGPO's default policy for -1 ("leave the sample out"). Set ``failed=0.0`` to count
    failures as violations instead. When this function is one of several reward functions, TRL sums the
    others for that completion (``nansum``), so the judge's silence does not zero the sample.

    When TRL passes ``log_metric``, each call logs ``<name>/satisfied_rate`` and, per judge,
    ``<name>/<label>/violation_rate`` and ``.../failure_rate`` (TRL averages them per logging step), and
    ``log_extra`` receives the reason of each non-satisfied verdict for the completions table.

    Args:
        judge: A judge, a mixture, or ``{label: judge}``.
        name: The ``__name__`` TRL logs rewards under (``rewards/<name>/mean``); default ``cgpo_<label>``
            for one judge, ``cgpo_judges`` for a mixture.
        satisfied: Reward for 1.
        violated: Reward for 0.
        failed: Reward for -1; ``None`` means "not applicable" to TRL.
        column_map: ``{metadata_key: dataset_column}`` aliases, e.g. ``{"answer": "solution"}``.
        prompt_text: How a conversational prompt becomes the judge's prompt string (default: the last user
            message, :func:`last_user_message`).
        close_judges: Whether :meth:`close` also closes the wrapped judges.

    Example::

        judges = {"math": MathJudge(answer_format="gsm8k"), "format": FormatJudge(max_words=200)}
        reward = GRPORewardFunction(judges, failed=None)
        reward(prompts=["2+2?"], completions=["#### 4"], answer=["4"])   # -> [1.0] if both judges pass
    """

    def __init__(
        self,
        judge: JudgeLike,
        *,
        name: str | None = None,
        satisfied: float = 1.0,
        violated: float = 0.0,
        failed: float | None = None,
        column_map: Mapping[str, str] | None = None,
        prompt_text: Callable[[Any], str] = last_user_message,
        close_judges: bool = True,
    ) -> None:
        self.mixture = as_mixture(judge)
        labels = list(self.mixture.judges)
        self.__name__ = name or (f"cgpo_{labels[0]}" if len(labels) == 1 else "cgpo_judges")
        self.rewards: dict[int, float | None] = {SATISFIED: satisfied, VIOLATED: violated, FAILED: failed}
        self.column_map = dict(column_map or {})
        self.prompt_text = prompt_text
        self.close_judges = close_judges

    def metadata_from_columns(self, n: int, columns: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per-sample metadata from TRL's per-column lists (everything but TRL's own keyword arguments).

        Raises:
            ValueError: a column whose length is not the number of completions, or a ``column_map`` column
                that the dataset does not have.
        """
        meta: list[dict[str, Any]] = [{} for _ in range(n)]
        for key, values in columns.items():
            if key in TRL_RESERVED_KWARGS or not isinstance(values, list | tuple):
                continue  # TRL's trainer_state, callbacks, and anything that is not a per-sample column
            if len(values) != n:
                raise ValueError(f"{self.__name__}: column '{key}' has {len(values)} values for {n} completions")
            for record, value in zip(meta, values, strict=True):
                record[key] = value
        for meta_key, column in self.column_map.items():
            if column not in columns:
                raise ValueError(
                    f"{self.__name__}: column_map maps '{meta_key}' to column '{column}', which this call lacks; "
                    f"columns: {', '.join(k for k in columns if k not in TRL_RESERVED_KWARGS) or 'none'}"
                )
            for record in meta:
                record[meta_key] = record[column]
        return meta

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        completion_ids: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """Judge the batch and map each verdict to a reward; see the class docstring for the arguments."""
        if completions is None:
            raise TypeError(f"{self.__name__} needs completions=")
        n = len(completions)
        if prompts is None:
            prompts = [""] * n
        if len(prompts) != n:
            raise ValueError(f"{self.__name__}: {len(prompts)} prompts for {n} completions")
        metadata = self.metadata_from_columns(n, kwargs)
        prompt_texts = [self.prompt_text(p) for p in prompts]
        texts = [completion_text(c) for c in completions]
        result = self.mixture(prompt_texts, texts, metadata)
        self._log(result.verdicts, result.per_judge, kwargs)
        return [self.rewards[v] for v in result.verdicts]

    def _log(self, values: list[int], per_judge: Mapping[str, list[Verdict]], kwargs: Mapping[str, Any]) -> None:
        n = len(values)
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if n == 0:
            return
        if callable(log_metric):
            log_metric(f"{self.__name__}/satisfied_rate", values.count(SATISFIED) / n)
            for label, verdicts in per_judge.items():
                counts = Counter(v.value for v in verdicts)
                log_metric(f"{self.__name__}/{label}/violation_rate", counts[VIOLATED] / n)
                log_metric(f"{self.__name__}/{label}/failure_rate", counts[FAILED] / n)
        if callable(log_extra):
            log_extra(f"{self.__name__}_reason", [_combined_reason(per_judge, i, v) for i, v in enumerate(values)])

    def close(self) -> None:
        """Close the wrapped judges (worker pools, HTTP sessions), if this adapter owns them."""
        if self.close_judges:
            self.mixture.close()
