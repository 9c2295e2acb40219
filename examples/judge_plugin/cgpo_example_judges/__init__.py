"""Example cgpo judge plugin: two rule judges, registered through the ``cgpo.judges`` entry-point group.

* ``word_budget`` (:class:`WordBudgetJudge`): the completion has between ``min_words`` and ``max_words``
  words; a sample's metadata may carry its own budget (``word_budget: 40``).
* ``no_shouting`` (:class:`NoShoutingJudge`): at most ``max_upper_ratio`` of the completion's cased letters
  are upper-case, so "Use the GPU API" passes and "STOP DOING THAT" does not.

The module imports only ``cgpo.judging`` (which imports nothing heavy), as ``cgpo list`` and ``cgpo validate``
import judge classes to read their ``Params``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cgpo.judging import Judge, Verdict, failed, satisfied, violated
from cgpo.schema import Invalid

__all__ = ["NoShoutingJudge", "NoShoutingParams", "WordBudgetJudge", "WordBudgetParams"]


@dataclass(frozen=True)
class WordBudgetParams:
    """Settings of ``word_budget``.

    Args:
        max_words: Most words allowed (words are maximal runs of non-whitespace).
        min_words: Fewest words required (0: an empty completion is fine).
        budget_key: Metadata key that overrides ``max_words`` per sample.
    """

    max_words: int = 100
    min_words: int = 0
    budget_key: str = "word_budget"

    def __post_init__(self) -> None:
        if self.min_words < 0:
            raise Invalid("min_words", f"must be >= 0, got {self.min_words}")
        if self.max_words < self.min_words:
            raise Invalid("max_words", f"must be >= min_words ({self.min_words}), got {self.max_words}")


class WordBudgetJudge(Judge):
    """Satisfied when the completion's word count is within budget.

    A per-sample budget that is not a non-negative integer is a data error, not the policy's fault, so it
    gives -1 (the judge cannot decide) rather than 0.
    """

    Params = WordBudgetParams
    kind = "rule"
    description = "completion length within a word budget (per-sample override: metadata word_budget)"

    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        p = self.params
        out = []
        for completion, meta in zip(completions, metadata, strict=True):
            budget = meta.get(p.budget_key, p.max_words)
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
                out.append(failed(f"metadata {p.budget_key!r} must be a non-negative integer, got {budget!r}"))
                continue
            words = len(completion.split())
            if words > budget:
                out.append(violated(f"{words} words, over the budget of {budget}"))
            elif words < p.min_words:
                out.append(violated(f"{words} words, under the minimum of {p.min_words}"))
            else:
                out.append(satisfied(f"{words} words"))
        return out


@dataclass(frozen=True)
class NoShoutingParams:
    """Settings of ``no_shouting``.

    Args:
        max_upper_ratio: Largest allowed share of upper-case letters among cased letters, in [0, 1].
        min_letters: Completions with fewer cased letters are never shouting ("OK", "USA").
    """

    max_upper_ratio: float = 0.5
    min_letters: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_upper_ratio <= 1.0:
            raise Invalid("max_upper_ratio", f"must be in [0, 1], got {self.max_upper_ratio}")
        if self.min_letters < 1:
            raise Invalid("min_letters", f"must be >= 1, got {self.min_letters}")


class NoShoutingJudge(Judge):
    """Violated when too many of the completion's cased letters are upper-case (caseless scripts don't count)."""

    Params = NoShoutingParams
    kind = "rule"
    description = "no all-caps shouting (share of upper-case letters)"

    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        out = []
        for completion in completions:
            upper = sum(1 for ch in completion if ch.isupper())
            cased = upper + sum(1 for ch in completion if ch.islower())
            if cased < self.params.min_letters:
                out.append(satisfied(f"only {cased} cased letters"))
                continue
            ratio = upper / cased
            if ratio > self.params.max_upper_ratio:
                out.append(
                    violated(f"{ratio:.0%} of letters are upper-case (limit {self.params.max_upper_ratio:.0%})")
                )
            else:
                out.append(satisfied(f"{ratio:.0%} upper-case"))
        return out
