"""The judge contract and the mixture of judges (CGPO paper §4.1.4; cgpo-algorithms.md §3).

A judge maps a batch of (prompt, completion, metadata) to one :class:`Verdict` per sample:

* ``1`` (``SATISFIED``): the completion satisfies the constraint;
* ``0`` (``VIOLATED``): the policy did something wrong;
* ``-1`` (``FAILED``): the judge itself could not decide (timeout, crashed worker, unavailable sandbox,
  unparseable LLM output, unparseable gold answer). An infrastructure failure is never scored 0: that
  would push the policy away from responses that did nothing wrong.

A task's mixture is a Kleene AND over its judges: any 0 gives 0, otherwise any -1 gives -1, otherwise 1.
(The paper's Algorithm 1 writes OR, a typo; TRL's old ``AllTrueJudge`` let -1 win over 0, which hides
known violations.)

Judges take their settings from a frozen ``Params`` dataclass, validated from the task YAML by
:func:`cgpo.schema.build` before anything heavy loads, keep no state between calls, and may be called
from any thread.
"""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

from cgpo.registry import Registry
from cgpo.schema import Configurable

SATISFIED = 1
VIOLATED = 0
FAILED = -1
VERDICT_VALUES = (SATISFIED, VIOLATED, FAILED)

JudgeKind = Literal["rule", "llm"]
_J = TypeVar("_J", bound="Judge")


class Verdict(NamedTuple):
    """One judge's decision on one sample.

    Attributes:
        value: 1 satisfied, 0 violated, -1 the judge failed.
        reason: Short human-readable reason (always set for 0 and -1).
        probability: P(satisfied) where the judge has one (LLM judges), else ``None``.
    """

    value: int
    reason: str = ""
    probability: float | None = None


def satisfied(reason: str = "", probability: float | None = None) -> Verdict:
    return Verdict(SATISFIED, reason, probability)


def violated(reason: str, probability: float | None = None) -> Verdict:
    return Verdict(VIOLATED, reason, probability)


def failed(reason: str) -> Verdict:
    return Verdict(FAILED, reason, None)


@dataclass(frozen=True)
class NoParams:
    """Params of a judge that takes none: any key in the YAML is rejected."""


class JudgeConfigError(ValueError):
    """A judge's parameters or a sample's metadata are unusable as configured (a user mistake)."""


class Judge(Configurable, ABC):
    """Base class of every judge, built-in or plugin.

    Subclasses set ``Params`` (a frozen dataclass; its ``__post_init__`` may raise
    :class:`cgpo.schema.Invalid`), ``kind`` and ``required_metadata``, and implement :meth:`judge_batch`.
    Heavy imports (sympy, torch, model loading) belong in ``__init__`` or later, never at module level,
    so that listing and validating stay fast.

    Callers use ``judge(prompts, completions, metadata)``, which guarantees the contract even when
    ``judge_batch`` raises or misbehaves: one verdict per sample, each value in {1, 0, -1}.
    """

    Params: ClassVar[type] = NoParams
    kind: ClassVar[JudgeKind] = "rule"
    #: Metadata keys every sample must carry (e.g. ``("answer",)`` for the math judge).
    required_metadata: ClassVar[tuple[str, ...]] = ()
    #: Short description shown by ``cgpo list judges``.
    description: ClassVar[str] = ""

    @abstractmethod
    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        """Judge a batch. ``len(prompts) == len(completions) == len(metadata)``; return one verdict each."""

    @classmethod
    def metadata_problem(cls, metadata: Mapping[str, Any]) -> str | None:
        """Why this judge could not use one sample's metadata (every completion would be judged -1), or None.

        ``cgpo validate`` calls it on every data row, without building the judge: keep it cheap and free of
        heavy imports. The default checks that the ``required_metadata`` keys are present and not null;
        judges whose metadata has a shape (test lists, gold answers) override it.
        """
        missing = [key for key in cls.required_metadata if metadata.get(key) is None]
        if missing:
            return f"metadata {', '.join(repr(k) for k in missing)} missing or null"
        return None

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[Verdict]:
        n = len(completions)
        if len(prompts) != n or (metadata is not None and len(metadata) != n):
            raise ValueError(
                f"{type(self).__name__}: {len(prompts)} prompts, {n} completions and "
                f"{'no' if metadata is None else len(metadata)} metadata records; they must match"
            )
        meta: Sequence[Mapping[str, Any]] = metadata if metadata is not None else [{}] * n
        try:
            verdicts = list(self.judge_batch(prompts, completions, meta))
        except Exception as exc:  # noqa: BLE001 - a judge's own failure is -1 for the batch, never 0
            reason = f"{type(self).__name__} raised {type(exc).__name__}: {exc}"[:500]
            return [failed(reason)] * n
        if len(verdicts) != n:
            return [failed(f"{type(self).__name__} returned {len(verdicts)} verdicts for {n} samples")] * n
        return [_coerce(v, type(self).__name__) for v in verdicts]

    def warm_up(self) -> None:
        """Start what the first call would otherwise start (worker processes, imports), before training.

        The trainer calls it once in setup so that a step never pays a judge's start-up cost. Default: nothing.
        """

    def close(self) -> None:
        """Release worker processes, HTTP sessions or models. Safe to call twice."""

    def __enter__(self: _J) -> _J:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _coerce(verdict: Any, judge_name: str) -> Verdict:
    if isinstance(verdict, Verdict) and verdict.value in VERDICT_VALUES:
        return verdict
    if isinstance(verdict, int) and not isinstance(verdict, bool) and verdict in VERDICT_VALUES:
        return Verdict(verdict)
    return failed(f"{judge_name} returned {verdict!r}, not a verdict in {{1, 0, -1}}")


def _check_judge(obj: Any) -> None:
    if not (inspect.isclass(obj) and issubclass(obj, Judge)):
        raise TypeError(f"{obj!r} is not a subclass of cgpo.judging.Judge")
    if not (dataclasses.is_dataclass(obj.Params) and isinstance(obj.Params, type)):
        raise TypeError(f"{obj.__name__}.Params must be a dataclass")
    if obj.kind not in ("rule", "llm"):
        raise TypeError(f"{obj.__name__}.kind must be 'rule' or 'llm', not {obj.kind!r}")


#: Judge classes by name: built-ins and plugins from the ``cgpo.judges`` entry-point group.
JUDGES: Registry[type[Judge]] = Registry("judge", "cgpo.judges", check=_check_judge)


def combine(values: Sequence[int]) -> int:
    """Kleene AND of one sample's verdict values: any 0 -> 0, else any -1 -> -1, else 1."""
    if VIOLATED in values:
        return VIOLATED
    if FAILED in values:
        return FAILED
    return SATISFIED


@dataclass(frozen=True)
class MixtureResult:
    """Verdicts of a task's mixture on one batch of N samples.

    Attributes:
        verdicts: Combined value per sample, length N.
        per_judge: Each judge's verdicts by its label (the judge name, or the task YAML's ``label``).
    """

    verdicts: list[int]
    per_judge: dict[str, list[Verdict]]


class MixtureOfJudges:
    """A task's judges, combined with AND. Judges run one after another on the whole batch.

    Args:
        judges: Judges by label; labels are the metric names (``task/<t>/judge/<label>/...``).
    """

    def __init__(self, judges: Mapping[str, Judge]) -> None:
        self.judges = dict(judges)

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> MixtureResult:
        per_judge = {label: judge(prompts, completions, metadata) for label, judge in self.judges.items()}
        columns = list(per_judge.values())
        verdicts = [combine([col[i].value for col in columns]) for i in range(len(completions))]
        return MixtureResult(verdicts=verdicts, per_judge=per_judge)

    def warm_up(self) -> None:
        """:meth:`Judge.warm_up` of every judge of the mixture."""
        for judge in self.judges.values():
            judge.warm_up()

    def close(self) -> None:
        for judge in self.judges.values():
            judge.close()


def judge_function(
    name: str | None = None, *, kind: JudgeKind = "rule", register: bool = True
) -> Callable[[Callable[..., Any]], type[Judge]]:
    """Turn a per-sample function into a judge class, for notebooks and quick experiments.

    The function takes ``(prompt, completion, metadata)`` (or ``(prompt, completion, metadata, **params)``)
    and returns a verdict: ``True``/``False``, ``1``/``0``/``-1``, or ``(value, reason)``. An exception
    becomes -1 with its message. With ``register=True`` the class is registered under ``name``
    (default: the function's name), so task YAMLs can name it.

    Example::

        @judge_function("no_shouting")
        def no_shouting(prompt, completion, metadata):
            return (0, "all caps") if completion.isupper() else 1
    """

    def decorator(fn: Callable[..., Any]) -> type[Judge]:
        judge_name = name or fn.__name__
        takes_params = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())

        class FunctionJudge(Judge):
            Params = _AnyParams if takes_params else NoParams
            description = (fn.__doc__ or "").strip().split("\n")[0]

            @classmethod
            def parse_params(cls, data: Mapping[str, Any], path: tuple[str | int, ...] = ()) -> Any:
                if takes_params:
                    return _AnyParams(values=dict(data))
                return super().parse_params(data, path)

            def judge_batch(
                self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
            ) -> list[Verdict]:
                extra = self.params.values if takes_params else {}
                out = []
                for p, c, m in zip(prompts, completions, metadata, strict=True):
                    try:
                        out.append(_from_plain(fn(p, c, m, **extra)))
                    except Exception as exc:  # noqa: BLE001 - the user's function failing is -1, never 0
                        out.append(failed(f"{judge_name} raised {type(exc).__name__}: {exc}"[:500]))
                return out

        FunctionJudge.kind = kind
        FunctionJudge.__name__ = FunctionJudge.__qualname__ = f"{fn.__name__}_judge"
        FunctionJudge.__module__ = fn.__module__
        if register:
            JUDGES.register(judge_name, FunctionJudge)
        return FunctionJudge

    return decorator


@dataclass(frozen=True)
class _AnyParams:
    """Free-form params of a function judge that accepts ``**params``."""

    values: dict[str, Any] = dataclasses.field(default_factory=dict)


def _from_plain(result: Any) -> Verdict:
    if isinstance(result, Verdict):
        return result
    if isinstance(result, bool):
        return Verdict(SATISFIED if result else VIOLATED)
    if isinstance(result, tuple) and len(result) == 2:
        value, reason = result
        return Verdict(int(value), str(reason))
    return Verdict(int(result))
