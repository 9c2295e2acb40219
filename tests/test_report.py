"""``cgpo report``: loading run directories, smoothing, figures and summary.md, and errors for bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgpo.cli import main
from cgpo.report import first_last, load_run, moving_average, run_labels

REPO = Path(__file__).resolve().parents[1]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _step_row(step: int, tasks: dict[str, dict[str, float | None]]) -> dict:
    row: dict = {"step": step, "loss": 1.0 / step, "lr": 1e-4, "grad_norm": 2.0, "tokens_per_s": 100.0}
    row.update({f"time/{p}": 0.1 for p in ("generate", "judge", "reward", "forward_backward", "optimizer")})
    row.update({"time/step": 0.6, "time/overhead": 0.1})
    for task, values in tasks.items():
        row.update({f"task/{task}/{key}": value for key, value in values.items()})
    return row


def _run_a(root: Path) -> Path:
    """Tasks alpha (judges j1, j2) and beta; 10 steps; two held-out evaluations (steps 0 and 10)."""
    run = root / "a" / "run"
    rows = []
    for step in range(1, 11):
        alpha = {
            "pass_rate": step / 10,  # 0.1 .. 1.0
            "reward": 2.0 * step,
            "calibrated_reward": 0.5,
            "kl": None if step == 10 else 0.01 * step,  # null (non-finite at write time) is skipped
            "judge/j1/violation_rate": 1 - step / 10,
            "judge/j2/violation_rate": 0.0,
        }
        rows.append(_step_row(step, {"alpha": alpha, "beta": {"pass_rate": 0.5, "reward": 1.0, "kl": 0.0}}))
    _write_jsonl(run / "metrics.jsonl", rows)
    evals = [
        {"step": 0, "tasks": {"alpha": {"n": 8, "pass_rate": 0.25, "reward": 1.0, "judges": {"j1": {"violation_rate": 0.5}}}}},
        {"step": 10, "tasks": {"alpha": {"n": 8, "pass_rate": 0.75, "reward": 2.0, "judges": {"j1": {"violation_rate": 0.125}}}}},
    ]  # fmt: skip
    _write_jsonl(run / "eval.jsonl", evals)
    return run


def _run_b(root: Path) -> Path:
    """Tasks alpha and gamma (gamma only here); 4 steps; no eval.jsonl."""
    run = root / "b" / "run"
    rows = [
        _step_row(s, {"alpha": {"pass_rate": 0.0, "reward": -1.0, "kl": 0.0}, "gamma": {"pass_rate": 1.0}})
        for s in range(1, 5)
    ]
    _write_jsonl(run / "metrics.jsonl", rows)
    return run


def _is_png(path: Path) -> tuple[int, int]:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = imread(path)  # decodes the whole file: a truncated PNG fails here
    return image.shape[1], image.shape[0]


def test_moving_average_skips_nan_and_shrinks_at_the_ends():
    assert moving_average([1.0, math.nan, 3.0, 5.0], 3) == [1.0, 2.0, 4.0, 4.0]
    assert moving_average([1.0, 2.0], 1) == [1.0, 2.0]
    assert math.isnan(moving_average([math.nan, math.nan], 2)[0])
    assert first_last([1.0, math.nan, 2.0, 3.0, 10.0], 2) == (1.5, 6.5)
    assert first_last([4.0], 5) == (4.0, 4.0)
    assert all(math.isnan(v) for v in first_last([math.nan], 3))


def test_run_labels_lengthen_only_clashing_names(tmp_path):
    assert run_labels([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]) == ["a/run", "b/run", "c"]
    assert run_labels([tmp_path / "x", tmp_path / "x"]) == ["x", "x (2)"]


def test_two_runs_overlaid_with_different_task_sets(tmp_path, capsys):
    run_a, run_b = _run_a(tmp_path), _run_b(tmp_path)
    out = tmp_path / "report"
    assert main(["report", str(run_a), str(run_b), "--out", str(out), "--smooth", "3"]) == 0
    printed = capsys.readouterr().out
    names = ["task_alpha.png", "task_beta.png", "task_gamma.png", "run.png", "summary.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert f"wrote {out / name}" in printed
    for name in names[:-1]:
        width, height = _is_png(out / name)
        assert width > 600 and height > 300

    summary = (out / "summary.md").read_text()
    # Run table: labels disambiguated by parent folder; the run without eval.jsonl says so.
    assert "| a/run | `" in summary and "| 1–10 | alpha, beta | step 0, step 10 |" in summary
    assert "| b/run | `" in summary and "| 1–4 | alpha, gamma | no eval.jsonl |" in summary
    for name in names[:-1]:
        assert f"]({name})" in summary
    alpha = summary.split("## alpha")[1].split("## beta")[0]
    # Training, window 3: pass rate mean(0.1, 0.2, 0.3) -> mean(0.8, 0.9, 1.0); reward 2*step; the null KL at
    # step 10 is skipped, so the last KL is mean(0.07, 0.08, 0.09).
    assert "| a/run | 1–10 | 0.200 → 0.900 (+0.700) | 4.000 → 18.000 (+14.000) | 0.020 → 0.080 (+0.060) |" in alpha
    assert "| b/run | 1–4 | 0.000 → 0.000 (+0.000) | -1.000 → -1.000 (+0.000) | 0.000 → 0.000 (+0.000) |" in alpha
    # Held-out: first vs last evaluation, with n and the per-judge violation rate.
    assert (
        "| a/run | 0 → 10 | 8 | 0.250 → 0.750 (+0.500) | 1.000 → 2.000 (+1.000) | j1 0.500 → 0.125 (-0.375)" in alpha
    )
    assert "No held-out evaluation of this task for: b/run." in alpha
    assert "Reward rose while the pass rate fell" not in summary
    gamma = summary.split("## gamma")[1]
    assert "| b/run | 1–4 | 1.000 → 1.000 (+0.000) | – | – |" in gamma and "a/run" not in gamma.split("## Training")[0]


def test_one_run_defaults_to_run_dir_report_and_flags_reward_hacking(tmp_path, capsys):
    run = tmp_path / "hack"
    rows = [_step_row(s, {"t": {"pass_rate": 1.0 - s / 10, "reward": float(s)}}) for s in range(1, 11)]
    _write_jsonl(run / "metrics.jsonl", rows)
    evals = [
        {"step": s, "tasks": {"t": {"n": 200, "pass_rate": p, "reward": r}}}
        for s, p, r in [(0, 0.9, 0.0), (10, 0.5, 3.0)]
    ]
    _write_jsonl(run / "eval.jsonl", evals)
    assert main(["report", str(run), "--smooth", "1"]) == 0
    summary = (run / "report" / "summary.md").read_text()
    assert "| hack | 1–10 | 0.900 → 0.000 (-0.900) | 1.000 → 10.000 (+9.000) | – |" in summary
    assert "Reward rose while the pass rate fell in: hack (training), hack (held-out)." in summary
    assert f"wrote {run / 'report' / 'task_t.png'}" in capsys.readouterr().out


def test_a_small_held_out_drop_is_not_called_reward_hacking(tmp_path):
    # 0.50 -> 0.40 on 20 prompts is two answers: under two standard errors (0.31), so no warning.
    run = tmp_path / "noisy"
    _write_jsonl(run / "metrics.jsonl", [_step_row(1, {"t": {"pass_rate": 0.5, "reward": 0.0}})])
    evals = [
        {"step": s, "tasks": {"t": {"n": 20, "pass_rate": p, "reward": r}}}
        for s, p, r in [(0, 0.5, 0.0), (1, 0.4, 1.0)]
    ]
    _write_jsonl(run / "eval.jsonl", evals)
    from cgpo.report import summary_markdown

    text = summary_markdown([load_run(run)], {"t": "task_t.png", "": "run.png"}, window=1)
    assert "| noisy | 0 → 1 | 20 | 0.500 → 0.400 (-0.100) | 0.000 → 1.000 (+1.000) | – |" in text
    assert "Reward rose" not in text


def test_a_partial_last_line_is_a_live_write_and_is_skipped(tmp_path):
    run = tmp_path / "live"
    _write_jsonl(run / "metrics.jsonl", [_step_row(1, {"t": {"pass_rate": 0.5}})])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "loss": 0.')
    assert [row["step"] for row in load_run(run).rows] == [1]


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = tmp_path / "good"
    _write_jsonl(good / "metrics.jsonl", [_step_row(1, {"t": {"pass_rate": 0.5}})])
    malformed = tmp_path / "malformed"
    malformed.mkdir()
    (malformed / "metrics.jsonl").write_text('{"step": 1}\n\n{"step": 2, "loss": nan}\n{"step": 3}\n')
    bad_eval = tmp_path / "bad_eval"
    _write_jsonl(bad_eval / "metrics.jsonl", [{"step": 1}])
    (bad_eval / "eval.jsonl").write_text('{"step": 0, "tasks": {}}\n{"step": 5, "tasks": [1]}\n')
    no_step = tmp_path / "no_step"
    no_step.mkdir()
    (no_step / "metrics.jsonl").write_text('{"step": 1}\n["step", 2]\n')
    empty = tmp_path / "empty"
    (empty).mkdir()
    (empty / "metrics.jsonl").write_text("")
    (tmp_path / "no_metrics").mkdir()
    (tmp_path / "a_file").write_text("x")
    return {
        "missing dir": ([str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such run directory"),
        "missing metrics": ([str(tmp_path / "no_metrics")], f"{tmp_path / 'no_metrics' / 'metrics.jsonl'}: not found"),
        "malformed line": ([str(malformed)], f"{malformed / 'metrics.jsonl'}:3: not valid JSON"),
        "bad eval line": ([str(bad_eval)], f"{bad_eval / 'eval.jsonl'}:2: expected 'tasks' to be an object"),
        "not an object": ([str(no_step)], f"{no_step / 'metrics.jsonl'}:2: expected a JSON object, got list"),
        "empty": ([str(empty)], f"{empty / 'metrics.jsonl'}: no steps logged yet"),
        "several runs, no --out": ([str(good), str(good)], "several runs: pass --out DIR"),
        "out is a file": ([str(good), "--out", str(tmp_path / "a_file")], "exists and is not a directory"),
        "smooth 0": ([str(good), "--smooth", "0"], "--smooth must be >= 1"),
    }


CASES = [
    "missing dir", "missing metrics", "malformed line", "bad eval line", "not an object", "empty",
    "several runs, no --out", "out is a file", "smooth 0",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_naming_the_file(case, tmp_path, capsys):
    argv, expected = _bad_inputs(tmp_path)[case]
    assert main(["report", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cgpo report: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "good" / "report").exists()  # nothing written before the inputs are known good


def test_console_script_prints_no_traceback_and_help_imports_no_matplotlib(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    probe = "import sys; from cgpo.cli import build_parser; build_parser(); print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "False"
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text("{oops\n")
    result = subprocess.run(
        [sys.executable, "-m", "cgpo", "report", str(bad)], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"cgpo report: {bad / 'metrics.jsonl'}:1: not valid JSON (Expecting property name enclosed in double quotes, column 2)\n"
    )


@pytest.mark.slow
def test_report_of_a_real_training_run(tmp_path, tiny_models_dir):
    """A real `cgpo train` output directory (test-size models, 2 steps, evaluation at 0 and 2) goes through."""
    import yaml

    reward = {"model": str(tiny_models_dir / "reward"), "baseline": "reference"}
    small = {"batch_size": 2, "sampling": {"num_samples": 2, "max_new_tokens": 6}}
    config = {
        "policy": {"path": str(tiny_models_dir / "policy")},
        "tasks": [
            {"include": str(REPO / "tasks" / name), "reward": reward, **small}
            for name in ("tiny_arithmetic.yaml", "tiny_instructions.yaml", "tiny_json.yaml")
        ],
        "training": {"max_steps": 2, "learning_rate": 1.0e-3, "seed": 0, "eval_every": 2},
        "output_dir": str(tmp_path / "run"),
        "logging": {"progress": "none"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    assert main(["report", str(tmp_path / "run")]) == 0
    report = tmp_path / "run" / "report"
    summary = (report / "summary.md").read_text()
    run = load_run(tmp_path / "run")
    assert run.tasks == ["tiny_arithmetic", "tiny_instructions", "tiny_json"]
    assert [row["step"] for row in run.evals] == [0, 2]
    for task in run.tasks:
        _is_png(report / f"task_{task}.png")
        assert f"## {task}" in summary
        assert "| run | 0 → 2 | " in summary.split(f"## {task}")[1]
    _is_png(report / "run.png")
