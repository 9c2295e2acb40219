"""The judge error-rate alarm in a real run: a judge that always fails stops it with a checkpoint, or warns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cgpo import checkpoint as ckpt
from cgpo.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broken_judge():
    from cgpo.judging import JUDGES, Judge

    class Down(Judge):
        def judge_batch(self, prompts, completions, metadata):
            raise ConnectionError("judge server down")

    JUDGES.register("down_for_test", Down)
    yield "down_for_test"
    JUDGES.unregister("down_for_test")


def _config(write_run_config, judge: str, alarm: dict) -> Path:
    task = {
        "include": str(REPO / "tasks" / "tiny_json.yaml"),
        "judges": [{"name": "format", "params": {"json": True}}, judge],
        "judge_error_alarm": alarm,
        "reward": None,
        "batch_size": 2,
        "sampling": {"num_samples": 2, "max_new_tokens": 4},
    }
    return write_run_config(tasks=[task], training={"max_steps": 4, "learning_rate": 1.0e-3, "seed": 0})


def test_a_judge_failing_for_n_steps_stops_the_run_with_a_checkpoint_and_a_one_line_error(
    write_run_config, broken_judge, capsys
):
    config = _config(write_run_config, broken_judge, {"max_error_rate": 0.5, "steps": 2, "action": "stop"})
    assert main(["train", str(config)]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("cgpo train: task tiny_json: judge 'down_for_test' failed (-1) on 100%, 100%")
    assert "steps 1-2" in error and "max_error_rate 0.5" in error and "resume" in error
    assert "judge error alarm at step 2: saving a checkpoint" in captured.err
    out = config.parent / "run"
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2]
    assert ckpt.verify_checkpoint(out / "checkpoints" / "step-2") is None
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # both steps' metrics were written
    assert not (out / "final").exists()  # a stopped run is not a finished one


def test_warn_logs_once_and_the_run_finishes(write_run_config, broken_judge, capsys):
    config = _config(write_run_config, broken_judge, {"max_error_rate": 0.5, "steps": 2, "action": "warn"})
    assert main(["train", str(config)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING: task tiny_json")]
    assert len(lines) == 1 and "steps 1-2" in lines[0]
    assert json.loads((config.parent / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
