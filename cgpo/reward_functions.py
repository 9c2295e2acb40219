"""Built-in named reward functions (``reward.function`` in a task YAML), registered like plugins.

Each returns a raw reward r(s, a) per sample, calibrated like a reward model's score (eq. 5) when the task
sets a baseline. They are cheap, deterministic and need no model:

* ``length_penalty``: 0 inside a length range, negative outside it, proportional to the distance.
* ``repetition_penalty``: minus the fraction of repeated n-grams: the degenerate repetition that reward
  models over-score (CGPO paper Table 6's repeated ``frac{12}{36}``; RAFT's ``#`` runs).
* ``judge_pass``: 1.0 when the listed judges are all satisfied, else 0.0 (or the fraction satisfied),
  for a reward made of rule checks (e.g. math correctness) while other judges act as constraints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from cgpo.rewards import RewardFunction
from cgpo.schema import Invalid, SchemaError

Unit = Literal["words", "characters", "lines"]
_WORD = re.compile(r"\S+")


def _units(text: str, unit: str) -> list[str]:
    if unit == "words":
        return _WORD.findall(text)
    if unit == "lines":
        return [line for line in text.splitlines() if line.strip()]
    return list(text)


@dataclass(frozen=True)
class LengthPenaltyParams:
    """Params of ``length_penalty``.

    Args:
        max_length: Longest length without penalty.
        min_length: Shortest length without penalty.
        unit: ``words`` (whitespace-separated), ``characters`` or non-empty ``lines``.
        scale: Reward lost per ``max_length`` units outside the range.
    """

    max_length: int
    min_length: int = 0
    unit: Unit = "words"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise Invalid("max_length", f"must be >= 1, got {self.max_length}")
        if not 0 <= self.min_length <= self.max_length:
            raise Invalid("min_length", f"must be in [0, max_length={self.max_length}], got {self.min_length}")
        if not self.scale > 0:
            raise Invalid("scale", f"must be > 0, got {self.scale}")


class LengthPenalty(RewardFunction):
    """r = -scale * (units outside [min_length, max_length]) / max_length; 0 inside the range."""

    Params = LengthPenaltyParams
    description: ClassVar[str] = "0 inside a length range, linearly negative outside it"

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        """Length penalty of each completion (prompts and metadata are unused)."""
        p: LengthPenaltyParams = self.params
        out = []
        for completion in completions:
            n = len(_units(completion, p.unit))
            outside = max(0, n - p.max_length) + max(0, p.min_length - n)
            out.append(-p.scale * outside / p.max_length)
        return out


@dataclass(frozen=True)
class RepetitionPenaltyParams:
    """Params of ``repetition_penalty``.

    Args:
        n: n-gram size.
        unit: n-grams of ``words`` or ``characters``.
        scale: Reward of a completion made only of repeats is ``-scale``.
    """

    n: int = 3
    unit: Literal["words", "characters"] = "words"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise Invalid("n", f"must be >= 1, got {self.n}")
        if not self.scale > 0:
            raise Invalid("scale", f"must be > 0, got {self.scale}")


class RepetitionPenalty(RewardFunction):
    """r = -scale * (1 - distinct n-grams / n-grams); 0 for a text with no repeated n-gram or under n units."""

    Params = RepetitionPenaltyParams
    description: ClassVar[str] = "minus the fraction of repeated n-grams (degenerate repetition)"

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        """Repetition penalty of each completion (prompts and metadata are unused)."""
        p: RepetitionPenaltyParams = self.params
        out = []
        for completion in completions:
            units = _units(completion, p.unit)
            grams = [tuple(units[i : i + p.n]) for i in range(len(units) - p.n + 1)]
            out.append(-p.scale * (1 - len(set(grams)) / len(grams)) if grams else 0.0)
        return out


@dataclass(frozen=True)
class JudgeRef:
    """One judge of ``judge_pass``: a registered name (or ``module:Class``) and its params."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JudgePassParams:
    """Params of ``judge_pass``.

    Args:
        judges: The judges whose verdicts make the reward (validated against each judge's ``Params``).
        mode: ``all``: 1.0 when every judge is satisfied, else 0.0 (AND, as the mixture); ``fraction``:
            the mean over judges of their scores.
        failure_reward: Score of a judge that failed (-1). 0.0 by default; a judge failure is not the
            policy's fault, so tasks that care should also exclude such samples through the mixture.
    """

    judges: list[JudgeRef]
    mode: Literal["all", "fraction"] = "all"
    failure_reward: float = 0.0

    def __post_init__(self) -> None:
        from cgpo.judging import JUDGES
        from cgpo.registry import RegistryError

        if not self.judges:
            raise Invalid("judges", "must list at least one judge")
        for i, ref in enumerate(self.judges):
            try:
                JUDGES.get(ref.name).parse_params(ref.params)
            except RegistryError as exc:
                raise Invalid(("judges", i, "name"), str(exc)) from None
            except SchemaError as exc:
                raise Invalid(("judges", i, "params", *exc.path), exc.reason) from None


class JudgePass(RewardFunction):
    """Reward from judges: 1.0 if all listed judges are satisfied, else 0.0 (or the fraction satisfied)."""

    Params = JudgePassParams
    description: ClassVar[str] = "1.0 when the listed judges pass, else 0.0 (or the fraction that pass)"

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._judges: list[Any] | None = None  # built on first call: some judges start worker pools

    def _build(self) -> list[Any]:
        if self._judges is None:
            from cgpo.judging import JUDGES

            judges = []
            for ref in self.params.judges:
                cls = JUDGES.get(ref.name)
                judges.append(cls(cls.parse_params(ref.params)))
            self._judges = judges
        return self._judges

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        """Run the judges on the batch and turn their verdicts into rewards."""
        p: JudgePassParams = self.params
        columns = [judge(prompts, completions, metadata) for judge in self._build()]
        out = []
        for i in range(len(completions)):
            scores = [{1: 1.0, 0: 0.0}.get(col[i].value, p.failure_reward) for col in columns]
            if p.mode == "fraction":
                out.append(sum(scores) / len(scores))
            elif any(col[i].value == 0 for col in columns):
                out.append(0.0)  # a known violation wins over a failure, as in the mixture's Kleene AND
            elif any(col[i].value == -1 for col in columns):
                out.append(p.failure_reward)
            else:
                out.append(1.0)
        return out

    def close(self) -> None:
        """Release the judges' worker pools or models."""
        for judge in self._judges or []:
            judge.close()
        self._judges = None
