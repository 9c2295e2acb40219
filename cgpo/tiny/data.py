r"""Synthetic task families the tiny model learns: short enough for a character-level model on a CPU.

Each family yields records ``{"prompt", "completion", ...judge metadata}`` in the formats the built-in
judges read, so the bundled tiny tasks (``tasks/tiny_*.yaml``) exercise the real judges:

* ``arithmetic``: "What is 17+5?" -> ``\boxed{22}`` (math judge, ``answer_format: boxed``; metadata
  ``answer``);
* ``instructions``: a format instruction (quotation, end phrase, title, placeholder) plus
  ``keywords:existence`` for the requested words, in IFEval's own ``instruction_id_list`` / ``kwargs``
  metadata (ifeval judge);
* ``json``: "Give JSON with key cat set to 7." -> ``{"cat": 7}`` (format judge: valid JSON; ifeval judge:
  the key and the value appear);
* ``code``: "Write f(x) that returns x*3." -> a fenced Python function (code judge; metadata ``tests``).

Generation is deterministic for a seed. The held-out evaluation prompts are generated first and excluded
from every training split, so a held-out pass rate measures generalization, not recall.

``python -m cgpo.tiny.data tasks/data`` rewrites the bundled prompt files; a test checks that the committed
files equal this generator's output.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Record = dict[str, Any]

WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "ocean", "maple", "robot",
    "candle", "garden", "pencil", "rocket", "silver", "window", "forest", "island", "marble", "velvet",
    "anchor", "bridge", "castle", "dragon", "falcon", "harbor", "jungle", "meadow", "orange", "planet",
)  # fmt: skip
KEYS = ("cat", "dog", "sun", "sky", "red", "car", "box", "map", "key", "pen")


def arithmetic(rng: random.Random) -> Record:
    # Numbers below 20 and one digit: hard enough that the warm start gets only part of the held-out facts
    # right, small enough that a 1M-parameter character model learns them in a minute of CPU time.
    a, b = rng.randint(0, 19), rng.randint(0, 9)
    if rng.random() < 0.5 or a < b:
        question, answer = f"What is {a}+{b}?", a + b
    else:
        question, answer = f"What is {a}-{b}?", a - b
    return {"prompt": question, "completion": f"\\boxed{{{answer}}}", "answer": str(answer)}


def instructions(rng: random.Random) -> Record:
    # Each prompt carries its format instruction and keywords:existence for its two words, so a reply in the
    # right format with the wrong words is a violation.
    w1, w2 = rng.sample(WORDS, 2)
    kind = rng.randrange(4)
    if kind == 0:
        prompt, completion, rule, kwargs = f"Say {w1} {w2} in double quotes.", f'"{w1} {w2}"', "startend:quotation", {}
    elif kind == 1:
        prompt, completion = f"Say {w1} {w2}, then end with bye.", f"{w1} {w2} bye"
        rule, kwargs = "startend:end_checker", {"end_phrase": "bye"}
    elif kind == 2:
        prompt, completion, rule, kwargs = (
            f"Write {w1} {w2} as a title.",
            f"<<{w1} {w2}>>",
            "detectable_format:title",
            {},
        )
    else:
        prompt, completion = f"Put {w1} {w2} in square brackets.", f"[{w1} {w2}]"
        rule, kwargs = "detectable_content:number_placeholders", {"num_placeholders": 1}
    return {
        "prompt": prompt,
        "completion": completion,
        "instruction_id_list": [rule, "keywords:existence"],
        "kwargs": [kwargs, {"keywords": [w1, w2]}],
    }


def json_object(rng: random.Random) -> Record:
    key, value = rng.choice(KEYS), rng.randint(0, 99)
    return {
        "prompt": f"Give JSON with key {key} set to {value}.",
        "completion": json.dumps({key: value}),
        "key": key,
        "value": value,
        # The format judge checks that the reply is JSON; IFEval's keywords:existence that it has the key and value.
        "instruction_id_list": ["keywords:existence"],
        "kwargs": [{"keywords": [f'"{key}"', str(value)]}],
    }


def code(rng: random.Random) -> Record:
    name, n = rng.choice("fgh"), rng.randint(1, 50)
    op, sym = rng.choice((("times", "*"), ("plus", "+"), ("minus", "-")))
    fn: Callable[[int], int] = {"*": lambda x: x * n, "+": lambda x: x + n, "-": lambda x: x - n}[sym]
    return {
        "prompt": f"Write {name}(x) that returns x {op} {n}.",
        "completion": f"```python\ndef {name}(x):\n    return x{sym}{n}\n```",
        "tests": [f"assert {name}({x}) == {fn(x)}" for x in (3, 10)],
    }


FAMILIES: dict[str, Callable[[random.Random], Record]] = {
    "arithmetic": arithmetic,
    "instructions": instructions,
    "json": json_object,
    "code": code,
}

#: Bundled prompt files per family: (split, seed, number of records). Eval splits come first: they are
#: generated before, and excluded from, the training splits.
SPLITS = (("eval", 1001, 48), ("train", 2002, 256))


def generate(
    family: str, seed: int, count: int, exclude: frozenset[str] | set[str] = frozenset(), *, distinct: bool = True
) -> list[Record]:
    """``count`` records of ``family`` whose prompts are not in ``exclude`` (and differ, when ``distinct``)."""
    rng = random.Random(f"{family}:{seed}")
    out: list[Record] = []
    seen = set(exclude)
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 100 * count:
            raise RuntimeError(f"family {family} cannot produce {count} prompts outside the excluded set")
        record = FAMILIES[family](rng)
        if record["prompt"] not in seen:
            if distinct:
                seen.add(record["prompt"])
            out.append(record)
    return out


def bundled_splits(family: str) -> dict[str, list[Record]]:
    """The bundled eval and train prompt sets of a family (disjoint)."""
    splits: dict[str, list[Record]] = {}
    used: set[str] = set()
    for split, seed, count in SPLITS:
        splits[split] = generate(family, seed, count, used)
        used |= {r["prompt"] for r in splits[split]}
    return splits


#: Share of each family in the warm-start SFT data, relative to the others: arithmetic needs the most practice.
SFT_WEIGHTS = {"arithmetic": 2, "instructions": 1, "json": 1, "code": 1}


def sft_records(seed: int, per_family: int) -> Iterator[Record]:
    """Warm-start SFT data: every family (``per_family`` x its weight), excluding all bundled eval prompts."""
    held_out = {r["prompt"] for family in FAMILIES for r in bundled_splits(family)["eval"]}
    pools = [generate(family, seed, per_family * SFT_WEIGHTS[family], held_out, distinct=False) for family in FAMILIES]
    mixed = [record for pool in pools for record in pool]
    random.Random(f"sft:{seed}").shuffle(mixed)
    yield from mixed


def write_bundled(folder: Path) -> list[Path]:
    """Write ``tiny_<family>_<split>.jsonl`` files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for family in FAMILIES:
        for split, records in bundled_splits(family).items():
            path = folder / f"tiny_{family}_{split}.jsonl"
            path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - a maintenance entry point
    for written_path in write_bundled(Path(sys.argv[1] if len(sys.argv) > 1 else "tasks/data")):
        print(written_path)  # noqa: T201
