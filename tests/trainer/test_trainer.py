"""The trainer end to end on test-size models: metrics, checkpoints, final model, resume, faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cgpo.cli import main
from cgpo.config_loader import load_run_config
from cgpo.trainer import CGPOTrainer

TASKS = ("tiny_arithmetic", "tiny_instructions", "tiny_json")
JUDGES = {"tiny_arithmetic": "math", "tiny_instructions": "ifeval", "tiny_json": "format"}


def run_dir(config: Path) -> Path:
    return config.parent / "run"


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}


def test_train_writes_metrics_checkpoints_and_a_loadable_final_model(write_run_config, tiny_models_dir):
    config = write_run_config(training={"max_steps": 3, "learning_rate": 1.0e-3, "save_every": 2, "eval_every": 2})
    assert main(["train", str(config)]) == 0
    out = run_dir(config)
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2, 3]  # before, every 2 steps, and after
    for task in TASKS:
        assert evals[0]["tasks"][task]["n"] == 48 and 0.0 <= evals[-1]["tasks"][task]["pass_rate"] <= 1.0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "time/generate", "time/judge", "time/reward",
                    "time/forward_backward", "time/optimizer", "time/overhead"):  # fmt: skip
            assert key in line, key
        for task in TASKS:
            for key in ("reward", "calibrated_reward", "pass_rate", "kl", "loss", "skipped_prompts"):
                assert f"task/{task}/{key}" in line, (task, key)
            for rate in ("violation_rate", "error_rate"):
                assert 0.0 <= line[f"task/{task}/judge/{JUDGES[task]}/{rate}"] <= 1.0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert (out / "config.yaml").is_file()
    before, after = weights(tiny_models_dir / "policy"), weights(out / "final")
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before), f"unchanged parameters: {set(before) - set(changed)}"


def test_rerunning_the_same_command_resumes_and_a_changed_config_is_refused(write_run_config, capsys):
    config = write_run_config(training={"max_steps": 2, "learning_rate": 1.0e-3, "save_every": 1})
    assert main(["train", str(config)]) == 0
    assert main(["train", str(config), "training.max_steps=3"]) == 0
    assert "resumed from" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (run_dir(config) / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert main(["train", str(config), "training.learning_rate=0.5"]) == 2
    assert "different config" in capsys.readouterr().err
    assert main(["train", str(config), "training.learning_rate=0.5", "--fresh"]) == 0


def _one_step(config_path: Path, **training: object) -> dict[str, torch.Tensor]:
    overrides = [f"training.{k}={v}" for k, v in training.items()]
    trainer = CGPOTrainer(load_run_config(config_path, overrides), log=lambda _: None, fresh=True)
    trainer.setup()
    try:
        trainer.train_step()
        return {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
    finally:
        trainer.close()


def test_micro_batching_gives_the_full_batch_update(write_run_config):
    config = write_run_config(training={"max_steps": 1, "learning_rate": 1.0e-2, "seed": 3, "max_grad_norm": None})
    full = _one_step(config)
    micro = _one_step(config, micro_batch_size=1)
    for name, value in full.items():
        torch.testing.assert_close(micro[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_non_finite_loss_skips_the_step(write_run_config, monkeypatch, capsys):
    from cgpo.optimizers.crpg import CRPG

    original = CRPG.loss

    def nan_loss(self, batch):
        out = original(self, batch)
        out.loss = out.loss + float("nan")
        return out

    monkeypatch.setattr(CRPG, "loss", nan_loss)
    config = write_run_config(training={"max_steps": 1, "learning_rate": 1.0e-2})
    trainer = CGPOTrainer(load_run_config(config), log=print)
    trainer.setup()
    before = {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
    trainer.train_step()
    after = trainer.unwrapped.state_dict()
    trainer.close()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "non-finite loss" in capsys.readouterr().out


def test_a_judge_that_raises_becomes_minus_one_and_training_goes_on(write_run_config, tmp_path):
    from cgpo.judging import JUDGES, Judge

    class Broken(Judge):
        def judge_batch(self, prompts, completions, metadata):
            raise RuntimeError("judge backend down")

    JUDGES.register("broken_for_test", Broken)
    repo = Path(__file__).resolve().parents[2]
    judges = [{"name": "format", "params": {"json": True}}, "broken_for_test"]
    config = write_run_config(
        tasks=[
            {
                "include": str(repo / "tasks" / "tiny_json.yaml"),
                "judges": judges,
                "reward": None,
                "batch_size": 2,
                "sampling": {"num_samples": 2, "max_new_tokens": 4},
            }
        ],
        training={"max_steps": 1, "learning_rate": 1.0e-3},
    )
    try:
        assert main(["train", str(config)]) == 0
    finally:
        JUDGES.unregister("broken_for_test")
    line = json.loads((run_dir(config) / "metrics.jsonl").read_text().splitlines()[0])
    assert line["task/tiny_json/judge/broken_for_test/error_rate"] == 1.0


def test_lora_uses_the_base_model_as_reference_and_saves_a_merged_model(write_run_config, tiny_models_dir):
    config = write_run_config(training={"max_steps": 2, "learning_rate": 1.0e-2,
                                        "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}})  # fmt: skip
    trainer = CGPOTrainer(load_run_config(config), log=lambda _: None)
    trainer.setup()
    assert trainer.reference is None  # no second copy: adapters are disabled for pi_ref
    trainer.close()
    assert main(["train", str(config)]) == 0
    before, after = weights(tiny_models_dir / "policy"), weights(run_dir(config) / "final")
    assert set(before) == set(after)  # merged: plain Llama weights, no adapter keys
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)


@pytest.mark.slow
def test_kill_9_and_resume_reach_the_same_weights(write_run_config, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    config = write_run_config(training={"max_steps": 4, "learning_rate": 1.0e-3, "save_every": 1})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cgpo", "train", str(config)]
    out = run_dir(config)
    # Uninterrupted reference run, in its own output directory.
    reference = tmp_path / "reference"
    subprocess.run([*command, f"output_dir={reference}"], env=env, check=True, capture_output=True)
    # Interrupted run: SIGKILL once the step-2 checkpoint is complete, then the identical command again.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its step-2 checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()
    subprocess.run(command, env=env, check=True, capture_output=True)
    expected, resumed = weights(reference / "final"), weights(out / "final")
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGUSR1"])
def test_a_stop_signal_saves_a_checkpoint_and_exits_cleanly(write_run_config, signal_name):
    import os
    import signal
    import subprocess
    import sys
    import time

    config = write_run_config(training={"max_steps": 500, "learning_rate": 1.0e-3})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "cgpo", "train", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = run_dir(config) / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signal_name))  # Ctrl-C; SLURM's warning before the time limit
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    checkpoints = list((run_dir(config) / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").is_file()


def test_without_optimizer_state_checkpoints_skip_it_and_a_resume_restarts_adamw(write_run_config, capsys):
    training = {"max_steps": 2, "learning_rate": 1.0e-3, "save_every": 1, "save_optimizer_state": False,
                "lr_scheduler": "constant_with_warmup", "warmup_steps": 5}  # fmt: skip
    config = write_run_config(training=training)
    assert main(["train", str(config)]) == 0
    checkpoint = run_dir(config) / "checkpoints" / "step-2"
    assert not (checkpoint / "optimizer.pt").exists()
    assert {"scheduler.pt", "rng-0.pt", "policy/model.safetensors"} <= set(
        json.loads((checkpoint / "manifest.json").read_text())["files"]
    )
    capsys.readouterr()
    lines: list[str] = []
    # Turning the optimizer state back on is a change a resume accepts (as max_steps).
    overrides = ["training.max_steps=3", "training.save_optimizer_state=true"]
    trainer = CGPOTrainer(load_run_config(config, overrides), log=lines.append)
    trainer.setup()
    try:
        assert trainer.step == 2
        assert not trainer.optimizer.state  # fresh moments
        # The fresh AdamW uses the resumed step's rate (2 of 5 warm-up steps done), not step 0's (0.0).
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1.0e-3 * 2 / 5)
        trainer.train()
    finally:
        trainer.close()
    assert any("has no optimizer.pt" in line and "AdamW restarts" in line for line in lines), lines
    steps = [json.loads(line)["step"] for line in (run_dir(config) / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (run_dir(config) / "checkpoints" / "step-3" / "optimizer.pt").is_file()
