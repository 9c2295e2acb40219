"""IFEval judge: verifiable instruction following (Zhou et al. 2023), prompt-level, strict or loose.

Each sample carries IFEval's own data format in its metadata: ``instruction_id_list`` (list of ids such as
``"punctuation:no_comma"``) and ``kwargs`` (one dict per id, same order). A task may instead fix the
instructions for all its prompts in ``params`` (``instruction_id_list``/``kwargs``); those are validated when
the judge is built, and then take precedence over the metadata.

Verdict: 1 when every instruction is followed, else 0 (the reason names the failed ids and lists each
instruction's result); -1 when the sample's instructions are unusable (unknown id, missing or invalid kwarg,
mismatched lengths), which is a data problem and not the policy's fault.

Modes, as IFEval's ``evaluation_lib``:

* ``strict``: each instruction is checked on the response as is; an empty (whitespace-only) response
  violates every instruction.
* ``loose``: an instruction is followed when any of eight variants follows it: the response, the response
  without its first line, without its last line, without both (these three stripped), and each of those
  four with every ``*`` removed. Empty variants are skipped.

The checkers (:mod:`cgpo_judges._ifeval_checks`) and the text utilities (:mod:`cgpo_judges._ifeval_text`)
re-implement the reference behaviour without NLTK; language identification is langdetect's, seeded with 0
(:mod:`cgpo_judges._ifeval_langdetect`). On the 541 IFEval prompts with GPT-4's responses the strict and loose
verdicts equal the reference's (``tests/judges/test_ifeval.py``).

Language detection is the largest cost, so a call detects in batches: every check runs as far as the languages
already detected allow, then all the texts the checks are waiting for are detected at once
(:func:`~cgpo_judges._ifeval_langdetect.detect_many`) and the checks resume (:class:`_Progress`): one round in
strict mode, at most a few in loose mode. The checks see the same languages and try the same variants as
one-by-one evaluation. The judge keeps no state between calls: checkers are immutable closures and the
language cache lives for one call, so one instance can be shared between threads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from cgpo.judging import Judge, Verdict, failed, satisfied, violated
from cgpo.schema import Invalid
from cgpo_judges._ifeval_checks import INSTRUCTIONS, Check, KwargError, build_check

__all__ = ["IFEvalJudge", "IFEvalParams", "instruction_results"]

Mode = Literal["strict", "loose"]


@dataclass(frozen=True)
class IFEvalParams:
    """Settings of :class:`IFEvalJudge`.

    Attributes:
        mode: ``strict`` (the response as is) or ``loose`` (any of IFEval's eight response variants).
        instruction_id_list: Instructions for every prompt of the task; ``None`` reads them per sample from
            the metadata key of the same name.
        kwargs: One kwargs dict per id in ``instruction_id_list`` (``None`` values are ignored). Omit it only
            when no instruction takes arguments.
        undetected_language: Verdict of a language instruction when langdetect finds no language features (no
            letters at all). The reference counts it as followed (``satisfied``); the default counts it as a
            violation, so that a response without words cannot satisfy "answer in Hindi".
    """

    mode: Mode = "strict"
    instruction_id_list: list[str] | None = None
    kwargs: list[dict[str, Any]] | None = None
    undetected_language: Literal["violated", "satisfied"] = "violated"

    def __post_init__(self) -> None:
        if self.instruction_id_list is None:
            if self.kwargs is not None:
                raise Invalid("kwargs", "given without instruction_id_list")
            return
        if not self.instruction_id_list:
            raise Invalid("instruction_id_list", "must name at least one instruction (or be left out)")
        for i, instruction_id in enumerate(self.instruction_id_list):
            if instruction_id not in INSTRUCTIONS:
                raise Invalid(("instruction_id_list", i), f"unknown IFEval instruction id {instruction_id!r}")
        kwargs = self.kwargs if self.kwargs is not None else [{}] * len(self.instruction_id_list)
        if len(kwargs) != len(self.instruction_id_list):
            raise Invalid("kwargs", f"has {len(kwargs)} entries for {len(self.instruction_id_list)} instruction ids")
        for i, (instruction_id, kw) in enumerate(zip(self.instruction_id_list, kwargs, strict=True)):
            try:
                build_check(instruction_id, kw)
            except KwargError as exc:
                raise Invalid(("kwargs", i, exc.kwarg) if exc.kwarg else ("kwargs", i), str(exc)) from None


def _compile(ids: Any, kwargs: Any, undetected_passes: bool) -> tuple[list[str], list[Check]]:
    """Validate one instruction list and build its checkers; raises :class:`KwargError` or ``ValueError``."""
    if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"instruction_id_list must be a list of strings, got {ids!r}"[:300])
    if not ids:
        raise ValueError("instruction_id_list is empty")
    if kwargs is None:
        kwargs = [{}] * len(ids)
    if not isinstance(kwargs, list | tuple) or len(kwargs) != len(ids):
        raise ValueError(f"kwargs must be a list of {len(ids)} dicts, one per instruction id")
    checks = [build_check(i, kw, undetected_passes=undetected_passes) for i, kw in zip(ids, kwargs, strict=True)]
    return list(ids), checks


def _loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants, duplicates and empty ones removed (order kept; any-pass is order-free)."""
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    variants = [response, response.replace("*", ""), first, last, both]
    variants += [first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]
    return [v for v in dict.fromkeys(variants) if v.strip()]


class _Pending(Exception):
    """A check asked for the language of a text that has not been detected yet."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class _LanguageCache:
    """Language of each text, computed at most once per judge call (langdetect is the slow part)."""

    def __init__(self) -> None:
        self._seen: dict[str, str | None] = {}

    def prefetch(self, texts: Sequence[str]) -> None:
        """Detect several texts in one batch (:func:`~cgpo_judges._ifeval_langdetect.detect_many`)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._seen]
        if todo:
            from cgpo_judges._ifeval_langdetect import detect_many

            self._seen.update(zip(todo, detect_many(todo), strict=True))

    def known(self, text: str) -> str | None:
        """The language of an already detected text; raises :class:`_Pending` for any other text."""
        try:
            return self._seen[text]
        except KeyError:
            raise _Pending(text) from None

    def __call__(self, text: str) -> str | None:
        if text not in self._seen:
            from cgpo_judges._ifeval_langdetect import UndetectableLanguage, detect

            try:
                self._seen[text] = detect(text)
            except UndetectableLanguage:
                self._seen[text] = None
        return self._seen[text]


class _Progress:
    """One sample's instruction results while a judge call collects the languages its checks need.

    An instruction is followed when its check passes on some variant (the response in strict mode, IFEval's
    loose variants in loose mode), tried in order. A check that needs an undetected language stops at that
    variant; the call detects all such texts of the batch at once and resumes, so the checks see exactly the
    languages, and run on exactly the variants, that one-by-one evaluation would give them.
    """

    def __init__(self, ids: list[str], checks: list[Check], variants: list[str]) -> None:
        self.ids = ids
        self.checks = checks
        self.variants = variants
        self.results: list[bool | None] = [None] * len(checks)
        self._next = [0] * len(checks)  # per check: the variant to try next
        self._waited = [False] * len(checks)  # per check: whether it has waited for a language before

    def advance(self, language: Callable[[str], str | None], need: list[str]) -> bool:
        """Run every unresolved check as far as the known languages allow; True once all are resolved.

        Texts whose language a check is waiting for are appended to ``need``. A checker's own exception
        propagates (the caller turns it into -1 for this sample).
        """
        variants = self.variants
        for k, check in enumerate(self.checks):
            if self.results[k] is not None:
                continue
            j = self._next[k]
            try:
                while j < len(variants) and not check(variants[j], language):
                    j += 1
            except _Pending as pending:
                need.append(pending.text)
                if self._waited[k]:
                    # Waiting again: the check failed on a variant it had to wait for. Ask now for every text
                    # it would wait for on the later variants too, so that the rest takes one more round
                    # rather than one per variant (a text detected in vain costs less than a round).
                    need.extend(self._later_texts(check, j + 1, language))
                self._waited[k] = True
                self._next[k] = j
                continue
            self.results[k] = j < len(variants)
        return all(r is not None for r in self.results)

    def _later_texts(self, check: Check, start: int, language: Callable[[str], str | None]) -> list[str]:
        """Texts ``check`` would wait for on variants ``start``, ``start + 1``, ..., if each earlier one failed."""
        texts = []
        for variant in self.variants[start:]:
            try:
                check(variant, language)
            except _Pending as pending:
                texts.append(pending.text)
        return texts

    def verdict(self, mode: Mode) -> Verdict:
        follows = [bool(r) for r in self.results]
        detail = " ".join(f"{i}={int(f)}" for i, f in zip(self.ids, follows, strict=True))
        failed_ids = [i for i, f in zip(self.ids, follows, strict=True) if not f]
        if failed_ids:
            return violated(f"{mode}: not followed: {', '.join(failed_ids)} [{detail}]")
        return satisfied(f"{mode}: all {len(self.ids)} followed [{detail}]")


def _follow_list(response: str, checks: Sequence[Check], mode: Mode, language: _LanguageCache) -> list[bool]:
    if mode == "strict":
        if not response.strip():
            return [False] * len(checks)
        return [bool(check(response, language)) for check in checks]
    variants = _loose_variants(response)
    return [any(check(v, language) for v in variants) for check in checks]


def instruction_results(
    response: str,
    instruction_id_list: Sequence[str],
    kwargs: Sequence[Mapping[str, Any] | None] | None,
    mode: Mode = "strict",
    undetected_language: Literal["violated", "satisfied"] = "violated",
) -> list[bool]:
    """Whether ``response`` follows each instruction (IFEval's ``follow_instruction_list``).

    Raises:
        KwargError: an unknown id or a missing/invalid kwarg.
        ValueError: malformed lists.
    """
    _, checks = _compile(
        list(instruction_id_list), None if kwargs is None else list(kwargs), undetected_language == "satisfied"
    )
    return _follow_list(response, checks, mode, _LanguageCache())


class IFEvalJudge(Judge):
    """All 25 IFEval instructions; 1 when every instruction of the prompt is followed (prompt-level)."""

    Params = IFEvalParams
    kind: ClassVar[Literal["rule", "llm"]] = "rule"
    description = "IFEval verifiable instructions (25 ids), prompt-level strict or loose"

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p: IFEvalParams = self.params
        self._undetected_passes = p.undetected_language == "satisfied"
        self._fixed: tuple[list[str], list[Check]] | None = None
        if p.instruction_id_list is not None:
            self._fixed = _compile(p.instruction_id_list, p.kwargs, self._undetected_passes)

    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        mode: Mode = self.params.mode
        language = _LanguageCache()
        verdicts: list[Verdict | None] = []
        progress: dict[int, _Progress] = {}
        for index, (completion, meta) in enumerate(zip(completions, metadata, strict=True)):
            prep = self._prepare(completion, meta)
            if isinstance(prep, Verdict):
                verdicts.append(prep)
            elif mode == "strict" and not completion.strip():
                verdicts.append(violated(f"empty response; {len(prep[0])} instruction(s) not followed"))
            else:
                verdicts.append(None)
                variants = [completion] if mode == "strict" else _loose_variants(completion)
                progress[index] = _Progress(*prep, variants)
        # Rounds: run every check as far as the detected languages allow, then detect all the texts the checks
        # are waiting for in one batch (much cheaper than one by one). Loose mode may need several rounds, when
        # a language check fails on one variant and moves on to the next.
        pending = list(progress)
        while pending:
            need: list[str] = []
            waiting = []
            for index in pending:
                try:
                    if progress[index].advance(language.known, need):
                        verdicts[index] = progress[index].verdict(mode)
                    else:
                        waiting.append(index)
                except Exception as exc:  # noqa: BLE001 - e.g. RecursionError in json.loads on deep nesting
                    verdicts[index] = _checker_failed(exc)
            pending = waiting
            if not pending:
                break
            try:
                language.prefetch(need)
            except Exception:  # noqa: BLE001 - detect one text at a time; a failure is -1 for its sample only
                for index in pending:
                    try:
                        progress[index].advance(language, [])
                        verdicts[index] = progress[index].verdict(mode)
                    except Exception as exc:  # noqa: BLE001
                        verdicts[index] = _checker_failed(exc)
                break
        return [v if v is not None else failed("internal: sample left unresolved") for v in verdicts]

    def _prepare(self, completion: Any, meta: Mapping[str, Any]) -> Verdict | tuple[list[str], list[Check]]:
        """The sample's instruction ids and checkers, or a -1 verdict when they are unusable."""
        if not isinstance(completion, str):
            return failed(f"completion is {type(completion).__name__}, not a string")
        if self._fixed is not None:
            return self._fixed
        if "instruction_id_list" not in meta:
            return failed("metadata has no 'instruction_id_list' (and params fix no instructions)")
        try:
            return _compile(meta["instruction_id_list"], meta.get("kwargs"), self._undetected_passes)
        except (KwargError, ValueError) as exc:
            return failed(f"unusable IFEval metadata: {exc}"[:500])


def _checker_failed(exc: Exception) -> Verdict:
    """-1, never 0: a checker's own failure (e.g. RecursionError in json.loads on deep nesting)."""
    return failed(f"checker raised {type(exc).__name__}: {exc}"[:500])
