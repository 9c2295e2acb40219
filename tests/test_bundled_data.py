"""The bundled public data (GSM8K, HumanEval, IFEval) and the synthetic IFEval-style training prompts.

Checks that the files are the unmodified upstream copies with their licences, that the bundled task YAMLs
read them with training and held-out prompts disjoint, and that no IFEval prompt reaches training data.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from cgpo.config_loader import load_task_config
from cgpo.data import load_records
from cgpo.synthetic_ifeval import BASE_PROMPTS, BUILDERS, YES_NO_QUESTIONS, PromptIndex, conflicts, generate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tasks" / "data"

#: file -> (rows, sha256 of the upstream file, licence file)
PUBLIC = {
    "gsm8k_train.jsonl": (7473, "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", "GSM8K-LICENSE"),
    "gsm8k_test.jsonl": (1319, "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", "GSM8K-LICENSE"),
    "humaneval.jsonl": (164, "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2", "HumanEval-LICENSE"),
    "ifeval_eval.jsonl": (541, "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49", "IFEval-LICENSE"),
}
LICENCE_FIRST_WORDS = {
    "GSM8K-LICENSE": "MIT License",
    "HumanEval-LICENSE": "The MIT License",
    "IFEval-LICENSE": "Apache License",
}


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def ifeval_prompts() -> list[str]:
    return [row["prompt"] for row in _rows("ifeval_eval.jsonl")]


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_files_are_the_upstream_copies_with_their_licence(name):
    rows, sha256, licence = PUBLIC[name]
    assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == sha256
    assert len(_rows(name)) == rows
    assert (DATA / "licenses" / licence).read_text(encoding="utf-8").lstrip().startswith(LICENCE_FIRST_WORDS[licence])
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert f"`{name}`" in readme and sha256 in readme and f"licenses/{licence}" in readme


def test_the_data_readme_names_every_data_file():
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z0-9_]+\.jsonl)`", readme))
    for pattern in re.findall(r"`([a-z0-9_]*\{[a-z0-9_,{}]+\}[a-z0-9_{},]*\.jsonl)`", readme):
        named |= {p.name for p in DATA.glob(re.sub(r"\{[^}]+\}", "*", pattern))}
    assert {p.name for p in DATA.glob("*.jsonl")} <= named


def _task(name: str):
    return load_task_config(REPO / "tasks" / f"{name}.yaml")


def test_gsm8k_trains_on_train_and_evaluates_on_test():
    task = _task("math_gsm8k")
    train, held_out = load_records(task, "train"), load_records(task, "eval")
    assert (len(train), len(held_out)) == (7473, 1319)
    assert not {r.prompt for r in train} & {r.prompt for r in held_out}
    assert all(r.reference and "#### " in r.reference for r in held_out)


def test_humaneval_training_and_held_out_problems_are_disjoint():
    task = _task("code_humaneval")
    train, held_out = load_records(task, "train"), load_records(task, "eval")
    assert (len(train), len(held_out)) == (32, 132)
    assert len({r.prompt for r in train} | {r.prompt for r in held_out}) == 164
    assert {"test", "entry_point"} <= set(held_out[0].metadata)


def test_ifeval_is_held_out_whole_and_never_trained_on(ifeval_prompts):
    task = _task("instruction_following")
    train, held_out = load_records(task, "train"), load_records(task, "eval")
    assert [r.prompt for r in held_out] == ifeval_prompts
    index = PromptIndex(ifeval_prompts)
    near = [(r.prompt, match) for r in train if (match := index.near(r.prompt)) is not None]
    assert not near, f"{len(near)} training prompts equal or nearly equal IFEval prompts, e.g. {near[:2]}"


def test_no_base_request_comes_from_ifeval(ifeval_prompts):
    index = PromptIndex(ifeval_prompts)
    assert [b for b in (*BASE_PROMPTS, *YES_NO_QUESTIONS) if index.near(b) is not None] == []


def test_bundled_synthetic_file_is_what_the_documented_command_writes(ifeval_prompts):
    bundled = _rows("ifeval_train.jsonl")
    assert bundled == generate(2000, seed=0, exclude=ifeval_prompts)
    assert len({r["prompt"] for r in bundled}) == 2000
    assert {iid for r in bundled for iid in r["instruction_id_list"]} == set(BUILDERS)  # all 25 ids


def test_generation_is_seeded_and_rows_are_compatible():
    first, again, other = generate(200, seed=3), generate(200, seed=3), generate(200, seed=4)
    assert first == again and first != other
    for row in first:
        ids = row["instruction_id_list"]
        assert 1 <= len(ids) <= 3 and len(ids) == len(row["kwargs"])
        assert not any(conflicts(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]), ids


def test_the_ifeval_judge_scores_synthetic_prompts_with_real_checks():
    """A response written to follow a row's instructions passes, and a careless one fails."""
    from cgpo_judges.ifeval import IFEvalJudge

    rows = [
        {"prompt": "x", "instruction_id_list": ["keywords:existence", "punctuation:no_comma"],
         "kwargs": [{"keywords": ["harbor"]}, {}]},
        {"prompt": "x", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]},
    ]  # fmt: skip
    judge = IFEvalJudge(mode="strict")
    meta = [{"instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"]} for r in rows]
    good = judge(["x", "x"], ["The harbor is calm tonight.", '"All quoted."'], meta)
    bad = judge(["x", "x"], ["A calm night, quiet.", "Not quoted."], meta)
    assert [v.value for v in good] == [1, 1] and [v.value for v in bad] == [0, 0]
    # Every bundled training row compiles in the judge: an empty response is judged (0 or 1), never failed (-1).
    bundled = _rows("ifeval_train.jsonl")
    verdicts = judge(["x"] * len(bundled), [""] * len(bundled), [
        {"instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"]} for r in bundled
    ])  # fmt: skip
    assert all(v.value in (0, 1) for v in verdicts), next(v.reason for v in verdicts if v.value == -1)


def test_ifeval_records_loaded_through_datasets_judge_like_the_raw_rows(shared_data, ifeval_prompts):
    """The loader fills every kwargs dict with the other instructions' keys as nulls; verdicts must not move."""
    from cgpo_judges.ifeval import IFEvalJudge

    responses = {
        r["prompt"]: r["response"]
        for r in map(json.loads, (shared_data / "ifeval" / "responses_gpt4.jsonl").read_text().splitlines())
    }
    records = load_records(_task("instruction_following"), "eval")
    raw = _rows("ifeval_eval.jsonl")
    judge = IFEvalJudge(mode="strict")
    completions = [responses[r.prompt] for r in records]
    loaded = judge([r.prompt for r in records], completions, [r.metadata for r in records])
    direct = judge(
        ifeval_prompts,
        completions,
        [{"instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"]} for r in raw],
    )
    assert [v.value for v in loaded] == [v.value for v in direct]
    assert sum(v.value == 1 for v in loaded) >= 0.75 * 541  # GPT-4's published strict prompt-level rate is 76.9%
