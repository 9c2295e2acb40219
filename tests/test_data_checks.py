"""``cgpo validate`` reads every row of a task's data: broken files give one line per problem and exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cgpo.cli import main
from cgpo.config_loader import load_task_config
from cgpo.data_checks import MAX_PER_FILE, check_task_data

REPO = Path(__file__).resolve().parent.parent


def task_yaml(tmp_path: Path, base: str, train: list[bytes], eval_rows: list[bytes] | None = None) -> Path:
    """A copy of ``tasks/<base>.yaml`` reading ``train.jsonl`` / ``eval.jsonl`` written from raw lines."""
    (tmp_path / "train.jsonl").write_bytes(b"".join(line + b"\n" for line in train))
    text = (REPO / "tasks" / f"{base}.yaml").read_text()
    text = text.replace(f"data/{base}_train.jsonl", "train.jsonl")
    if eval_rows is None:
        text = text.replace(f"  eval: {{path: data/{base}_eval.jsonl}}\n", "")
    else:
        (tmp_path / "eval.jsonl").write_bytes(b"".join(line + b"\n" for line in eval_rows))
        text = text.replace(f"data/{base}_eval.jsonl", "eval.jsonl")
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return path


def row(**fields: object) -> bytes:
    return json.dumps(fields).encode()


GOOD = row(prompt="What is 1+1?", completion="\\boxed{2}", answer="2")


def test_broken_rows_are_listed_as_file_line_and_validate_exits_2(tmp_path, capsys):
    train = [
        GOOD,
        b'{"prompt": "What is 2+2?", "answer": "4"',  # cut off
        b'{"prompt": "Caf\xe9?", "completion": "x", "answer": "1"}',  # Latin-1, not UTF-8
        b"",  # blank lines hold no row and are skipped, as by the loader
        b'["a", "list"]',
        row(completion="\\boxed{3}", answer="3"),  # no prompt
        row(prompt="   ", completion="\\boxed{3}", answer="3"),
        row(prompt="What is 5+5?", completion="", answer="10"),  # empty gold response
        row(prompt="What is 6+6?", completion="\\boxed{12}", answer=None),  # the math judge needs it
        row(prompt="What is 7+7?", completion="\\boxed{14}", answer="\\boxed{"),  # unparseable gold answer
        row(prompt=7, completion="\\boxed{7}", answer="7"),
    ]
    path = task_yaml(tmp_path, "tiny_arithmetic", train)
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    data = tmp_path / "train.jsonl"
    assert err.splitlines() == [
        f"{data}:2: not valid JSON: Expecting ',' delimiter (column 41)",
        f"{data}:3: not valid UTF-8 (byte 16 of the line); re-encode the file as UTF-8",
        f"{data}:5: expected a JSON object, got list",
        f"{data}:6: prompt field 'prompt' is missing",
        f"{data}:7: prompt field 'prompt' is empty",
        f"{data}:8: reference (a_bar) field 'completion' is empty",
        f"{data}:9: judge 'math' cannot use this row: metadata 'answer' missing or null",
        f"{data}:10: judge 'math' cannot use this row: gold answer '\\\\boxed{{' cannot be parsed",
        f"{data}:11: prompt field 'prompt' must be a string, got int",
    ]
    assert ": ok" not in out


def test_a_clean_file_is_ok_and_train_eval_overlap_is_a_warning_with_counts(tmp_path, capsys):
    shared = row(prompt="What is 3+4?", completion="\\boxed{7}", answer="7")
    train = [GOOD, shared, row(prompt="What is 9-1?", completion="\\boxed{8}", answer="8")]
    held_out = [row(prompt="What is 8+8?", completion="\\boxed{16}", answer="16"), shared]
    path = task_yaml(tmp_path, "tiny_arithmetic", train, held_out)
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: ok (task 'tiny_arithmetic')"
    assert err.splitlines() == [
        (
            f"task tiny_arithmetic: warning: 1 of 2 eval prompts also appear in the train split "
            f"(first: {tmp_path / 'eval.jsonl'}:2 = {tmp_path / 'train.jsonl'}:2); held-out results would be inflated"
        )
    ]


def test_code_metadata_the_judge_cannot_use_is_an_error_and_mbpp_records_are_fine(tmp_path, capsys):
    def code_row(**meta: object) -> bytes:
        return row(prompt="Write f.", completion="def f(): return 1", **meta)

    train = [
        code_row(tests=["assert f() == 1"]),
        code_row(tests=["assert f() == 1"], entry_point="f"),  # MBPP style: accepted
        code_row(tests=[]),
        code_row(tests="assert f() == 1"),
    ]
    path = task_yaml(tmp_path, "tiny_code", train)
    assert main(["validate", str(path)]) == 2
    data = tmp_path / "train.jsonl"
    assert capsys.readouterr().err.splitlines() == [
        f"{data}:3: judge 'code' cannot use this row: metadata 'tests' must be a non-empty list of assert statements",
        f"{data}:4: judge 'code' cannot use this row: metadata 'tests' must be a non-empty list of assert statements",
    ]


def test_a_metadata_column_in_no_row_is_an_error_but_absent_from_some_rows_is_allowed(tmp_path):
    tests = ["assert f() == 1"]
    train = [
        row(prompt="Write f.", completion="x", tests=tests, topic="a"),
        row(prompt="f?", completion="x", tests=tests),
    ]
    path = task_yaml(tmp_path, "tiny_code", train)
    assert "metadata_fields: [tests]\n" in path.read_text()
    path.write_text(path.read_text().replace("metadata_fields: [tests]", "metadata_fields: [tests, topic, level]"))
    problems = [str(p) for p in check_task_data(load_task_config(path))]
    assert problems == [
        f"{tmp_path / 'train.jsonl'}: metadata field 'level' is in no row (task tiny_code: prompts.train)"
    ]


def test_problems_are_capped_per_file_with_a_count_of_the_rest(tmp_path):
    path = task_yaml(tmp_path, "tiny_arithmetic", [GOOD] + [b"{broken"] * (MAX_PER_FILE + 5))
    problems = [str(p) for p in check_task_data(load_task_config(path))]
    assert len(problems) == MAX_PER_FILE + 1
    assert problems[-1] == f"{tmp_path / 'train.jsonl'}: 5 more problems not listed (5 errors)"


@pytest.mark.slow
def test_other_formats_are_read_through_datasets_and_located_by_row(tmp_path):
    path = task_yaml(tmp_path, "tiny_arithmetic", [GOOD])
    csv = tmp_path / "train.csv"
    csv.write_text("prompt,completion,answer\nWhat is 1+1?,\\boxed{2},2\n,\\boxed{3},3\n")
    path.write_text(path.read_text().replace("train.jsonl", "train.csv"))
    problems = [str(p) for p in check_task_data(load_task_config(path))]
    assert problems == [f"{csv}: row 2: prompt field 'prompt' is null"]


def write_run(tmp_path: Path, tiny_models_dir: Path, task: Path) -> Path:
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "policy": {"path": str(tiny_models_dir / "policy")},
        "tasks": [{"include": str(task), "reward": {"model": str(tiny_models_dir / "reward")}}],
        "training": {"max_steps": 1},
        "output_dir": str(tmp_path / "run"),
    }))  # fmt: skip
    return config


def test_cgpo_train_stops_on_the_same_problems_before_loading_a_model(tmp_path, tiny_models_dir, capsys):
    task = task_yaml(tmp_path, "tiny_arithmetic", [GOOD, row(completion="\\boxed{3}", answer="3")])
    config = write_run(tmp_path, tiny_models_dir, task)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-2:] == [
        f"{tmp_path / 'train.jsonl'}:2: prompt field 'prompt' is missing",
        (
            f"cgpo train: 1 data problem (listed above) in the tasks of {config}; fix the data files "
            "(cgpo validate lists the same problems)"
        ),
    ]
    assert not (tmp_path / "run").exists()  # nothing started: no model, no output directory


def test_prompts_too_long_for_the_policy_context_are_listed_and_counted(tmp_path, tiny_models_dir, capsys):
    # The test policy has 256 positions and a character tokenizer; the task generates 16 new tokens.
    long_prompt = "What is " + "1+" * 200 + "1?"
    train = [GOOD, row(prompt=long_prompt, completion="\\boxed{201}", answer="201")]
    config = write_run(tmp_path, tiny_models_dir, task_yaml(tmp_path, "tiny_arithmetic", train))
    assert main(["validate", str(config)]) == 0  # warnings only: cgpo train leaves the prompt out
    out, err = capsys.readouterr()
    assert out.strip() == f"{config}: ok (run config, 1 task)"
    lines = err.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'train.jsonl'))}:2: warning: prompt is \d+ tokens: with max_new_tokens 16 it "
        r"exceeds the policy's 256 positions; cgpo train leaves it out",
        lines[0],
    ), lines[0]
    assert lines[1] == (
        "task tiny_arithmetic: warning: 1 of 2 train prompts are too long for 256 positions with max_new_tokens 16; "
        "they are left out"
    )
    # Every prompt too long: cgpo train would stop, so it is an error.
    task_yaml(tmp_path, "tiny_arithmetic", train[1:])
    assert main(["validate", str(config)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "task tiny_arithmetic: 1 of 1 train prompts are too long for 256 positions with max_new_tokens 16; "
        "lower sampling.max_new_tokens"
    )


def test_judges_say_which_metadata_they_cannot_use():
    from cgpo_judges.code import CodeJudge
    from cgpo_judges.format import FormatJudge
    from cgpo_judges.math import MathJudge

    assert FormatJudge.metadata_problem({}) is None  # needs none
    assert MathJudge.metadata_problem({"answer": "#### 18"}) is None
    assert MathJudge.metadata_problem({}) == "metadata 'answer' missing or null"
    assert MathJudge.metadata_problem({"answer": True}) == "gold answer True cannot be parsed"
    assert CodeJudge.metadata_problem({"tests": ["assert f() == 1"], "entry_point": "f"}) is None
    assert CodeJudge.metadata_problem({"test": "def check(c): pass", "entry_point": "f"}) is None
    assert CodeJudge.metadata_problem({"entry_point": "f"}) == (
        "metadata has an 'entry_point' but no tests: add 'test' (HumanEval check code) or 'tests'"
    )


def test_a_named_source_is_checked_through_its_converted_folder_and_never_converted(tmp_path, monkeypatch, capsys):
    """``policy.path: smollm2:135m-instruct``: the lengths are counted with the converted folder's real BPE
    tokenizer and chat template; before the conversion a warning says so, and nothing is downloaded."""
    import shutil

    import yaml

    from cgpo import model_sources

    monkeypatch.setenv("CGPO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(model_sources, "run_pip", lambda command: pytest.fail(f"validate ran pip: {command}"))
    long_row = row(prompt="What is " + "1 + " * 60 + "1?", completion="\\boxed{61}", answer="61")
    task = task_yaml(tmp_path, "tiny_arithmetic", [GOOD, long_row])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"policy": {"path": "smollm2:135m-instruct"},
                                      "tasks": [{"include": str(task), "reward": {"model": None}}],
                                      "training": {"max_steps": 1}, "output_dir": str(tmp_path / "run")}))  # fmt: skip
    assert main(["validate", str(config)]) == 0
    assert capsys.readouterr().err.strip() == (
        "policy smollm2:135m-instruct: warning: prompt lengths not checked: not converted yet "
        "(cgpo train or cgpo bootstrap smollm2 converts it)"
    )
    # A converted folder as the conversion leaves it (the real tokenizer; a config with 160 positions).
    folder = model_sources.model_dir(model_sources.named_source("smollm2:135m-instruct"))
    shutil.copytree(REPO / "tests" / "fixtures" / "smollm2_tokenizer", folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 160}))
    (folder / model_sources.COMPLETE_MARKER).write_text("{}")
    assert main(["validate", str(config)]) == 0
    lines = capsys.readouterr().err.splitlines()
    # 60 "1 + " are about 121 BPE tokens (spaces merge into the digits), plus the chat template and 16 new tokens.
    assert lines[0].startswith(f"{tmp_path / 'train.jsonl'}:2: warning: prompt is "), lines
    assert "exceeds the policy's 160 positions" in lines[0], lines
    assert lines[1].startswith("task tiny_arithmetic: warning: 1 of 2 train prompts are too long for 160"), lines
