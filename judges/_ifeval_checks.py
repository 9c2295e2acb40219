"""The 25 IFEval instruction checkers, built from IFEval's ``(instruction_id, kwargs)`` pairs.

Each checker reproduces the behaviour of google-research ``instruction_following_eval`` (``instructions.py``),
read for its semantics and re-implemented here, with three deliberate differences:

* A missing, ``None`` or out-of-range kwarg is a :class:`KwargError`, never a random value (the reference draws
  random defaults, which makes a reward nondeterministic). Only ``None`` counts as missing: ``0`` and ``""``
  are real values where the reference accepts them.
* Keywords, forbidden words, postscript markers and section splitters are matched literally
  (``re.escape``); the reference interpolates them into regular expressions unescaped, so ``C++`` would crash
  it. No IFEval kwarg contains a regex metacharacter that this changes.
* When langdetect finds no language features (no letters), the reference counts the instruction as followed;
  here that is configurable (``undetected_language``) and by default a violation, because text with no letters
  does not satisfy "respond in Hindi".

A checker is a function ``check(text, language) -> bool`` where ``language(text)`` returns the langdetect code
or ``None`` when undetectable; only the three language-dependent checkers call it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cgpo_judges._ifeval_text import count_capital_words, count_sentences, count_words

__all__ = ["INSTRUCTIONS", "LANGDETECT_CODES", "Check", "KwargError", "build_check"]

LanguageFn = Callable[[str], "str | None"]
Check = Callable[[str, LanguageFn], bool]

RELATIONS = ("less than", "at least")
#: Codes langdetect 1.0.9 can return; a ``language`` kwarg outside this set could never be satisfied.
LANGDETECT_CODES = frozenset(
    [
        "af",
        "ar",
        "bg",
        "bn",
        "ca",
        "cs",
        "cy",
        "da",
        "de",
        "el",
        "en",
        "es",
        "et",
        "fa",
        "fi",
        "fr",
        "gu",
        "he",
        "hi",
        "hr",
        "hu",
        "id",
        "it",
        "ja",
        "kn",
        "ko",
        "lt",
        "lv",
        "mk",
        "ml",
        "mr",
        "ne",
        "nl",
        "no",
        "pa",
        "pl",
        "pt",
        "ro",
        "ru",
        "sk",
        "sl",
        "so",
        "sq",
        "sv",
        "sw",
        "ta",
        "te",
        "th",
        "tl",
        "tr",
        "uk",
        "ur",
        "vi",
        "zh-cn",
        "zh-tw",
    ]
)
_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
_FIRST_WORD_STOP = frozenset(".,?!'\"")

# Markdown bullets: "* item" (not "**bold") and "- item" lines: the mark is the first non-blank character of
# its line. (The reference's ``^\s*\*[^\*].*$`` / ``^\s*-.*$`` count the same, but in quadratic time on long
# runs of blank lines; these scan each line once.)
_STAR_AT_LINE_START = re.compile(r"^[^\S\n]*\*(?=[^*])", re.MULTILINE | re.DOTALL)
_DASH_AT_LINE_START = re.compile(r"^[^\S\n]*-", re.MULTILINE)
_HIGHLIGHT = re.compile(r"\*[^\n\*]*\*")
_DOUBLE_HIGHLIGHT = re.compile(r"\*\*[^\n\*]*\*\*")
_BRACKET_OR_NEWLINE = re.compile(r"[\[\]\n]")
_PARAGRAPH_DIVIDER = re.compile(r"\s?\*\*\*\s?")
_PPS = re.compile(r"p\.\s?p\.\s?s")
_PS = re.compile(r"p\.\s?s\.")


class KwargError(ValueError):
    """An instruction's kwargs are unusable: ``kwarg`` is the offending key (``None`` for the id itself)."""

    def __init__(self, instruction_id: str, kwarg: str | None, reason: str) -> None:
        where = f"instruction '{instruction_id}'" + (f", kwarg '{kwarg}'" if kwarg else "")
        super().__init__(f"{where}: {reason}")
        self.instruction_id = instruction_id
        self.kwarg = kwarg
        self.reason = reason


def count_star_bullets(text: str) -> int:
    r"""Matches of the reference's ``^\s*\*[^\*].*$`` (MULTILINE), in linear time.

    A match is a ``*`` that is the first non-blank character of its line and is followed by a character other
    than ``*``; it runs to the end of that character's line, so a line holding just ``*`` swallows the next.
    """
    count, consumed = 0, 0
    for match in _STAR_AT_LINE_START.finditer(text):
        star = match.end() - 1
        if star < consumed:
            continue
        count += 1
        after = star + 1
        newline = text.find("\n", after + 1 if text[after] == "\n" else after)
        consumed = len(text) if newline < 0 else newline
    return count


def count_placeholders(text: str) -> int:
    r"""Matches of the reference's ``\[.*?\]``, in linear time.

    Each ``[`` opens a span (further ``[`` join it) that the next ``]`` on the same line closes.
    """
    count, open_ = 0, False
    for match in _BRACKET_OR_NEWLINE.finditer(text):
        ch = match.group()
        if ch == "[":
            open_ = True
        elif ch == "]" and open_:
            count += 1
            open_ = False
        elif ch == "\n":
            open_ = False
    return count


def has_title(text: str) -> bool:
    r"""Whether the reference's ``<<[^\n]+>>`` finds a title with non-blank text, in linear time.

    On each line the greedy match runs from the first ``<<`` to the last ``>>`` (at least one character
    between); its text is what remains after stripping the ``<`` and ``>`` runs and whitespace.
    """
    for line in text.split("\n"):
        start = line.find("<<")
        if start < 0:
            continue
        stop = line.rfind(">>")
        if stop >= start + 3 and line[start : stop + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


@dataclass(frozen=True)
class _Spec:
    kwargs: tuple[str, ...]
    build: Callable[[_Args], Check]


class _Args:
    """Typed access to one instruction's kwargs; every accessor raises :class:`KwargError`."""

    def __init__(self, instruction_id: str, kwargs: Mapping[str, Any]) -> None:
        self.id = instruction_id
        self.kwargs = kwargs

    def _get(self, key: str) -> Any:
        value = self.kwargs.get(key)
        if value is None:
            raise KwargError(self.id, key, "missing (IFEval would draw a random value; give it explicitly)")
        return value

    def count(self, key: str, minimum: int = 0) -> int:
        value = self._get(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON readers and dataset columns sometimes turn 3 into 3.0
        if not isinstance(value, int) or isinstance(value, bool):
            raise KwargError(self.id, key, f"must be an integer, got {value!r}")
        if value < minimum:
            raise KwargError(self.id, key, f"must be >= {minimum}, got {value}")
        return value

    def text(self, key: str, *, allow_empty: bool = False) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise KwargError(self.id, key, f"must be a string, got {value!r}")
        if not allow_empty and not value.strip():
            raise KwargError(self.id, key, "must be a non-empty string")
        return value

    def words(self, key: str) -> list[str]:
        value = self._get(key)
        if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
            raise KwargError(self.id, key, f"must be a non-empty list of strings, got {value!r}")
        if not all(isinstance(v, str) for v in value):
            raise KwargError(self.id, key, f"must be a list of strings, got {value!r}")
        return list(value)

    def relation(self, key: str) -> Callable[[int, int], bool]:
        value = self._get(key)
        if value not in RELATIONS:
            raise KwargError(self.id, key, f"must be 'less than' or 'at least', got {value!r}")
        # "less than" is strict (count < n); "at least" is inclusive (count >= n).
        return (lambda have, n: have < n) if value == "less than" else (lambda have, n: have >= n)


# --- keywords --------------------------------------------------------------------------------------------


# The keyword checks match case-insensitively (re.IGNORECASE). When the keyword and the text are both ASCII, that
# is plain equality after str.lower() (IGNORECASE's Unicode equivalences such as "ſ" ~ "s" or the Kelvin sign ~ "k"
# need a non-ASCII character on one side), so a substring test or count on the lower-cased text gives the same
# answer much faster; otherwise, or to confirm a whole-word match, the regex runs.


def _keywords_existence(a: _Args) -> Check:
    keywords = a.words("keywords")
    patterns = [(k.lower(), k.isascii(), re.compile(re.escape(k), re.IGNORECASE)) for k in keywords]

    def check(text: str, _: LanguageFn) -> bool:
        lowered = text.lower() if text.isascii() else None
        return all(k in lowered if ascii_ and lowered is not None else p.search(text) for k, ascii_, p in patterns)

    return check


def _keywords_frequency(a: _Args) -> Check:
    keyword = a.text("keyword").strip()
    lowered_keyword, pattern = keyword.lower(), re.compile(re.escape(keyword), re.IGNORECASE)
    n, rel = a.count("frequency"), a.relation("relation")

    # Substring occurrences, as the reference counts them ("the" also counts inside "there"): non-overlapping,
    # left to right, which is what both findall and str.count count.
    def check(text: str, _: LanguageFn) -> bool:
        if keyword.isascii() and text.isascii():
            return rel(text.lower().count(lowered_keyword), n)
        return rel(len(pattern.findall(text)), n)

    return check


def _forbidden_words(a: _Args) -> Check:
    words = a.words("forbidden_words")
    patterns = [(w.lower(), w.isascii(), re.compile(r"\b" + re.escape(w) + r"\b", re.IGNORECASE)) for w in words]

    def check(text: str, _: LanguageFn) -> bool:
        lowered = text.lower() if text.isascii() else None
        # A whole-word match needs the word as a substring: where that test is exact, it saves the regex scan.
        return not any(
            p.search(text) for w, ascii_, p in patterns if not (ascii_ and lowered is not None and w not in lowered)
        )

    return check


def _letter_frequency(a: _Args) -> Check:
    letter = a.text("letter")
    if len(letter) != 1:
        raise KwargError(a.id, "letter", f"must be a single character, got {letter!r}")
    letter = letter.lower()
    n, rel = a.count("let_frequency"), a.relation("let_relation")
    # Any character counts, not only a-z ('#', '!' in IFEval keys 1122 and 1129), case-insensitively.
    return lambda text, _: rel(text.lower().count(letter), n)


# --- language and case -----------------------------------------------------------------------------------


def _response_language(a: _Args, undetected_passes: bool) -> Check:
    language = a.text("language")
    if language not in LANGDETECT_CODES:
        raise KwargError(a.id, "language", f"{language!r} is not a langdetect language code")

    def check(text: str, detect: LanguageFn) -> bool:
        found = detect(text)
        return undetected_passes if found is None else found == language

    return check


def _english_capital(undetected_passes: bool) -> Check:
    def check(text: str, detect: LanguageFn) -> bool:
        if not text.isupper():
            return False
        found = detect(text)
        return undetected_passes if found is None else found == "en"

    return check


def _english_lowercase(undetected_passes: bool) -> Check:
    def check(text: str, detect: LanguageFn) -> bool:
        if not text.islower():
            return False
        found = detect(text)
        return undetected_passes if found is None else found == "en"

    return check


def _capital_word_frequency(a: _Args) -> Check:
    n, rel = a.count("capital_frequency"), a.relation("capital_relation")
    return lambda text, _: rel(count_capital_words(text), n)


# --- length ----------------------------------------------------------------------------------------------


def _number_sentences(a: _Args) -> Check:
    n, rel = a.count("num_sentences"), a.relation("relation")
    return lambda text, _: rel(count_sentences(text), n)


def _number_words(a: _Args) -> Check:
    n, rel = a.count("num_words"), a.relation("relation")
    return lambda text, _: rel(count_words(text), n)


def _number_paragraphs(a: _Args) -> Check:
    n = a.count("num_paragraphs")

    def check(text: str, _: LanguageFn) -> bool:
        parts = _PARAGRAPH_DIVIDER.split(text)
        count = len(parts)
        for i, part in enumerate(parts):
            if not part.strip():
                if 0 < i < len(parts) - 1:
                    return False  # an empty paragraph between two dividers
                count -= 1  # a divider at the very start or end does not open a paragraph
        return count == n

    return check


def _nth_paragraph_first_word(a: _Args) -> Check:
    n = a.count("num_paragraphs", minimum=1)
    nth = a.count("nth_paragraph", minimum=1)
    if nth > n:
        raise KwargError(a.id, "nth_paragraph", f"must be <= num_paragraphs ({n}), got {nth}")
    wanted = a.text("first_word").lower()

    def check(text: str, _: LanguageFn) -> bool:
        parts = text.split("\n\n")
        count = sum(1 for p in parts if p.strip())
        # As the reference: the nth element of the split (blank ones included) must be non-blank.
        if nth > count:
            return False
        paragraph = parts[nth - 1].strip()
        if not paragraph:
            return False
        word = paragraph.split()[0].lstrip("'").lstrip('"')
        first = []
        for ch in word:
            if ch in _FIRST_WORD_STOP:
                break
            first.append(ch.lower())
        return count == n and "".join(first) == wanted

    return check


# --- detectable content and format -----------------------------------------------------------------------


def _number_placeholders(a: _Args) -> Check:
    n = a.count("num_placeholders")
    return lambda text, _: count_placeholders(text) >= n


def _postscript(a: _Args) -> Check:
    marker = a.text("postscript_marker").strip()
    if marker == "P.P.S":
        pattern = _PPS
    elif marker == "P.S.":
        pattern = _PS
    else:
        pattern = re.compile(re.escape(marker.lower()))
    # The marker anywhere in the lower-cased text (the reference's leading \s* and trailing .*$ always match).
    return lambda text, _: pattern.search(text.lower()) is not None


def _number_bullet_lists(a: _Args) -> Check:
    n = a.count("num_bullets")
    return lambda text, _: count_star_bullets(text) + len(_DASH_AT_LINE_START.findall(text)) == n


def _constrained_response(_: _Args) -> Check:
    return lambda text, __: any(option in text for option in _CONSTRAINED_OPTIONS)


def _number_highlighted_sections(a: _Args) -> Check:
    n = a.count("num_highlights")

    def check(text: str, _: LanguageFn) -> bool:
        count = sum(1 for h in _HIGHLIGHT.findall(text) if h.strip("*").strip())
        count += sum(1 for h in _DOUBLE_HIGHLIGHT.findall(text) if h[2:-2].strip())
        return count >= n

    return check


def _multiple_sections(a: _Args) -> Check:
    splitter = a.text("section_spliter").strip()
    n = a.count("num_sections")
    pattern = re.compile(r"\s?" + re.escape(splitter) + r"\s?\d+\s?")
    return lambda text, _: len(pattern.split(text)) - 1 >= n


def _json_format(_: _Args) -> Check:
    def check(text: str, __: LanguageFn) -> bool:
        body = text.strip()
        for fence in ("```json", "```Json", "```JSON", "```"):  # applied in turn, as the reference does
            body = body.removeprefix(fence)
        body = body.removesuffix("```").strip()
        try:
            json.loads(body)
        except ValueError:
            return False
        return True

    return check


def _title(_: _Args) -> Check:
    return lambda text, __: has_title(text)


def _two_responses(_: _Args) -> Check:
    def check(text: str, __: LanguageFn) -> bool:
        parts = text.split("******")
        kept = []
        for i, part in enumerate(parts):
            if part.strip():
                kept.append(part.strip())
            elif 0 < i < len(parts) - 1:
                return False
        return len(kept) == 2 and kept[0] != kept[1]

    return check


def _repeat_prompt(a: _Args) -> Check:
    prompt = a.text("prompt_to_repeat").strip().lower()
    return lambda text, _: text.strip().lower().startswith(prompt)


def _end_checker(a: _Args) -> Check:
    phrase = a.text("end_phrase", allow_empty=True).strip().lower()
    return lambda text, _: text.strip().strip('"').lower().endswith(phrase)


def _no_comma(_: _Args) -> Check:
    return lambda text, __: "," not in text


def _quotation(_: _Args) -> Check:
    def check(text: str, __: LanguageFn) -> bool:
        body = text.strip()
        return len(body) > 1 and body[0] == '"' and body[-1] == '"'

    return check


_LANGUAGE_DEPENDENT = "language:response_language", "change_case:english_capital", "change_case:english_lowercase"

#: Instruction id -> the kwargs it requires (IFEval's registry: 25 ids).
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "keywords:existence": ("keywords",),
    "keywords:frequency": ("keyword", "frequency", "relation"),
    "keywords:forbidden_words": ("forbidden_words",),
    "keywords:letter_frequency": ("letter", "let_frequency", "let_relation"),
    "language:response_language": ("language",),
    "length_constraints:number_sentences": ("num_sentences", "relation"),
    "length_constraints:number_paragraphs": ("num_paragraphs",),
    "length_constraints:number_words": ("num_words", "relation"),
    "length_constraints:nth_paragraph_first_word": ("num_paragraphs", "nth_paragraph", "first_word"),
    "detectable_content:number_placeholders": ("num_placeholders",),
    "detectable_content:postscript": ("postscript_marker",),
    "detectable_format:number_bullet_lists": ("num_bullets",),
    "detectable_format:constrained_response": (),
    "detectable_format:number_highlighted_sections": ("num_highlights",),
    "detectable_format:multiple_sections": ("section_spliter", "num_sections"),
    "detectable_format:json_format": (),
    "detectable_format:title": (),
    "combination:two_responses": (),
    "combination:repeat_prompt": ("prompt_to_repeat",),
    "startend:end_checker": ("end_phrase",),
    "change_case:capital_word_frequency": ("capital_frequency", "capital_relation"),
    "change_case:english_capital": (),
    "change_case:english_lowercase": (),
    "punctuation:no_comma": (),
    "startend:quotation": (),
}

_ACCEPTS = {instruction_id: frozenset(kwargs) for instruction_id, kwargs in INSTRUCTIONS.items()}

_BUILDERS: dict[str, Callable[[_Args], Check]] = {
    "keywords:existence": _keywords_existence,
    "keywords:frequency": _keywords_frequency,
    "keywords:forbidden_words": _forbidden_words,
    "keywords:letter_frequency": _letter_frequency,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": _number_paragraphs,
    "length_constraints:number_words": _number_words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders": _number_placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _number_bullet_lists,
    "detectable_format:constrained_response": _constrained_response,
    "detectable_format:number_highlighted_sections": _number_highlighted_sections,
    "detectable_format:multiple_sections": _multiple_sections,
    "detectable_format:json_format": _json_format,
    "detectable_format:title": _title,
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": _end_checker,
    "change_case:capital_word_frequency": _capital_word_frequency,
    "punctuation:no_comma": _no_comma,
    "startend:quotation": _quotation,
}


def build_check(instruction_id: str, kwargs: Mapping[str, Any] | None, *, undetected_passes: bool = False) -> Check:
    """The checker for one instruction.

    Args:
        instruction_id: One of :data:`INSTRUCTIONS`.
        kwargs: IFEval's kwargs dict for it; ``None`` values are dropped (dataset rows often carry every
            kwarg of every instruction, most of them null).
        undetected_passes: What a language check answers when langdetect finds no language features.

    Raises:
        KwargError: unknown id, missing or invalid kwarg, or a kwarg the instruction does not take.
    """
    if instruction_id not in INSTRUCTIONS:
        raise KwargError(instruction_id, None, "unknown IFEval instruction id")
    if kwargs is None:
        kwargs = {}
    if type(kwargs) is not dict and not isinstance(kwargs, Mapping):  # the common case skips the ABC check
        raise KwargError(instruction_id, None, f"kwargs must be a mapping, got {type(kwargs).__name__}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    if not given.keys() <= _ACCEPTS[instruction_id]:
        extra = sorted(set(given) - set(INSTRUCTIONS[instruction_id]))
        raise KwargError(
            instruction_id, extra[0], f"not an argument of this instruction (takes {INSTRUCTIONS[instruction_id]})"
        )
    args = _Args(instruction_id, given)
    if instruction_id == "language:response_language":
        return _response_language(args, undetected_passes)
    if instruction_id == "change_case:english_capital":
        return _english_capital(undetected_passes)
    if instruction_id == "change_case:english_lowercase":
        return _english_lowercase(undetected_passes)
    return _BUILDERS[instruction_id](args)
