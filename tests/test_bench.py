"""Smoke tests of the trainer benchmarks in ``bench/`` (so they do not rot) and of their phase clock.

The smoke tests run each script end to end with the unit-test-sized models and one tiny measured step per
process; they check the output's shape and invariants, never a speed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_phase_clock_counts_the_outermost_call_and_the_rest_is_overhead() -> None:
    common = load("_common")
    clock = common.PhaseClock()

    class Model:
        def forward(self) -> None:
            time.sleep(0.01)

        def generate(self) -> None:
            for _ in range(3):
                self.forward()  # inside generate: generation time, not forward time

    model = Model()
    clock.wrap(model, "forward", "forward_policy")
    clock.wrap(model, "generate", "generate")
    recorder = common.StepRecorder(clock)
    model.generate()
    model.forward()
    time.sleep(0.02)  # neither phase: overhead
    recorder.mark()
    (step,) = recorder.steps(warmup=0)
    assert step["generate"] >= 0.03
    assert 0.01 <= step["forward_policy"] < 0.03
    assert step["overhead"] >= 0.02
    assert step["step"] == pytest.approx(sum(step[p] for p in common.COUNTED) + step["overhead"])
    summary = common.summarize_run([step, step])
    assert 0 < summary["overhead_fraction"] < 1
    assert recorder.steps(warmup=1) == []


def _args(tiny_models_dir: Path) -> list[str]:
    return ["--model", str(tiny_models_dir / "policy"), "--reward-model", str(tiny_models_dir / "reward")]


@pytest.mark.slow
def test_step_vs_trl_smoke(tiny_models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("step_vs_trl")
    out = tmp_path / "step.json"
    argv = ["--rounds", "1", "--steps", "1", "--warmup", "1", "--batch", "2", "--k", "2", "--max-new-tokens", "3"]
    assert bench.main([*argv, *_args(tiny_models_dir), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    data = json.loads(out.read_text())
    assert lines[-1] == f"ratio cgpo/trl: {data['ratio_median']:.3f}"
    for key in ("cgpo_step_s", "trl_step_s", "ratio_median", "cgpo_overhead_fraction", "trl_overhead_fraction"):
        assert data[key] > 0 if "overhead" not in key else -1 < data[key] < 1
    for name in ("cgpo", "trl"):
        phases = data["phases"][name]
        assert phases["generate"] > 0 and phases["forward_policy"] > 0 and phases["backward"] > 0
        assert phases["forward_reference"] > 0 and phases["forward_reward"] > 0 and phases["optimizer"] > 0


@pytest.mark.slow
def test_multitask_scaling_smoke(tiny_models_dir: Path, tmp_path: Path) -> None:
    bench = load("multitask_scaling")
    out = tmp_path / "scaling.json"
    argv = ["--counts", "1", "2", "--completions", "4", "--k", "2", "--rounds", "1", "--steps", "1"]
    argv += ["--warmup", "1", "--max-new-tokens", "3", "--out", str(out)]
    assert bench.main([*argv, *_args(tiny_models_dir)]) == 0
    data = json.loads(out.read_text())
    assert set(data["tasks"]) == {"1", "2"}
    assert data["tasks"]["1"]["growth"] == 0.0
    assert data["tasks"]["2"]["step_s"] > 0


@pytest.mark.slow
def test_memory_smoke(tiny_models_dir: Path, tmp_path: Path) -> None:
    bench = load("memory")
    out = tmp_path / "memory.json"
    assert bench.main(["--steps", "1", "--out", str(out), *_args(tiny_models_dir)]) == 0
    modes = json.loads(out.read_text())["modes"]
    full, lora = modes["full"], modes["lora"]
    assert full["policy_weight_copies"] == 2 and full["separate_reference_loaded"]
    assert lora["policy_weight_copies"] == 1 and not lora["separate_reference_loaded"]
    assert lora["reference_is_policy_object"]
    assert lora["reference_vs_base_max_abs_diff"] == 0.0
    assert lora["parameters"]["unique_total_mb"] < full["parameters"]["unique_total_mb"]
    assert lora["trainable_parameters"] < full["trainable_parameters"]


@pytest.mark.slow
def test_distributed_smoke(tiny_models_dir: Path, tmp_path: Path) -> None:
    import socket

    bench = load("distributed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    out = tmp_path / "distributed.json"
    argv = ["--steps", "1", "--warmup", "0", "--batch", "1", "--samples", "2", "--new-tokens", "3", "--port", port,
            "--model", str(tiny_models_dir / "policy"), "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    modes = json.loads(out.read_text())["modes"]
    ddp, fsdp = modes["ddp"], modes["fsdp"]
    assert [r["fsdp"] for r in ddp["ranks"] + fsdp["ranks"]] == [False, False, True, True]
    assert all(len(r["step_s"]) == 1 and r["peak_rss_steps_mb"] > 0 for r in ddp["ranks"] + fsdp["ranks"])
    # Each FSDP process holds its half of the policy and of AdamW's state; frozen models stay whole.
    assert sum(fsdp["policy_mb"]) == pytest.approx(ddp["policy_mb"][0], rel=0.01)
    assert sum(fsdp["adamw_state_mb"]) == pytest.approx(ddp["adamw_state_mb"][0], rel=0.01)
    assert fsdp["frozen_models_mb"] == ddp["frozen_models_mb"]
