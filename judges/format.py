r"""Format judge: cheap, in-process checks on the shape of a response.

Every configured check must pass (1); otherwise the verdict is 0 and the reason names each failed
check. Nothing here can fail for infrastructure reasons except a non-string completion (-1).

Definitions:

* **words**: maximal runs of word characters (``\w+``, Unicode-aware), the convention of IFEval's word
  counter, so "don't" is two words and punctuation is not a word.
* **tokens**: with ``tokenizer`` unset, whitespace-separated pieces (``str.split()``); with
  ``tokenizer`` set to a local Hugging Face tokenizer directory, ``len(encode(text,
  add_special_tokens=False))`` of that tokenizer (loaded once, offline, at construction).
* **chars**: ``len(text)`` in Unicode code points.
* **json**: the whole response parses with :func:`json.loads`, optionally inside one Markdown fence
  (```` ```json ... ``` ```` or a bare ```` ``` ... ``` ````); ``json_keys`` additionally requires a top-level
  object with those keys.

With ``strip`` (the default) leading and trailing whitespace is removed before every check.
Regular expressions use :func:`re.search` and are compiled once when the judge is built; an invalid
one is a configuration error at its key. Patterns come from the task YAML, which is trusted
configuration: nothing guards against a pattern with catastrophic backtracking, so keep patterns
simple (or anchor them) when responses can be long.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cgpo.judging import Judge, Verdict, failed, satisfied, violated
from cgpo.schema import Invalid

_WORD = re.compile(r"\w+")
_FENCE = re.compile(r"^```[ \t]*(?:json)?[ \t]*\n(?P<body>.*)\n[ \t]*```$", re.DOTALL | re.IGNORECASE)


def _compile_all(key: str, patterns: Sequence[str]) -> list[re.Pattern[str]]:
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise Invalid((key, i), f"invalid regular expression {pattern!r}: {exc}") from None
    return compiled


def _check_bounds(low_key: str, low: int | None, high_key: str, high: int | None) -> None:
    for key, value in ((low_key, low), (high_key, high)):
        if value is not None and value < 0:
            raise Invalid(key, f"must be >= 0, got {value}")
    if low is not None and high is not None and low > high:
        raise Invalid(low_key, f"{low_key}={low} is greater than {high_key}={high}")


@dataclass(frozen=True)
class FormatParams:
    r"""Settings of the format judge; every set check must pass.

    Args:
        must_match: Regular expressions that must each match somewhere (``re.search``).
        must_not_match: Regular expressions none of which may match.
        min_words: Least number of words (``\w+`` runs).
        max_words: Most number of words.
        min_chars: Least number of characters.
        max_chars: Most number of characters.
        min_tokens: Least number of tokens (whitespace pieces, or ``tokenizer`` tokens).
        max_tokens: Most number of tokens.
        tokenizer: Local path of a Hugging Face tokenizer to count tokens with; unset means whitespace.
        json: The whole response (optionally in a Markdown ``json`` fence) must be valid JSON.
        json_keys: Keys the top-level JSON object must have (requires ``json: true``).
        starts_with: Exact text the response must start with.
        ends_with: Exact text the response must end with.
        strip: Strip leading and trailing whitespace before checking.
    """

    must_match: list[str] = field(default_factory=list)
    must_not_match: list[str] = field(default_factory=list)
    min_words: int | None = None
    max_words: int | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    tokenizer: str | None = None
    json: bool = False
    json_keys: list[str] = field(default_factory=list)
    starts_with: str | None = None
    ends_with: str | None = None
    strip: bool = True

    def __post_init__(self) -> None:
        _compile_all("must_match", self.must_match)
        _compile_all("must_not_match", self.must_not_match)
        _check_bounds("min_words", self.min_words, "max_words", self.max_words)
        _check_bounds("min_chars", self.min_chars, "max_chars", self.max_chars)
        _check_bounds("min_tokens", self.min_tokens, "max_tokens", self.max_tokens)
        if self.json_keys and not self.json:
            raise Invalid("json_keys", "requires json: true")
        if self.tokenizer is not None and self.min_tokens is None and self.max_tokens is None:
            raise Invalid("tokenizer", "is only used by min_tokens / max_tokens, and neither is set")
        bounds = (self.min_words, self.max_words, self.min_chars, self.max_chars, self.min_tokens, self.max_tokens)
        checks = [bool(self.must_match), bool(self.must_not_match), self.json, self.starts_with is not None]
        checks += [self.ends_with is not None, *(bound is not None for bound in bounds)]
        if not any(checks):
            raise Invalid((), "no check configured: set at least one of the format checks")


def _json_body(text: str) -> str:
    fenced = _FENCE.match(text.strip())
    return fenced.group("body") if fenced else text


class FormatJudge(Judge):
    """Regex must / must-not match, word, character and token bounds, JSON validity and keys."""

    Params = FormatParams
    kind = "rule"
    required_metadata = ()
    description = "Response format: regexes, word/char/token bounds, valid JSON, required prefix/suffix."

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p: FormatParams = self.params
        self._must = list(zip(p.must_match, _compile_all("must_match", p.must_match), strict=True))
        self._must_not = list(zip(p.must_not_match, _compile_all("must_not_match", p.must_not_match), strict=True))
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe for concurrent calls
        if p.tokenizer is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(p.tokenizer)

    def count_tokens(self, text: str) -> int:
        """Tokens as defined in the module docstring."""
        if self._tokenizer is None:
            return len(text.split())
        with self._tokenizer_lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))

    def failures(self, completion: str) -> list[str]:
        """Names (with the measured value) of the checks ``completion`` fails; empty when all pass."""
        p: FormatParams = self.params
        text = completion.strip() if p.strip else completion
        out = [f"must_match {source!r} does not match" for source, rx in self._must if not rx.search(text)]
        out += [f"must_not_match {source!r} matches" for source, rx in self._must_not if rx.search(text)]
        if p.starts_with is not None and not text.startswith(p.starts_with):
            out.append(f"does not start with {p.starts_with!r}")
        if p.ends_with is not None and not text.endswith(p.ends_with):
            out.append(f"does not end with {p.ends_with!r}")
        if p.min_chars is not None or p.max_chars is not None:
            out += _bound("chars", len(text), p.min_chars, p.max_chars)
        if p.min_words is not None or p.max_words is not None:
            out += _bound("words", sum(1 for _ in _WORD.finditer(text)), p.min_words, p.max_words)
        if p.min_tokens is not None or p.max_tokens is not None:
            out += _bound("tokens", self.count_tokens(text), p.min_tokens, p.max_tokens)
        if p.json:
            out += self._json_failures(text)
        return out

    def _json_failures(self, text: str) -> list[str]:
        try:
            value = json.loads(_json_body(text))
        except json.JSONDecodeError as exc:
            return [f"json: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"]
        except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
            return [f"json: not valid JSON ({exc})"[:200]]
        except RecursionError:
            return ["json: nesting too deep to parse"]
        keys = self.params.json_keys
        if not keys:
            return []
        if not isinstance(value, dict):
            return [f"json_keys: top-level JSON is {type(value).__name__}, not an object"]
        missing = [k for k in keys if k not in value]
        return [f"json_keys: missing {', '.join(map(repr, missing))}"] if missing else []

    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        """1 when every configured check passes, else 0 with the failed checks as the reason."""
        verdicts = []
        for completion in completions:
            if not isinstance(completion, str):
                verdicts.append(failed(f"completion is {type(completion).__name__}, not a string"))
                continue
            problems = self.failures(completion)
            verdicts.append(violated("; ".join(problems)[:500]) if problems else satisfied())
        return verdicts


def _bound(name: str, value: int, low: int | None, high: int | None) -> list[str]:
    if low is not None and value < low:
        return [f"{name}: {value} < min_{name}={low}"]
    if high is not None and value > high:
        return [f"{name}: {value} > max_{name}={high}"]
    return []
