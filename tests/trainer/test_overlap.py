"""Judging overlapped with the log-prob passes (``training.overlap_judging``) changes when, never what."""

from __future__ import annotations

import threading

import pytest
import torch

from cgpo.config_loader import load_run_config
from cgpo.metrics import PhaseTimer
from cgpo.phases.overlap import Pending
from cgpo.scoring import TaskScorer
from cgpo.trainer import CGPOTrainer


def _step(config, *, overlap: bool, micro_batch_size: int | None) -> tuple[dict, dict[str, torch.Tensor], set[str]]:
    """One step from the same seed: its metrics, the updated weights, and the threads the judges ran in."""
    overrides = [f"training.overlap_judging={str(overlap).lower()}"]
    if micro_batch_size is not None:
        overrides.append(f"training.micro_batch_size={micro_batch_size}")
    trainer = CGPOTrainer(load_run_config(config, overrides), log=lambda _: None, fresh=True)
    trainer.setup()
    threads: set[str] = set()
    original = TaskScorer.judge

    def recording_judge(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    TaskScorer.judge = recording_judge
    try:
        metrics = trainer.train_step()
    finally:
        TaskScorer.judge = original
        trainer.close()
    state = {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
    return metrics, state, threads


@pytest.mark.parametrize("micro_batch_size", [None, 1])
def test_a_step_with_overlap_equals_the_step_without(write_run_config, micro_batch_size):
    config = write_run_config(training={"max_steps": 1, "learning_rate": 1.0e-2, "seed": 5})
    serial, serial_weights, serial_threads = _step(config, overlap=False, micro_batch_size=micro_batch_size)
    overlapped, overlapped_weights, overlapped_threads = _step(config, overlap=True, micro_batch_size=micro_batch_size)
    assert serial_threads == {"MainThread"}
    assert overlapped_threads and all(name.startswith("cgpo-judge") for name in overlapped_threads)
    values = {k: v for k, v in serial.items() if not k.startswith("time/") and k != "tokens_per_s"}
    assert values == {k: overlapped[k] for k in values}  # losses, rewards, pass rates, KL, grad norm: exactly
    for name, tensor in serial_weights.items():
        assert torch.equal(overlapped_weights[name], tensor), name
    assert overlapped["time/judge"] > 0 and overlapped["time/reward"] > 0 and "time/judge_wait" in overlapped
    # judge and reward ran beside forward_backward: they are not counted again in the overhead
    foreground = sum(overlapped[f"time/{p}"] for p in ("generate", "judge_wait", "forward_backward", "optimizer"))
    assert overlapped["time/overhead"] == pytest.approx(max(0.0, overlapped["time/step"] - foreground), abs=1e-5)


def test_an_error_in_the_worker_is_raised_at_the_join():
    def failing() -> None:
        raise RuntimeError("judge alarm: error rate over the threshold")

    pending = Pending(failing, PhaseTimer(), background=True)
    with pytest.raises(RuntimeError, match="judge alarm"):
        pending.result()


def test_without_background_the_work_runs_at_once_in_the_caller():
    ran: list[str] = []
    pending = Pending(lambda: ran.append(threading.current_thread().name) or 7, PhaseTimer(), background=False)
    assert ran == ["MainThread"]
    assert pending.result() == 7
