"""``cgpo eval`` on test-size models: JSON schema, table, --model, shared baselines, determinism, errors."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cgpo.cli import main

REPO = Path(__file__).resolve().parent.parent
MAX_PROMPTS = 4
EVALUATED = ("tiny_arithmetic", "tiny_json", "tiny_instructions")
LABELS = {"tiny_arithmetic": ("math",), "tiny_json": ("format", "ifeval"), "tiny_instructions": ("ifeval",)}


def write_config(folder: Path, models: Path, **overrides: Any) -> Path:
    """A run config over the repo's tiny tasks: arithmetic and instructions (gold baselines), JSON (generated
    baseline), and code with its eval split removed (it must be reported as skipped)."""
    reward = {"model": str(models / "reward"), "baseline": "reference"}
    short = {"sampling": {"num_samples": 2, "max_new_tokens": 6}}
    config: dict[str, Any] = {
        "policy": {"path": str(models / "policy")},
        "tasks": [
            {"include": str(REPO / "tasks" / "tiny_arithmetic.yaml"), "reward": reward, **short},
            {"include": str(REPO / "tasks" / "tiny_json.yaml"), "reward": dict(reward, baseline="generated"), **short},
            {"include": str(REPO / "tasks" / "tiny_instructions.yaml"), "reward": reward, **short},
            {"include": str(REPO / "tasks" / "tiny_code.yaml"), "prompts": {"eval": None}},
        ],
        "training": {"max_steps": 1},
        "output_dir": str(folder / "run"),
    }
    config.update(overrides)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``cgpo ARGV`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def read_samples(path: Path) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["task"], []).append(row)
    return rows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("eval")
    write_config(folder, tiny_models_dir)
    return folder


@pytest.fixture(scope="module")
def before(workdir: Path) -> dict[str, Any]:
    """One evaluation of the config's policy as it is, shared by the tests that only read its outputs."""
    status, stdout, stderr = run_cli(
        "eval", str(workdir / "run.yaml"), "--max-prompts", str(MAX_PROMPTS),
        "--output", str(workdir / "before.json"), "--samples", str(workdir / "before.jsonl"),
    )  # fmt: skip
    assert status == 0, stderr
    return {
        "json": json.loads((workdir / "before.json").read_text()),
        "bytes": (workdir / "before.json").read_bytes(),
        "samples": read_samples(workdir / "before.jsonl"),
        "stdout": stdout,
    }


def test_results_follow_the_schema_and_the_table_lists_every_task(before, workdir):
    result = before["json"]
    assert result["config"] == str((workdir / "run.yaml").resolve())
    assert result["model"] == result["reference"]  # the config's policy, no separate reference
    assert result["decoding"] == "greedy"
    assert set(result["tasks"]) == set(EVALUATED)
    assert result["skipped"] == {"tiny_code": "no prompts.eval split"}
    for name, metrics in result["tasks"].items():
        assert metrics["n"] == MAX_PROMPTS
        assert 0.0 <= metrics["pass_rate"] <= 1.0
        assert 0.0 < metrics["calibrated_reward"] < 1.0
        assert isinstance(metrics["reward"], float)
        assert set(metrics["judges"]) == set(LABELS[name])
        for rates in metrics["judges"].values():
            assert set(rates) == {"violation_rate", "error_rate"}
        if len(LABELS[name]) == 1:  # one judge: a pass is exactly a sample it neither violates nor fails on
            rates = metrics["judges"][LABELS[name][0]]
            assert metrics["pass_rate"] == pytest.approx(1.0 - rates["violation_rate"] - rates["error_rate"])
        rows = before["samples"][name]
        assert len(rows) == MAX_PROMPTS
        assert metrics["pass_rate"] == pytest.approx(sum(r["verdict"] == 1 for r in rows) / len(rows))
        assert metrics["reward"] == pytest.approx(sum(r["reward"] for r in rows) / len(rows), rel=1e-5)
    table = before["stdout"]
    for name in (*EVALUATED, "tiny_code"):
        assert name in table
    assert "skipped" in table and "pass rate" in table


def test_generated_baseline_of_the_untrained_policy_is_its_own_greedy_answer(before):
    """Without --model the policy is the reference: a_bar is the same greedy text, so calibrated = sigmoid(0)."""
    rows = before["samples"]["tiny_json"]
    assert [r["baseline"] for r in rows] == [r["completion"] for r in rows]
    assert before["json"]["tasks"]["tiny_json"]["calibrated_reward"] == pytest.approx(0.5, abs=1e-4)
    gold = [json.loads(line)["completion"] for line in (REPO / "tasks/data/tiny_arithmetic_eval.jsonl").open()]
    assert [r["baseline"] for r in before["samples"]["tiny_arithmetic"]] == gold[:MAX_PROMPTS]


def test_a_second_run_gives_identical_json(before, workdir):
    status, _, stderr = run_cli(
        "eval", str(workdir / "run.yaml"), "--max-prompts", str(MAX_PROMPTS), "--output", str(workdir / "again.json")
    )
    assert status == 0, stderr
    assert (workdir / "again.json").read_bytes() == before["bytes"]


def test_model_dir_is_evaluated_against_the_reference_baseline(before, workdir, tiny_models_dir, tiny_tokenizer):
    import torch
    from transformers import LlamaForCausalLM

    from cgpo.tiny.models import TEST_SIZE, tiny_llama_config

    # Other weights than the config's policy, large enough that greedy decoding writes other characters
    # (the default 0.02 initialization answers spaces whatever the seed).
    torch.manual_seed(1)
    final = workdir / "trained" / "final"
    config = tiny_llama_config(tiny_tokenizer, num_layers=2, size=TEST_SIZE, initializer_range=1.0)
    LlamaForCausalLM(config).save_pretrained(final)
    tiny_tokenizer.save_pretrained(final)
    # A run's OUTPUT_DIR resolves to its final/ model.
    status, stdout, stderr = run_cli(
        "eval", str(workdir / "run.yaml"), "--model", str(workdir / "trained"), "--max-prompts", str(MAX_PROMPTS),
        "--output", str(workdir / "after.json"), "--samples", str(workdir / "after.jsonl"),
    )  # fmt: skip
    assert status == 0, stderr
    after = json.loads((workdir / "after.json").read_text())
    assert after["model"] == str(final.resolve())
    assert after["reference"] == str(tiny_models_dir / "policy")
    assert set(after["tasks"]) == set(EVALUATED) and "tiny_arithmetic" in stdout
    rows, old = read_samples(workdir / "after.jsonl")["tiny_json"], before["samples"]["tiny_json"]
    assert [r["completion"] for r in rows] != [r["completion"] for r in old], "the two models should differ"
    # a_bar still comes from the reference (the config's policy), not from the evaluated model.
    assert [r["baseline"] for r in rows] == [r["baseline"] for r in old]


def _fake_generate(answers: Callable[[str], str]) -> Callable[..., Any]:
    """A stand-in for cgpo.rollout.generate that answers each decoded prompt with ``answers(prompt)``."""

    def generate(model, tokenizer, prompts, sampling, *, num_samples=None, greedy=False, max_batch_size=None):
        import torch

        from cgpo.rollout import Rollout

        assert greedy and num_samples == 1
        texts = [answers(tokenizer.decode(p, skip_special_tokens=True)) for p in prompts]
        empty = torch.zeros((len(prompts), 1), dtype=torch.long)
        return Rollout(empty, empty, empty, empty, texts)

    return generate


def _gold(task: str) -> dict[str, str]:
    return {
        row["prompt"]: row["completion"]
        for row in map(json.loads, (REPO / "tasks" / "data" / f"{task}_eval.jsonl").open())
    }


def _answer(prompt: str) -> str:
    """Right for arithmetic prompts whose result is even and for JSON prompts with an even value, else wrong;
    the gold response for instructions (all 48 satisfy the strict ifeval judge)."""
    for question, gold in _gold("tiny_instructions").items():
        if question in prompt:
            return gold
    if match := re.search(r"What is (\d+)([+-])(\d+)\?", prompt):
        a, op, b = int(match[1]), match[2], int(match[3])
        value = a + b if op == "+" else a - b
        return f"\\boxed{{{value}}}" if value % 2 == 0 else f"\\boxed{{{value + 1}}}"
    if match := re.search(r"key (\w+) set to (\d+)\.", prompt):
        return json.dumps({match[1]: int(match[2])}) if int(match[2]) % 2 == 0 else f"{match[1]}={match[2]}"
    raise AssertionError(f"unexpected prompt {prompt!r}")


def test_pass_rate_counts_the_judges_verdicts(workdir, monkeypatch):
    import cgpo.rollout

    monkeypatch.setattr(cgpo.rollout, "generate", _fake_generate(_answer))
    count = 12
    status, _, stderr = run_cli(
        "eval", str(workdir / "run.yaml"), "--max-prompts", str(count), "--output", str(workdir / "fake.json")
    )
    assert status == 0, stderr
    result = json.loads((workdir / "fake.json").read_text())["tasks"]
    arithmetic = [json.loads(line) for line in (REPO / "tasks/data/tiny_arithmetic_eval.jsonl").open()][:count]
    expected = sum(int(row["answer"]) % 2 == 0 for row in arithmetic) / count
    assert 0.0 < expected < 1.0
    assert result["tiny_arithmetic"]["pass_rate"] == pytest.approx(expected)
    assert result["tiny_arithmetic"]["judges"]["math"] == pytest.approx(
        {"violation_rate": 1.0 - expected, "error_rate": 0.0}
    )
    objects = [json.loads(line) for line in (REPO / "tasks/data/tiny_json_eval.jsonl").open()][:count]
    expected = sum(int(row["value"]) % 2 == 0 for row in objects) / count
    assert 0.0 < expected < 1.0
    assert result["tiny_json"]["pass_rate"] == pytest.approx(expected)
    assert result["tiny_json"]["n"] == count
    assert result["tiny_instructions"]["pass_rate"] == 1.0
    assert result["tiny_instructions"]["judges"]["ifeval"] == {"violation_rate": 0.0, "error_rate": 0.0}


def test_sampling_is_seeded(workdir):
    def completions(seed: int) -> list[str]:
        name = f"sample-{seed}.jsonl"
        status, _, stderr = run_cli(
            "eval", str(workdir / "run.yaml"), "--max-prompts", "2", "--task", "tiny_arithmetic", "--sample",
            "--seed", str(seed), "--samples", str(workdir / name),
        )  # fmt: skip
        assert status == 0, stderr
        return [row["completion"] for row in read_samples(workdir / name)["tiny_arithmetic"]]

    first = completions(0)
    assert completions(0) == first
    assert completions(1) != first


def test_config_errors_exit_2_before_any_model_loads(workdir, tiny_models_dir, monkeypatch, tmp_path):
    import cgpo.evaluation

    def no_loading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cgpo.evaluation, "load_model", no_loading)
    bad = write_config(tmp_path, tiny_models_dir, training={"max_steps": 1, "sede": 3})
    status, _, stderr = run_cli("eval", str(bad))
    assert status == 2 and "sede" in stderr and "did you mean" in stderr.lower()
    status, _, stderr = run_cli("eval", str(workdir / "run.yaml"), "tasks.0.sampling.temperature=-1")
    assert status == 2 and "temperature" in stderr
    status, _, stderr = run_cli("eval", str(workdir / "run.yaml"), "--task", "nope")
    assert status == 2 and "unknown task nope" in stderr
    config = write_config(tmp_path, tiny_models_dir, tasks=[
        {"include": str(REPO / "tasks" / "tiny_json.yaml"), "prompts": {"eval": None}}
    ])  # fmt: skip
    status, _, stderr = run_cli("eval", str(config))
    assert status == 2 and "no task to evaluate" in stderr


def test_a_bad_model_directory_exits_2_with_a_clear_message(workdir, monkeypatch, tmp_path):
    import cgpo.evaluation

    def no_loading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cgpo.evaluation, "load_model", no_loading)
    status, _, stderr = run_cli("eval", str(workdir / "run.yaml"), "--model", str(tmp_path / "missing"))
    assert status == 2
    assert f"--model {tmp_path / 'missing'}: no such directory" in stderr
    (tmp_path / "empty").mkdir()
    status, _, stderr = run_cli("eval", str(workdir / "run.yaml"), "--model", str(tmp_path / "empty"))
    assert status == 2 and "no model in this directory" in stderr


def test_the_plain_table_is_used_without_rich(monkeypatch):
    from cgpo.evaluation import print_table

    monkeypatch.setitem(sys.modules, "rich.console", None)  # makes `from rich.console import ...` fail
    result = {
        "model": "m",
        "tasks": {"t": {"n": 3, "pass_rate": 2 / 3, "reward": 0.25, "calibrated_reward": 0.5,
                        "judges": {"math": {"violation_rate": 1 / 3, "error_rate": 0.0}}}},
        "skipped": {"u": "no prompts.eval split"},
    }  # fmt: skip
    out = io.StringIO()
    print_table(result, file=out)
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:3] == ["task", "n", "pass"]
    assert lines[2].split() == ["t", "3", "0.667", "0.250", "0.500", "math", "0.33/0.00"]
    assert lines[3].split()[:3] == ["u", "-", "skipped"]
