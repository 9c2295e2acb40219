"""Synthetic IFEval-style training prompts: IFEval's instruction ids and kwargs over base prompts of our own.

IFEval (541 prompts) is an evaluation set, so the instruction-following task cannot train on it. This module
writes training prompts that carry the same machine-checkable instructions (IFEval's ``instruction_id_list``
and ``kwargs``, all 25 ids) over base requests written for cgpo, none of them taken from IFEval. Every row is
verified before it is written: the IFEval judge (:mod:`cgpo_judges.ifeval`) must accept its ids and kwargs,
and no row may equal or nearly equal an IFEval prompt (:class:`PromptIndex`; a test checks all 541).

The instruction sentences follow the wording of IFEval's own instruction descriptions
(google-research ``instruction_following_eval/instructions.py``, Apache-2.0), so a policy trained here meets
the same phrasing at evaluation time; the requests they attach to are different.

The output is deterministic for a seed::

    python -m cgpo.synthetic_ifeval tasks/data/ifeval_train.jsonl --count 2000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

Instruction = tuple[str, str, dict[str, Any]]  # (instruction id, sentence for the prompt, kwargs)
Builder = Callable[[random.Random, str], tuple[str, dict[str, Any]]]

#: Requests written for cgpo (not IFEval's); each becomes a prompt with one to three instructions attached.
BASE_PROMPTS: tuple[str, ...] = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold.",
    "Describe a day in the life of a beekeeper in the mountains.",
    "Write a letter to a neighbour asking to borrow a ladder for the weekend.",
    "Give advice to a student who is about to start learning the violin.",
    "Summarize the main causes of ocean tides for a curious teenager.",
    "Write a product description for a solar-powered camping lantern.",
    "Compose a poem about the first snowfall in a small town.",
    "Explain why bread rises when it is baked.",
    "Write a review of an imaginary restaurant that serves only soup.",
    "Describe how to plant and care for a tomato seedling.",
    "Write a speech for the opening of a community library.",
    "Explain the difference between weather and climate.",
    "Write a job advertisement for a bicycle repair technician.",
    "Tell the story of a cat who wants to become a sailor.",
    "Explain how vaccines train the immune system.",
    "Write an email to a colleague proposing a new meeting schedule.",
    "Describe the water cycle as if you were a raindrop.",
    "Give tips for staying focused while working from home.",
    "Write a short biography of a fictional inventor named Mara Quill.",
    "Explain how a bill becomes a law in a typical parliament.",
    "Write a dialogue between a robot and a gardener about patience.",
    "Describe the benefits of learning a second language as an adult.",
    "Write a travel guide entry for a fictional island called Verrano.",
    "Explain how compound interest works with a simple example.",
    "Write a thank-you note to a teacher who helped you prepare for an exam.",
    "Describe what happens inside a volcano before it erupts.",
    "Write a pitch for a mobile app that helps people share leftover food.",
    "Explain the rules of chess to someone who has never played a board game.",
    "Write a diary entry of an astronaut on the first night in orbit.",
    "Describe how honey is made, from flower to jar.",
    "Write a motivational message for a running club before a marathon.",
    "Explain why the sky looks red at sunset.",
    "Write a fairy tale about a river that forgot how to flow.",
    "Give a beginner's overview of how computer passwords are stored safely.",
    "Describe the life cycle of a monarch butterfly.",
    "Write a complaint to a bus company about a late morning service.",
    "Explain what a budget is and how a family might make one.",
    "Write a story about two friends who build a treehouse.",
    "Describe the sounds of a busy train station at rush hour.",
    "Explain how wind turbines turn moving air into electricity.",
    "Write an invitation to a neighbourhood picnic in the park.",
    "Give advice on how to prepare for a job interview at a bakery.",
    "Write a short myth explaining why owls are awake at night.",
    "Explain how recycling plastic bottles works.",
    "Describe an ideal weekend for someone who loves museums.",
    "Write a newsletter introduction for a school science fair.",
    "Explain the basic idea of supply and demand with an example about umbrellas.",
    "Write a bedtime story about a dragon who is afraid of the dark.",
    "Describe how to make a simple vegetable soup.",
    "Write a persuasive paragraph about why cities should plant more trees.",
    "Explain how a compass finds north.",
    "Write a letter from a grandmother to her grandson who just moved abroad.",
    "Describe the history of the bicycle in broad strokes.",
    "Give tips for taking better photos with a phone camera.",
    "Write a scene where a detective solves a mystery in a bakery.",
    "Explain why we have leap years.",
    "Write an announcement for a new recycling programme at an office.",
    "Describe the feeling of swimming in a cold lake in the morning.",
    "Explain what machine translation is to a group of retirees.",
    "Write a short play about a lost umbrella looking for its owner.",
    "Give a step-by-step plan for learning to juggle three balls.",
    "Describe the role of bees in growing fruit.",
    "Write a note to a roommate about sharing household chores.",
    "Explain how glaciers shape valleys over thousands of years.",
    "Write a welcome message for new members of a chess club.",
    "Describe a market in a coastal town on a summer morning.",
    "Explain how a thermometer measures temperature.",
    "Write a limerick about a forgetful postman.",
    "Give advice to someone adopting their first dog.",
    "Write a description of a futuristic kitchen in the year 2150.",
    "Explain why some metals rust and others do not.",
)

#: Yes/no questions of our own, for ``detectable_format:constrained_response`` (it needs a yes/no answer).
YES_NO_QUESTIONS: tuple[str, ...] = (
    "Is it a good idea to water houseplants every single day?",
    "Can a person learn to play the piano after the age of sixty?",
    "Should children learn to cook at school?",
    "Is a bicycle a practical way to commute in a rainy city?",
    "Can reading fiction improve empathy?",
    "Is it safe to swim right after eating a large meal?",
    "Should public parks stay open all night?",
    "Can cats be trained to walk on a leash?",
    "Is it worth repairing an old washing machine instead of buying a new one?",
    "Should homework be banned in primary schools?",
)

WORDS = (
    "harbor", "lantern", "meadow", "compass", "orchard", "velvet", "pebble", "thunder", "maple", "harvest",
    "whistle", "canyon", "ribbon", "saddle", "glacier", "mosaic", "anchor", "sparrow", "quilt", "ember",
)  # fmt: skip
FORBIDDEN = ("very", "really", "basically", "thing", "stuff", "nice", "good", "just", "actually", "literally")
END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
               "That is all for today.", "Thank you for reading.")  # fmt: skip
LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch"}
RELATIONS = ("less than", "at least")


def _existence(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    words = rng.sample(WORDS, rng.choice((1, 2, 3)))
    listed = ", ".join(f'"{w}"' for w in words)
    return f"Include the keywords {listed} in the response.", {"keywords": words}


def _frequency(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    word, relation, n = rng.choice(WORDS), rng.choice(RELATIONS), rng.randint(2, 5)
    sentence = f'In your response, the word "{word}" should appear {relation} {n} times.'
    return sentence, {"keyword": word, "frequency": n, "relation": relation}


def _forbidden(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    words = rng.sample(FORBIDDEN, rng.choice((2, 3)))
    listed = ", ".join(words)
    return f"Do not include the words {listed} in the response.", {"forbidden_words": words}


def _letters(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    # "less than" only for rare letters, so that it stays satisfiable beside a word-count instruction.
    relation = rng.choice(RELATIONS)
    letter = rng.choice("abdegilmnoprstuy" if relation == "at least" else "jkqvxz")
    n = rng.randint(3, 12) if relation == "at least" else rng.randint(3, 8)
    sentence = f"In your response, the letter {letter} should appear {relation} {n} times."
    return sentence, {"letter": letter, "let_frequency": n, "let_relation": relation}


def _language(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    code = rng.choice(sorted(LANGUAGES))
    sentence = f"Your ENTIRE response should be in {LANGUAGES[code]} language, no other language is allowed."
    return sentence, {"language": code}


def _sentences(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    relation = rng.choice(RELATIONS)
    n = rng.randint(2, 6) if relation == "at least" else rng.randint(4, 10)
    return f"Your response should contain {relation} {n} sentences.", {"num_sentences": n, "relation": relation}


def _words(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    relation = rng.choice(RELATIONS)
    n = rng.choice((50, 80, 100, 150)) if relation == "at least" else rng.choice((60, 100, 150, 200))
    return f"Answer with {relation} {n} words.", {"num_words": n, "relation": relation}


def _paragraphs(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    n = rng.randint(2, 5)
    sentence = f"There should be {n} paragraphs. Paragraphs are separated with the markdown divider: ***"
    return sentence, {"num_paragraphs": n}


def _nth_first_word(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    n = rng.randint(2, 5)
    nth = rng.randint(1, n)
    word = rng.choice(("today", "first", "however", "meanwhile", "finally", "imagine"))
    sentence = (
        f"There should be {n} paragraphs. Paragraphs and only paragraphs are separated with each other by two new "
        f"lines as if it was '\\n\\n' in python. Paragraph {nth} must start with word {word}."
    )
    return sentence, {"num_paragraphs": n, "nth_paragraph": nth, "first_word": word}


def _placeholders(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    n = rng.randint(1, 4)
    sentence = (
        f"The response must contain at least {n} placeholders represented by square brackets, such as [address]."
    )
    return sentence, {"num_placeholders": n}


def _postscript(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    marker = rng.choice(("P.S.", "P.P.S"))
    ending = "" if marker.endswith(".") else "."  # "P.S." ends the sentence itself
    sentence = f"At the end of your response, please explicitly add a postscript starting with {marker}{ending}"
    return sentence, {"postscript_marker": marker}


def _bullets(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    n = rng.randint(2, 6)
    sentence = (
        f"Your answer must contain exactly {n} bullet points. Use the markdown bullet points such as:\n"
        "* This is point 1.\n* This is point 2"
    )
    return sentence, {"num_bullets": n}


def _constrained(_: random.Random, __: str) -> tuple[str, dict[str, Any]]:
    options = "('My answer is yes.', 'My answer is no.', 'My answer is maybe.')"
    return f"Answer with one of the following options: {options}", {}


def _highlights(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    n = rng.randint(1, 4)
    sentence = f"Highlight at least {n} sections in your answer with markdown, i.e. *highlighted section*."
    return sentence, {"num_highlights": n}


def _sections(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    splitter, n = rng.choice(("Section", "SECTION", "PART", "Part")), rng.randint(2, 4)
    sentence = (
        f"Your response must have {n} sections. Mark the beginning of each section with {splitter} X, such as:\n"
        f"{splitter} 1\n[content of section 1]\n{splitter} 2\n[content of section 2]"
    )
    return sentence, {"section_spliter": splitter, "num_sections": n}


def _json(_: random.Random, __: str) -> tuple[str, dict[str, Any]]:
    return "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.", {}


def _title(_: random.Random, __: str) -> tuple[str, dict[str, Any]]:
    return "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.", {}


def _two_responses(_: random.Random, __: str) -> tuple[str, dict[str, Any]]:
    return (
        "Give two different responses. Responses and only responses should be separated by 6 asterisk symbols: ******.",
        {},
    )


def _repeat(_: random.Random, base: str) -> tuple[str, dict[str, Any]]:
    sentence = (
        "First repeat the request word for word without change, then give your answer (1. do not say any words or "
        "characters before repeating the request; 2. the request you need to repeat does not include this sentence)"
    )
    return sentence, {"prompt_to_repeat": base}


def _end(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    phrase = rng.choice(END_PHRASES)
    return f'Finish your response with this exact phrase "{phrase}". No other words should follow this phrase.', {
        "end_phrase": phrase
    }


def _capital_words(rng: random.Random, _: str) -> tuple[str, dict[str, Any]]:
    relation, n = rng.choice(RELATIONS), rng.randint(2, 6)
    sentence = f"In your response, words with all capital letters should appear {relation} {n} times."
    return sentence, {"capital_frequency": n, "capital_relation": relation}


def _fixed(sentence: str) -> Builder:
    return lambda _rng, _base: (sentence, {})


BUILDERS: dict[str, Builder] = {
    "keywords:existence": _existence,
    "keywords:frequency": _frequency,
    "keywords:forbidden_words": _forbidden,
    "keywords:letter_frequency": _letters,
    "language:response_language": _language,
    "length_constraints:number_sentences": _sentences,
    "length_constraints:number_words": _words,
    "length_constraints:number_paragraphs": _paragraphs,
    "length_constraints:nth_paragraph_first_word": _nth_first_word,
    "detectable_content:number_placeholders": _placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _bullets,
    "detectable_format:constrained_response": _constrained,
    "detectable_format:number_highlighted_sections": _highlights,
    "detectable_format:multiple_sections": _sections,
    "detectable_format:json_format": _json,
    "detectable_format:title": _title,
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat,
    "startend:end_checker": _end,
    "change_case:capital_word_frequency": _capital_words,
    "change_case:english_capital": _fixed("Your entire response should be in English, and in all capital letters."),
    "change_case:english_lowercase": _fixed(
        "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."
    ),
    "punctuation:no_comma": _fixed("In your entire response, refrain from the use of any commas."),
    "startend:quotation": _fixed("Wrap your entire response with double quotation marks."),
}

#: Instruction ids that cannot be satisfied together (one of each pair at most per prompt).
_CASE = {"change_case:english_capital", "change_case:english_lowercase", "change_case:capital_word_frequency"}
_LAYOUT = {
    "length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
    "detectable_format:multiple_sections", "combination:two_responses",
}  # fmt: skip
_ALONE = {"detectable_format:constrained_response"}  # a fixed one-sentence answer leaves room for nothing else
_CONFLICTS: dict[str, set[str]] = {
    "detectable_format:json_format": set(BUILDERS) - {"keywords:existence", "keywords:forbidden_words"},
    "language:response_language": _CASE | {
        "keywords:existence", "keywords:frequency", "keywords:letter_frequency", "startend:end_checker",
        "combination:repeat_prompt",
    },
    "combination:repeat_prompt": _CASE | _LAYOUT | {"startend:quotation", "punctuation:no_comma", "detectable_format:title"},
    "startend:quotation": {"startend:end_checker", "combination:two_responses"},
    "startend:end_checker": {"detectable_content:postscript"},
    "length_constraints:number_words": {"length_constraints:number_sentences"},
    # The section splitter is matched case-sensitively, so a case rule could contradict it.
    "detectable_format:multiple_sections": _CASE | (_LAYOUT - {"detectable_format:multiple_sections"}),
    **{iid: (_CASE - {iid}) for iid in _CASE},
    **{iid: (_LAYOUT - {iid}) for iid in _LAYOUT},
}  # fmt: skip


def conflicts(a: str, b: str) -> bool:
    """Whether instructions ``a`` and ``b`` may not appear in one prompt (the relation is symmetric)."""
    return a == b or b in _CONFLICTS.get(a, set()) or a in _CONFLICTS.get(b, set())


def _pick_ids(rng: random.Random) -> list[str]:
    """One to three compatible instruction ids (or the constrained-response id alone)."""
    count = rng.choices((1, 2, 3), weights=(4, 4, 2))[0]
    candidates = sorted(set(BUILDERS) - _ALONE)
    chosen: list[str] = []
    while len(chosen) < count:
        options = [iid for iid in candidates if not any(conflicts(iid, c) for c in chosen)]
        if not options:
            break
        chosen.append(rng.choice(options))
    return chosen


def make_row(rng: random.Random, key: int) -> dict[str, Any]:
    """One prompt: a base request (or, for one in 25, a yes/no question) with its instructions and kwargs."""
    if rng.random() < 1 / 25:
        base, ids = rng.choice(YES_NO_QUESTIONS), ["detectable_format:constrained_response"]
    else:
        base, ids = rng.choice(BASE_PROMPTS), _pick_ids(rng)
    sentences, kwargs = [], []
    for iid in ids:
        sentence, args = BUILDERS[iid](rng, base)
        sentences.append(sentence)
        kwargs.append(args)
    return {"key": key, "prompt": " ".join([base, *sentences]), "instruction_id_list": ids, "kwargs": kwargs}


def normalize(text: str) -> str:
    """Lower case, words only: the form in which two prompts are compared."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


#: Word-set Jaccard similarity from which two prompts count as near duplicates.
NEAR_DUPLICATE_JACCARD = 0.8


class PromptIndex:
    """Prompts to stay away from, normalized once, answering :meth:`near` for a candidate prompt."""

    def __init__(self, prompts: Iterable[str]) -> None:
        self._forms = [(text, set(text.split())) for text in map(normalize, prompts)]

    def near(self, prompt: str) -> str | None:
        """The first stored prompt (normalized) that ``prompt`` nearly duplicates, or ``None``.

        Near: equal after :func:`normalize`, one contained in the other, or a word-set Jaccard similarity of
        at least :data:`NEAR_DUPLICATE_JACCARD`.
        """
        text = normalize(prompt)
        words = set(text.split())
        for other, other_words in self._forms:
            if text == other or (text and text in other) or (other and other in text):
                return other
            union = words | other_words
            if union and len(words & other_words) / len(union) >= NEAR_DUPLICATE_JACCARD:
                return other
        return None


def _verify(row: dict[str, Any]) -> None:
    """The IFEval judge must accept the row's ids and kwargs (a KwargError would be a bug in a builder)."""
    from cgpo_judges._ifeval_checks import build_check

    for iid, args in zip(row["instruction_id_list"], row["kwargs"], strict=True):
        build_check(iid, args)


def generate(count: int, *, seed: int = 0, exclude: Iterable[str] = ()) -> list[dict[str, Any]]:
    """``count`` distinct rows, deterministic for ``seed``, none a near duplicate of a prompt in ``exclude``.

    Raises:
        ValueError: the base prompts cannot give ``count`` distinct rows.
    """
    rng = random.Random(f"synthetic-ifeval:{seed}")
    excluded = PromptIndex(exclude)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > 20 * count:
            raise ValueError(f"only {len(rows)} distinct prompts after {attempts} draws; ask for fewer")
        row = make_row(rng, key=len(rows))
        if row["prompt"] in seen or excluded.near(row["prompt"]) is not None:
            continue
        _verify(row)
        seen.add(row["prompt"])
        rows.append(row)
    return rows


def write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` as JSONL atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + f".tmp-{os.getpid()}")
    staging.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    staging.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cgpo.synthetic_ifeval", description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path, help="JSONL file to write")
    parser.add_argument("--count", type=int, default=2000, help="number of prompts (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--exclude", type=Path, default=None, help="JSONL of prompts to stay away from (IFEval's)")
    args = parser.parse_args(argv)
    exclude: list[str] = []
    if args.exclude is not None:
        exclude = [json.loads(line)["prompt"] for line in args.exclude.read_text(encoding="utf-8").splitlines()]
    write_jsonl(generate(args.count, seed=args.seed, exclude=exclude), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
