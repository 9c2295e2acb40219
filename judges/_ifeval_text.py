r"""Text utilities of the IFEval judge: word counting, sentence splitting, all-caps word counting.

IFEval's reference code counts sentences with NLTK's Punkt model and tokenizes words for
``change_case:capital_word_frequency`` with ``nltk.word_tokenize``. The reference verdicts we check against
(``../shared/data/ifeval/reference_verdicts.jsonl``) were produced with an *untrained* Punkt tokenizer
(``PunktSentenceTokenizer()``: no learned abbreviations, collocations, sentence starters or orthographic
statistics). Without learned statistics Punkt reduces to a handful of fixed rules, written out below, so we
reproduce its decisions exactly without NLTK or any data download:

1. *Candidates.* A ``.``, ``?`` or ``!`` is a candidate boundary when it is followed by a "non-word"
   punctuation mark (closing or opening bracket, quote, ``*``, ``:``, ``@``, ``?``, ``!``) or by whitespace
   and another token. Of several candidates inside one whitespace-free word only the last is considered.
2. *Decision.* The candidate's context (its word, the mark, and what follows) is cut into Punkt word tokens.
   ``?``, ``!`` and a lone ``.`` always break. A token ending in a single ``.`` breaks unless it is an
   *initial* (one letter and a period) or a *number* and the next token starts lower-case, is one of
   ``;:,.!?``, or (initials only) starts upper-case. Ellipses (``..`` and longer) never break.
   Consequently "e.g." and "Mr." end a sentence, while "J. Smith" and "Step 1. then" do not.
3. *Realignment.* Closing quotes and brackets after a boundary move to the sentence before it, and empty
   sentences are dropped.

The regex sentence splitter of IFEval's ``instructions_util.split_into_sentences`` (abbreviation lists, "Ph.D",
websites) is a different algorithm that the reference's ``count_sentences`` never calls; we do not use it.

Word counting for ``length_constraints:number_words`` is the reference's ``\w+`` regex tokenizer.
:func:`count_capital_words` emulates ``nltk.word_tokenize`` as far as it decides which tokens are all
upper-case: it splits at the same punctuation and contractions (``DON'T`` -> ``DO`` + ``N'T``; ``AI's`` ->
``AI`` + ``'s``; ``CANNOT`` -> ``CAN`` + ``NOT``) and keeps hyphenated and slashed words whole.

Checked against NLTK 3.10.4 (untrained Punkt) on the 541 GPT-4 responses, their 8 loose variants and the 541
prompts (4,869 texts): sentence splits identical for all, all-caps counts identical for all. On 20,000 random
strings of punctuation clusters, words and contractions the sentence splits are identical and the all-caps
counts differ for 27, all with a clitic directly before a closing quote and more punctuation
(``AI's'?``); NLTK's ``'tis``/``'twas`` rules are not reproduced.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["count_capital_words", "count_sentences", "count_words", "split_sentences"]

_WORD = re.compile(r"\w+")


# ASCII word characters (what \w matches among ASCII characters) -> "a", every other ASCII character -> " ".
_ASCII_WORDS = {c: "a" if chr(c).isalnum() or chr(c) == "_" else " " for c in range(128)}


def count_words(text: str) -> int:
    r"""Number of ``\w+`` runs (letters, digits, underscore; Unicode-aware), IFEval's word count.

    For ASCII text the runs are counted as the words of a copy with word characters turned into "a" and all
    others into spaces (the same count, several times faster than the regex).
    """
    if text.isascii():
        return len(text.translate(_ASCII_WORDS).split())
    return len(_WORD.findall(text))


# ---------------------------------------------------------------------------------------------------------
# Sentence splitting (untrained Punkt, rules above)
# ---------------------------------------------------------------------------------------------------------

# Characters Punkt treats as "non-word": they end a word token and may follow a sentence-final mark.
_NON_WORD = r"[)\";}\]*:@'({\[\u2018\u2019\u201c\u201d\xab\xbb?!]"
# Multi-character punctuation kept as one token: dashes, ellipses, spaced ellipses (". . .").
_MULTI = r"(?:-{2,}|\.{2,}|(?:\.\s){2,}\.)"
_CANDIDATE = re.compile(rf"[.?!](?=(?P<after>{_NON_WORD}|\s+(?P<next>\S+)))")
# Punkt's word tokens: multi-char punctuation; or a word that does not start with an opening/other mark and
# runs to whitespace, a non-word mark, multi-char punctuation, or a word-final comma; or any single character.
_PUNKT_TOKEN = re.compile(
    rf"""{_MULTI}
    | (?=[^(\"`{{\[:;&\#*@)}}\]\-,])\S+?(?=\s|$|{_NON_WORD}|{_MULTI}|,(?=$|\s|{_NON_WORD}|{_MULTI}))
    | \S""",
    re.VERBOSE,
)
_ELLIPSIS = re.compile(r"\.\.+$")
_INITIAL = re.compile(r"[^\W\d]\.$")
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.-]*\.?$")
_NOT_SENTENCE_STARTERS = frozenset(";:,.!?")
_REALIGN = re.compile("[\"')\\]}\u2018\u2019\u201c\u201d\xab\xbb]+?(?:\\s+|(?=--)|$)", re.MULTILINE)
# Punkt looks for the word before a candidate with str-level whitespace (ASCII), not Unicode \s.
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"


def _token_breaks(tok: str, nxt: str) -> bool:
    """Whether untrained Punkt marks ``tok`` (followed by token ``nxt``) as a sentence break."""
    if tok in ("?", "!", "."):
        return True
    if not tok.endswith(".") or tok.endswith("..") or _ELLIPSIS.match(tok):
        return False
    lowered = tok.lower()
    typ = "##number##" if _NUMBER.match(lowered) else lowered[:-1]
    initial = _INITIAL.match(tok) is not None
    # Orthographic heuristic with no statistics: punctuation and lower-case words cannot start a sentence,
    # and an initial followed by a capitalised word is taken as part of a name.
    next_cannot_start = nxt in _NOT_SENTENCE_STARTERS or nxt[0].islower() or (initial and nxt[0].isupper())
    return not ((initial or typ == "##number##") and next_cannot_start)


def _context_breaks(context: str) -> bool:
    """Whether some token of ``context`` is a sentence break followed by another token."""
    tokens = [tok for line in context.split("\n") if line.strip() for tok in _PUNKT_TOKEN.findall(line)]
    return any(_token_breaks(tokens[i], tokens[i + 1]) for i in range(len(tokens) - 1))


def _last_ascii_whitespace_finder(text: str) -> Callable[[int, int], int]:
    """``find(start, stop)``: the index of the last ASCII whitespace in ``text[start:stop]``, or -1.

    Only the whitespace characters that occur in ``text`` are searched for (usually space and newline).
    """
    present = [ch for ch in _ASCII_WHITESPACE if ch in text]
    if not present:
        return lambda start, stop: -1
    if len(present) == 1:
        (only,) = present
        return lambda start, stop: text.rfind(only, start, stop)
    if len(present) == 2:
        a, b = present
        return lambda start, stop: max(text.rfind(a, start, stop), text.rfind(b, start, stop))
    return lambda start, stop: max(text.rfind(ch, start, stop) for ch in present)


def _boundaries(text: str) -> list[tuple[int, int]]:
    """Sentence spans before realignment, as untrained Punkt computes them."""
    # The word before each candidate starts after the last whitespace; when there is none since the previous
    # candidate, both candidates share one word and only the later one is decided (Punkt's overlap rule).
    last_whitespace = _last_ascii_whitespace_finder(text)
    to_decide: list[tuple[re.Match[str], int]] = []
    prev: re.Match[str] | None = None
    prev_start = prev_stop = 0
    for match in _CANDIDATE.finditer(text):
        stop = match.start()
        ws = last_whitespace(prev_stop, stop)
        word_start = ws + 1 if ws > prev_stop else prev_start
        if prev is not None and prev_stop <= word_start:
            to_decide.append((prev, prev_start))
        prev, prev_start, prev_stop = match, word_start, stop
    if prev is not None:
        to_decide.append((prev, prev_start))

    spans: list[tuple[int, int]] = []
    last_break = 0
    for match, word_start in to_decide:
        # "?" and "!" are always tokens of their own and always break when something follows (a candidate
        # always has a following token). So does a period after a word of two or more letters: "word." is one
        # token, neither an initial nor a number. Only other periods need their context tokenized.
        word = text[word_start : match.start()]
        if (
            match.group() != "."
            or (len(word) > 1 and word.isalpha())
            or _context_breaks(word + "." + match.group("after"))
        ):
            end = match.end()
            spans.append((last_break, end))
            following = match.start("next")  # -1 when the candidate is followed by a non-word mark
            last_break = following if following >= 0 else end
    spans.append((last_break, len(text.rstrip())))
    return spans


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences exactly as NLTK's untrained ``PunktSentenceTokenizer().tokenize`` does."""
    spans = _boundaries(text)
    out: list[str] = []
    shift = 0
    for i, (start, stop) in enumerate(spans):
        start += shift
        if i + 1 == len(spans):
            if start < stop:
                out.append(text[start:stop])
            break
        nxt_start, nxt_stop = spans[i + 1]
        moved = _REALIGN.match(text, nxt_start, nxt_stop)
        if moved:
            # Closing punctuation after the boundary belongs to this sentence; the next one starts after it.
            out.append(text[start : nxt_start + len(moved.group(0).rstrip())])
            shift = moved.end() - nxt_start
        else:
            shift = 0
            if start < stop:
                out.append(text[start:stop])
    return out


def count_sentences(text: str) -> int:
    """Number of sentences per :func:`split_sentences`."""
    return len(split_sentences(text))


# ---------------------------------------------------------------------------------------------------------
# All-caps word counting (nltk.word_tokenize emulation, only as far as upper-case tokens are concerned)
# ---------------------------------------------------------------------------------------------------------

# A sentence-final period (possibly before closing quotes/brackets) is its own token in NLTK; removing it
# lets the contraction rules below see the end of the word ("IT'S." -> "IT" + "'S").
_CLOSERS = frozenset("])}>\"'\u00bb\u201d\u2019 ")


def _drop_final_period(sentence: str) -> str:
    r"""Replace by a space the period that ends the sentence before closing marks and whitespace, if any.

    NLTK's rule is ``([^.])(\.)([\])}>"'»”’ ]*+)\s*$``; scanning from the right keeps it linear (the
    regex tries every period of the sentence).
    """
    end = len(sentence.rstrip())
    while end > 0 and sentence[end - 1] in _CLOSERS:
        end -= 1
    if end >= 2 and sentence[end - 1] == "." and sentence[end - 2] != ".":
        return sentence[: end - 1] + " " + sentence[end:]
    return sentence


# Marks NLTK always cuts out as separate tokens. They carry no case, so replacing them by a space changes
# which letters share a token exactly as NLTK's padding does. ``,`` and ``:`` stay attached before a digit.
_SEPARATORS = re.compile(
    "[\0\u00ab\u201c\u2018\u201e`\"\u00bb\u201d\u2019;@#$%&\u2012-\u2015?!*\\[\\](){}<>]|--|\\.{2,}|''|[:,](?!\\d)"
)
# An opening double quote (at the start, or after a space or opening bracket) is not a closing mark for
# _drop_final_period; NLTK rewrites it to ``\`\``` first.
_OPENING_QUOTE = re.compile("^\"|(?<=[ (\\[{<])(?:\"|'')")
# A quote after a non-quote and before a space is a closing quote: split it off first, so that a clitic
# before it ends the word ("AI's' " -> "AI's ' ").
_CLOSING_SINGLE = re.compile(r"(?<=[^'])'(?=\s)")
# A quote that opens a word (after a non-word character, not a clitic like 's) is split from it.
_LEADING_SINGLE = re.compile(r"(?<!\w)'(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", re.IGNORECASE)
_CLITIC_1 = re.compile(r"(?<=[^' ])('[sSmMdD]|')(?= )")
_CLITIC_2 = re.compile(r"(?<=[^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T)(?= )")
_FUSED = [
    (trigger, re.compile(pattern, re.IGNORECASE))
    for trigger, pattern in (
        ("cannot", r"\b(can)(not)\b"),
        ("d'ye", r"\b(d)('ye)\b"),
        ("gimme", r"\b(gim)(me)\b"),
        ("gonna", r"\b(gon)(na)\b"),
        ("gotta", r"\b(got)(ta)\b"),
        ("lemme", r"\b(lem)(me)\b"),
        ("more'n", r"\b(more)('n)\b"),
        ("wanna", r"\b(wan)(na)(?=\s)"),
    )
]


def count_capital_words(text: str) -> int:
    """Number of ``nltk.word_tokenize`` tokens (untrained Punkt) for which ``str.isupper()`` holds."""
    # Sentence-level rules first (NLTK tokenizes each Punkt sentence on its own), then the rest on all
    # sentences at once, joined by NUL: not whitespace, so a quote ending a sentence is not a "closing quote
    # before a space" (as in NLTK, where the sentence's padding comes later); a separator afterwards.
    parts = []
    for sentence in split_sentences(text):
        if '"' in sentence or "''" in sentence:
            sentence = _OPENING_QUOTE.sub("`", sentence)
        if "'" in sentence:
            sentence = _LEADING_SINGLE.sub("' ", sentence)
        if "." in sentence:
            sentence = _drop_final_period(sentence)
        parts.append(sentence)
    joined = "\0".join(parts)
    if "'" in joined:
        joined = _CLOSING_SINGLE.sub(" ' ", joined)
    joined = " " + " ".join(_SEPARATORS.sub(" ", joined).split()) + " "
    if "'" in joined:
        joined = _CLITIC_2.sub(r" \1", _CLITIC_1.sub(r" \1", joined))
    lowered = joined.lower()
    for trigger, fused in _FUSED:
        if trigger in lowered:
            joined = fused.sub(r" \1 \2 ", joined)
    return sum(1 for tok in joined.split() if tok.isupper())
