"""examples/raft_distill/run.py: arguments, the two arms' overrides, results.json, and a smoke run in CI.

The smoke run is ``--smoke`` (2 steps, 1 seed, B = 2, K = 2, 4 held-out prompts) with the random Llama over
SmolLM2's BPE tokenizer (``bpe_model_dir``) as the teacher and the unit-test-sized tiny models as the student
and reward model: the real ``cgpo train`` and ``cgpo eval`` end to end, only the shape of the results checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

RUN = Path(__file__).resolve().parent.parent / "examples" / "raft_distill" / "run.py"


def _load():
    spec = importlib.util.spec_from_file_location("example_raft_distill_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


distill = _load()


def _eval(pass_rate: float, reward: float, n: int = 4) -> dict:
    judges = {"format": {"violation_rate": 1 - pass_rate, "error_rate": 0.0}}
    return {"model": "m", "skipped": {}, "tasks": {"t": {"n": n, "pass_rate": pass_rate, "reward": reward,
                                                          "calibrated_reward": 0.5, "judges": judges}}}  # fmt: skip


def test_arguments_smoke_sizes_and_the_arms():
    smoke = distill.parse_args(["--out", "x", "--smoke", "--steps", "3"])
    assert (smoke.steps, smoke.seeds, smoke.batch_size, smoke.num_samples, smoke.max_eval_prompts) == (3, [0], 2, 2, 4)
    assert "tasks.0.sampling.max_new_tokens=64" in distill.overrides(
        distill.parse_args(["--out", "x", "--max-new-tokens", "64"])
    )
    full = distill.parse_args(["--out", "x"])
    assert (full.steps, full.seeds, full.teacher) == (None, [0, 1], "smollm2:135m-instruct")
    assert distill.overrides(smoke) == [
        "training.max_steps=3",
        "tasks.0.batch_size=2",
        "tasks.0.sampling.num_samples=2",
    ]
    assert distill.arm_overrides("self", "T") == []
    assert distill.arm_overrides("distill", "T") == ["tasks.0.sampler.path=T", "tasks.0.sampler.dtype=float32"]
    for bad in (["--seeds", "1", "1"], ["--steps", "0"], ["--num-samples", "0"]):
        with pytest.raises(SystemExit):
            distill.parse_args(["--out", "x", *bad])


def test_summary_means_spreads_and_check():
    ends = {0: _eval(0.5, 1.0), 1: _eval(0.25, 3.0)}
    metrics = {s: [{"task/t/pass_rate": 0.1 * (s + 1), "task/t/reward": 2.0}] * 2 for s in (0, 1)}
    arm = distill.summarize_arm(ends, metrics, "t", seconds=8.0)
    assert arm["pass_rate_end_per_seed"] == [0.5, 0.25] and arm["pass_rate_end"] == 0.375
    assert arm["reward_end"] == 2.0 and arm["reward_end_std"] == 1.0
    assert arm["train_pass_rate"] == pytest.approx(0.15) and arm["seconds_per_step"] == 2.0
    results = {"start": {"pass_rate": 0.5, "reward": 1.0}, "arms": {"self": arm, "distill": dict(arm)}}
    distill.check_results(results)
    results["arms"]["distill"]["reward_end"] = float("nan")
    with pytest.raises(ValueError, match=r"arms\.distill\.reward_end"):
        distill.check_results(results)


def test_the_example_config_validates_with_a_teacher_and_refuses_crpg(capsys):
    from cgpo.cli import main

    teacher = "tasks.0.sampler.path=smollm2:135m-instruct"
    assert main(["validate", str(distill.CONFIG), teacher]) == 0
    assert (
        main(["validate", str(distill.CONFIG), teacher, "tasks.0.optimizer.name=crpg", "tasks.0.kl_threshold=5"]) == 2
    )
    assert "tasks.0.sampler" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke(tmp_path, tiny_models_dir, bpe_model_dir):
    out = tmp_path / "distill"
    argv = ["--out", str(out), "--smoke", "--teacher", str(bpe_model_dir),
            "--policy", str(tiny_models_dir / "policy"), "--reward-model", str(tiny_models_dir / "reward")]  # fmt: skip
    assert distill.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["steps"], results["prompts_per_step"], results["num_samples"], results["max_new_tokens"]) == (
        2,
        2,
        2,
        32,
    )
    assert results["eval_prompts"] == 4 and results["seeds"] == [0] and results["teacher"] == str(bpe_model_dir)
    for arm in ("self", "distill"):
        assert math.isfinite(results["arms"][arm]["pass_rate_end"]) and (out / f"{arm}_s0" / "final").is_dir()
        samples = [json.loads(line) for line in (out / f"{arm}_s0" / "eval_samples.jsonl").read_text().splitlines()]
        assert len(samples) == 4 and all("completion" in r for r in samples)
    resolved = yaml.safe_load((out / "distill_s0" / "config.yaml").read_text())
    assert resolved["tasks"][0]["sampler"]["path"] == str(bpe_model_dir)
    assert yaml.safe_load((out / "self_s0" / "config.yaml").read_text())["tasks"][0]["sampler"] is None
    assert "| distill |" in (out / "results.md").read_text()
