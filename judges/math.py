r"""Math-answer judge: strict, anchored extraction of one final answer, then mathematical equivalence.

Extraction (``answer_format``, judges-reference.md §2.1), always anchored, never "the last number":

* ``final_answer`` (CGPO paper App. A): the answer ``X`` of "The final answer is X" (case-insensitive,
  optional colon), which must be the **final sentence**: after ``X`` and an optional period only
  whitespace may follow. A sentence ends at a newline or at a period followed by whitespace, so
  decimals such as ``3.5`` stay whole.
* ``boxed`` (Hendrycks MATH lineage): the content of the **last** ``\boxed{...}`` or ``\fbox{...}``,
  brace-matched (escaped ``\{``/``\}`` do not count). The brace form is required.
* ``gsm8k``: the number after the last ``####``: optional sign and ``$``, digits with correct thousands
  groups, optional decimals, optional trailing period. Nothing but whitespace may follow its line.

One wrapper is peeled from ``X``: ``$...$``, ``$$...$$``, ``\(...\)``, ``\[...\]``, ``\boxed{...}``
or markdown ``**...**``. Every other occurrence of the anchor in the completion is a candidate answer
too: two candidates that differ ("The final answer is 3. ... The final answer is 4.", two different
boxed answers) is a violation, as is no anchored answer at all. "3 or 4" is read by math-verify as the
set {3, 4}, which does not equal a single gold.

Equivalence, in two tiers:

1. **Fast path, in-process, no sympy**: when both gold and answer are plain numbers (integers with
   thousands separators, decimals, ``a/b``, ``\frac{a}{b}``, a leading ``$`` or ``\$``, a trailing
   ``%`` or ``\%``), they are compared exactly as :class:`fractions.Fraction`. This decides nearly all
   GSM8K answers, right or wrong, in microseconds.
2. **math-verify** (with sympy) otherwise: LaTeX, radicals, symbolic expressions, intervals, sets,
   equations. ``verify(gold, answer)`` is asymmetric by design and is always called gold first. It
   runs in worker processes (:mod:`cgpo_judges._workers`) with an address-space limit, an in-worker
   SIGALRM timeout and a parent-side SIGKILL at ``timeout_seconds``; only strings cross the pipe.

Percentages are handled deliberately strictly: a trailing percent sign is dropped on both sides and
the numbers must then be equal, so "50%" matches gold 50 or "50%", but never 0.5 (math-verify alone
would accept 0.5, and Qwen-style graders accept x100 and /100, which widens what counts as correct).
Plain numbers are compared exactly (0.333 is not 1/3).

Verdicts: 1 equivalent; 0 no answer, several different answers, or not equivalent; -1 the gold cannot
be parsed, the extracted answer is longer than ``max_answer_chars``, or the worker timed out, ran out
of memory or crashed. A pathological answer (``9^{9^{9^{9}}}``, huge factorials) therefore costs at
most ``timeout_seconds`` and never hangs or kills the caller.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

from cgpo.judging import Judge, Verdict, failed, satisfied, violated
from cgpo.schema import Invalid

# ----------------------------------------------------------------------------------------------------
# Params
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathParams:
    r"""Settings of the math judge.

    Args:
        answer_format: Where the answer is taken from: ``final_answer`` ("The final answer is X" as the
            final sentence), ``boxed`` (last ``\boxed{}``/``\fbox{}``) or ``gsm8k`` (``#### X``).
        timeout_seconds: Hard wall-clock bound per sample that needs math-verify; past it the worker is
            killed and the sample is -1. The in-worker SIGALRM bound is 80% of it.
        memory_limit_mb: ``RLIMIT_AS`` of each worker process.
        num_workers: Worker processes for math-verify; ``None`` means ``min(2, os.cpu_count())``.
        max_answer_chars: Longer extracted answers are not parsed (-1): a bound on parser work.
    """

    answer_format: Literal["final_answer", "boxed", "gsm8k"] = "final_answer"
    timeout_seconds: float = 5.0
    memory_limit_mb: int = 1024
    num_workers: int | None = None
    max_answer_chars: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.timeout_seconds <= 600:
            raise Invalid("timeout_seconds", f"must be in (0, 600], got {self.timeout_seconds}")
        if self.memory_limit_mb < 256:
            raise Invalid("memory_limit_mb", f"must be >= 256 (sympy alone needs ~100 MB), got {self.memory_limit_mb}")
        if self.num_workers is not None and not 1 <= self.num_workers <= 256:
            raise Invalid("num_workers", f"must be between 1 and 256, got {self.num_workers}")
        if not 1 <= self.max_answer_chars <= 100_000:
            raise Invalid("max_answer_chars", f"must be between 1 and 100000, got {self.max_answer_chars}")


# ----------------------------------------------------------------------------------------------------
# Plain numbers (the fast path)
# ----------------------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_SPACE_GROUPED = re.compile(r"[-+]?\d{1,3}(?:[ \u2009\u202f]\d{3})+(?:\.\d+)?")
_SLASH_FRACTION = re.compile(r"([-+]?\d{1,50})\s*/\s*(\d{1,50})")
_LATEX_FRACTION = re.compile(r"([-+]?)\\[dt]?frac\{\s*([-+]?\d{1,50})\s*\}\{\s*(\d{1,50})\s*\}")
_CURRENCY = re.compile(r"^([-+]?)\s*(?:\\\$|\$)\s*")
_PERCENT = re.compile(r"\s*\\?%$")
_FAST_PATH_MAX_CHARS = 1000  # longer "numbers" go to the workers, where the hard bound applies


def strip_percent(text: str) -> str:
    r"""Drop one trailing ``%`` or ``\%`` (see the module docstring on strict percentages)."""
    return _PERCENT.sub("", text)


def plain_number(text: str) -> Fraction | None:
    r"""The exact value of a plain number, or ``None`` when ``text`` is anything else.

    Accepted: ``1234``, ``1,234`` or ``1 234`` (correct groups only: ``1,23`` is not a number), ``-0.5``, ``.5``,
    ``3/4``, ``\frac{3}{4}``, with an optional leading ``$`` / ``\$`` and trailing ``%`` / ``\%``;
    LaTeX thousands separators ``{,}`` and ``\,`` and the unicode minus are normalised first.
    """
    s = text.strip()
    if not s or len(s) > _FAST_PATH_MAX_CHARS:
        return None
    s = s.replace("\u2212", "-").replace("{,}", ",").replace("\\,", ",").replace("\\!", "")
    s = strip_percent(s)
    currency = _CURRENCY.match(s)
    if currency:
        s = currency.group(1) + s[currency.end() :]
    s = s.strip()
    if _SPACE_GROUPED.fullmatch(s):  # SI style "114 200": spaces only between exact groups of three
        s = re.sub(r"[ \u2009\u202f]", "", s)
    if _DECIMAL.fullmatch(s):
        return Fraction(Decimal(s.replace(",", "")))
    match = _SLASH_FRACTION.fullmatch(s)
    if match:
        num, den = int(match.group(1)), int(match.group(2))
        return Fraction(num, den) if den else None
    match = _LATEX_FRACTION.fullmatch(s)
    if match:
        num, den = int(match.group(2)), int(match.group(3))
        if not den:
            return None
        return -Fraction(num, den) if match.group(1) == "-" else Fraction(num, den)
    return None


# ----------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------

_FINAL_PHRASE = re.compile(r"the\s{1,8}final\s{1,8}answer\s{1,8}is\b[ \t]*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\n|\.(?=\s|$)")
_ANSWER_LIKE = re.compile(r"[\d$]|\\[(\[]|\\(?:boxed|fbox|frac|sqrt)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)  # an escape (``\{``, ``\\``) or a bare brace
_GSM8K_MARK = "####"
_GSM8K_NUMBER = re.compile(r"[-+]?(?:\\?\$)?\s*[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


class TooLong(Exception):
    """The extracted answer exceeds ``max_answer_chars``; the judge refuses to parse it (-1)."""


@dataclass(frozen=True)
class Extraction:
    """What extraction found.

    Attributes:
        answer: The final answer, wrapper peeled, or ``None`` when there is none.
        problem: Why there is no usable answer (a violation), when ``answer`` is ``None``.
        others: The other candidate answers found under the same anchor (earlier occurrences).
    """

    answer: str | None
    problem: str = ""
    others: tuple[str, ...] = field(default_factory=tuple)


def _match_brace(text: str, open_index: int, limit: int) -> str | None:
    """Content between ``text[open_index] == "{"`` and its matching ``}``.

    Scans at most ``limit`` characters of content; escaped braces do not count. Returns ``None`` when
    the brace is never closed.

    Raises:
        TooLong: when the content is longer than ``limit``.
    """
    depth = 0
    i = open_index
    end = min(len(text), open_index + limit + 2)
    while i < end:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
        i += 1
    if end < len(text):
        raise TooLong
    return None


def peel(answer: str) -> str:
    r"""Remove one wrapper (math delimiters, ``\boxed{}``, markdown bold) that spans the whole answer."""
    s = answer.strip()
    for _ in range(3):  # e.g. **$\boxed{5}$**
        before = s
        if s.startswith("**") and s.endswith("**") and len(s) > 4:
            s = s[2:-2].strip()
        if s.startswith("$$") and s.endswith("$$") and len(s) > 4 and "$" not in s[2:-2]:
            s = s[2:-2].strip()
        elif s.startswith("$") and s.endswith("$") and len(s) > 2 and "$" not in s[1:-1]:
            s = s[1:-1].strip()
        elif (s.startswith("\\(") and s.endswith("\\)")) or (s.startswith("\\[") and s.endswith("\\]")):
            s = s[2:-2].strip()
        box = _BOXED.match(s)
        if box:
            try:
                inner = _match_brace(s, box.end() - 1, len(s))
            except TooLong:  # cannot happen: the limit is the whole string
                inner = None
            if inner is not None and box.end() + len(inner) + 1 == len(s):
                s = inner.strip()
        if s == before:
            break
    return s


def _strip_period(answer: str) -> str:
    s = answer.rstrip()
    return s[:-1].rstrip() if s.endswith(".") else s


def extract_final_answer(text: str, max_chars: int) -> Extraction:
    """``final_answer`` format: "The final answer is X" as the final sentence."""
    matches = list(_FINAL_PHRASE.finditer(text))
    if not matches:
        return Extraction(None, "no 'The final answer is ...' sentence")
    others = []
    for m in matches[:-1]:
        window = text[m.end() : m.end() + max_chars + 2]
        end = _SENTENCE_END.search(window)
        # An earlier phrase is a candidate answer when its sentence ends within the cap and holds a digit or
        # math ("the final answer is not obvious yet." is prose). ``$`` also matches at the cut-off end of
        # the window, hence the bound on the position.
        if end is not None and end.start() <= max_chars and _ANSWER_LIKE.search(window[: end.start()]):
            others.append(peel(window[: end.start()]))
    rest = text[matches[-1].end() :]
    end = _SENTENCE_END.search(rest)
    if end is not None and rest[end.end() :].strip():
        return Extraction(None, "'The final answer is ...' is not the final sentence")
    answer = (rest if end is None else rest[: end.start()]).strip()
    if len(answer) > max_chars:
        raise TooLong
    answer = peel(answer)
    if not answer:
        return Extraction(None, "'The final answer is' is followed by nothing")
    return Extraction(answer, others=tuple(a for a in others if a))


def _box_spans(text: str) -> list[tuple[int, int | None]]:
    r"""``(content_start, content_end)`` of every ``\boxed{`` / ``\fbox{``, in order; end ``None`` if unclosed.

    One pass over the braces and backslash escapes only (a regex finds them), with a stack: linear in
    the text even for 10^5 nested boxes, where matching each box separately would be quadratic.
    """
    opens = {m.end() - 1: i for i, m in enumerate(_BOXED.finditer(text))}
    spans: list[tuple[int, int | None]] = [(start + 1, None) for start in opens]
    stack: list[int] = []
    for token in _BRACE_TOKEN.finditer(text):
        if token.group() == "{":
            stack.append(token.start())
        elif token.group() == "}" and stack:
            start = stack.pop()
            if start in opens:
                spans[opens[start]] = (start + 1, token.start())
    return spans


def extract_boxed(text: str, max_chars: int) -> Extraction:
    r"""``boxed`` format: the last ``\boxed{...}`` / ``\fbox{...}``, brace-matched."""
    spans = _box_spans(text)
    if not spans:
        return Extraction(None, "no \\boxed{...} answer")
    start, end = spans[-1]
    if end is None:
        return Extraction(None, "the last \\boxed{ is never closed")
    if end - start > max_chars:
        raise TooLong
    others = []
    for (start_i, end_i), (next_start, _) in itertools.pairwise(spans):
        # Boxes around other boxes, unclosed or over-long ones are not separate candidate answers.
        if end_i is not None and end_i - start_i <= max_chars and next_start > end_i:
            others.append(peel(text[start_i:end_i]))
    answer = peel(text[start:end])
    if not answer:
        return Extraction(None, "the last \\boxed{} is empty")
    return Extraction(answer, others=tuple(others))


def extract_gsm8k(text: str, max_chars: int) -> Extraction:
    """``gsm8k`` format: a plain number after the last ``####``, on the last non-empty line."""
    last = text.rfind(_GSM8K_MARK)
    if last < 0:
        return Extraction(None, "no '#### <number>' line")
    start = last + len(_GSM8K_MARK)
    newline = text.find("\n", start)
    line = text[start:] if newline < 0 else text[start:newline]
    if newline >= 0 and text[newline:].strip():
        return Extraction(None, "text follows the '####' answer line")
    line = _strip_period(line).strip()
    if len(line) > max_chars:
        raise TooLong
    if not _GSM8K_NUMBER.fullmatch(line) or plain_number(line) is None:
        return Extraction(None, f"'#### {line[:40]}' is not a plain number")
    others = []
    position = text.find(_GSM8K_MARK)
    while 0 <= position < last:
        begin = position + len(_GSM8K_MARK)
        stop = text.find("\n", begin, begin + max_chars + 2)
        candidate = _strip_period(text[begin : stop if stop >= 0 else begin + max_chars + 2]).strip()
        if plain_number(candidate) is not None:  # "#### Step 1" headings are not answers
            others.append(candidate)
        position = text.find(_GSM8K_MARK, begin)
    return Extraction(line, others=tuple(others))


_EXTRACTORS = {"final_answer": extract_final_answer, "boxed": extract_boxed, "gsm8k": extract_gsm8k}


def _same_answer(a: str, b: str) -> bool:
    """Whether two candidate answers of one completion say the same thing (values, else spelling)."""
    va, vb = plain_number(a), plain_number(b)
    if va is not None and vb is not None:
        return va == vb
    return "".join(a.split()) == "".join(b.split())


def gold_answer(value: Any) -> str | None:
    r"""The gold answer as a string: a number, the part after ``####``, the last ``\boxed{}``, or LaTeX."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float | Decimal):
        number = Decimal(repr(value)) if isinstance(value, float) else value
        if not number.is_finite():
            return None
        text = format(number, "f")  # 1e20 -> "100000000000000000000", which the fast path reads
    elif isinstance(value, int | Fraction):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    if _GSM8K_MARK in text:
        text = text[text.rfind(_GSM8K_MARK) + len(_GSM8K_MARK) :]
    elif _BOXED.search(text):
        boxes = list(_BOXED.finditer(text))
        try:
            inner = _match_brace(text, boxes[-1].end() - 1, len(text))
        except TooLong:  # pragma: no cover - the limit is the whole text
            inner = None
        if inner is None:
            return None
        text = inner
    text = peel(text)
    if text.endswith(".") and plain_number(text[:-1]) is not None:  # "#### 18." or "18."
        text = text[:-1]
    return text or None


# ----------------------------------------------------------------------------------------------------
# Worker side (runs in the worker processes; only strings cross the pipe)
# ----------------------------------------------------------------------------------------------------


def _worker_setup() -> None:
    """Import math-verify and warm its caches once per worker, before the worker reports ready."""
    import logging

    from math_verify import parse, verify

    # Timeouts and parse failures are reported through our protocol; keep the library quiet.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    verify(_parse_gold("\\frac{1}{2}"), _parse("0.5"), timeout_seconds=None, raise_on_error=True)
    parse("$(x+1)^2$", parsing_timeout=None)


@functools.lru_cache(maxsize=1)
def _extraction_config() -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # We pass only the extracted answer (anchoring happened in the parent), wrapped in $...$, so reading it
    # "without anchor" cannot pick up stray numbers from the rest of the completion.
    return [
        LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=True),
        ExprExtractionConfig(try_extract_without_anchor=True),
    ]


def _parse(answer: str) -> list[Any]:
    from math_verify import parse

    text = answer if "$" in answer else f"${answer}$"
    # The worker's SIGALRM (see _workers) bounds the whole job; math-verify's own alarm is disabled so
    # that a timeout is reported as a timeout, never swallowed into "not equal".
    parsed: list[Any] = parse(
        text,
        extraction_config=_extraction_config(),
        extraction_mode="first_match",
        fallback_mode="no_fallback",  # a bare string match is not an expression: "\\frac{" must not parse
        parsing_timeout=None,
        raise_on_error=True,
    )
    return parsed


@functools.lru_cache(maxsize=1024)
def _parse_gold(gold: str) -> list[Any]:
    # Gold answers repeat across the K samples of a prompt; the parsed form stays inside the worker.
    return _parse(gold)


def _worker_compare(gold: str, answer: str) -> list[str]:
    """Compare in a worker. Returns ``[status, detail]``; status is equal, different or gold_unparseable.

    ``MemoryError``, ``RecursionError`` and the soft timeout propagate to the worker loop (-1). Any
    other error while parsing the *answer* means the answer is not well-formed math: it is then
    compared as a string. Any error while parsing the *gold* makes the gold unparseable (-1).
    """
    from math_verify import verify

    try:
        gold_parsed = _parse_gold(gold)
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # noqa: BLE001 - any parser error means the gold is unusable (-1)
        return ["gold_unparseable", f"{type(exc).__name__}"]
    if not gold_parsed:
        return ["gold_unparseable", "math-verify found no expression"]
    try:
        answer_parsed = _parse(answer)
    except (MemoryError, RecursionError):
        raise
    except Exception:  # noqa: BLE001 - malformed LaTeX from the policy: compared as a string below
        answer_parsed = []
    if not answer_parsed:
        same = "".join(gold.split()) == "".join(answer.split())
        return ["equal" if same else "different", "answer is not a parseable expression"]
    # verify(gold, answer): asymmetric on purpose (gold 1<x<2 accepts (1,2), not the reverse).
    for g in gold_parsed:
        for a in answer_parsed:
            try:
                if verify(g, a, timeout_seconds=None, raise_on_error=True):
                    return ["equal", ""]
            except (MemoryError, RecursionError):
                raise
            except Exception:  # noqa: BLE001, S112 - sympy could not compare this pair: try the next one
                continue
    return ["different", ""]


# ----------------------------------------------------------------------------------------------------
# The judge
# ----------------------------------------------------------------------------------------------------


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MathJudge(Judge):
    """Final-answer correctness: strict anchored extraction, exact fast path, math-verify in workers."""

    Params = MathParams
    kind = "rule"
    required_metadata = ("answer",)
    description = "Final answer (The final answer is X / \\boxed{X} / #### X) equals the gold answer."

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._pool_lock = threading.Lock()
        self._pool: Any = None  # a cgpo_judges._workers.WorkerPool, created on first need

    @classmethod
    def metadata_problem(cls, metadata: Mapping[str, Any]) -> str | None:
        """The gold answer must be present and parse (else every sample of the row is -1)."""
        problem = super().metadata_problem(metadata)
        if problem is None and gold_answer(metadata["answer"]) is None:
            problem = f"gold answer {_short(repr(metadata['answer']))} cannot be parsed"
        return problem

    def _workers(self) -> Any:
        from cgpo_judges._workers import WorkerPool

        with self._pool_lock:
            if self._pool is None:
                p: MathParams = self.params
                self._pool = WorkerPool(
                    f"{__name__}:_worker_compare",
                    setup=f"{__name__}:_worker_setup",
                    num_workers=p.num_workers or min(2, os.cpu_count() or 1),
                    timeout_seconds=p.timeout_seconds,
                    memory_limit_mb=p.memory_limit_mb,
                )
            return self._pool

    def warm_up(self) -> None:
        """Start the math-verify workers now (each imports sympy: about 2.7 s), not on the first symbolic answer."""
        pool = self._workers()
        # One trivial comparison per worker starts them all. A failure here is not raised: the same failure
        # recurs on the first real call, which turns it into -1 verdicts with the reason.
        pool.map([("1/2", "0.5")] * pool.num_workers)

    def close(self) -> None:
        """Kill the worker processes (a later call starts new ones)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def judge_one_in_process(self, completion: str, gold: Any) -> Verdict | tuple[str, str]:
        """Everything that needs no worker: a verdict, or the ``(gold, answer)`` strings to compare."""
        p: MathParams = self.params
        gold_text = gold_answer(gold)
        if gold_text is None:
            return failed(f"gold answer {_short(repr(gold))} cannot be parsed")
        try:
            found = _EXTRACTORS[p.answer_format](completion, p.max_answer_chars)
        except TooLong:
            return failed(f"extracted answer is longer than max_answer_chars={p.max_answer_chars}")
        if found.answer is None:
            return violated(found.problem)
        answer = found.answer
        for other in found.others:
            if not _same_answer(other, answer):
                return violated(f"two different final answers: {_short(other, 30)!r} and {_short(answer, 30)!r}")
        gold_norm, answer_norm = strip_percent(gold_text), strip_percent(answer)
        gold_value, answer_value = plain_number(gold_norm), plain_number(answer_norm)
        if gold_value is not None and answer_value is not None:
            if gold_value == answer_value:
                return satisfied(f"answer {_short(answer)} equals gold")
            return violated(f"answer {_short(answer)} != gold {_short(gold_text)}")
        return gold_norm.strip(), answer_norm.strip()

    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        """One verdict per sample; only answers that are not plain numbers go to the workers.

        Identical (gold, answer) pairs in a batch (common with K samples per prompt) are sent once.
        """
        verdicts: list[Verdict | None] = [None] * len(completions)
        jobs: dict[tuple[str, str], list[int]] = {}
        for i, (completion, meta) in enumerate(zip(completions, metadata, strict=True)):
            if "answer" not in meta:
                verdicts[i] = failed("metadata has no 'answer' (the gold answer)")
                continue
            if not isinstance(completion, str):
                verdicts[i] = failed(f"completion is {type(completion).__name__}, not a string")
                continue
            outcome = self.judge_one_in_process(completion, meta["answer"])
            if isinstance(outcome, Verdict):
                verdicts[i] = outcome
            else:
                jobs.setdefault(outcome, []).append(i)
        if jobs:
            pairs = list(jobs)
            for pair, result in zip(pairs, self._workers().map(pairs), strict=True):
                verdict = self._from_worker(pair, result)
                for i in jobs[pair]:
                    verdicts[i] = verdict
        return [v if v is not None else failed("internal: no verdict") for v in verdicts]

    def _from_worker(self, pair: tuple[str, str], result: Any) -> Verdict:
        gold, answer = pair
        if not result.ok:
            return failed(f"math-verify {result.error}: {result.detail}"[:300])
        status, detail = result.value
        if status == "equal":
            return satisfied(f"answer {_short(answer)} is equivalent to gold")
        if status == "gold_unparseable":
            return failed(f"gold answer {_short(gold)} cannot be parsed ({detail})")
        note = f" ({detail})" if detail else ""
        return violated(f"answer {_short(answer)} is not equivalent to gold {_short(gold)}{note}")
