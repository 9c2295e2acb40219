"""Faults injected into real ``cgpo train`` processes: a disk that fills up during a checkpoint."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from cgpo import checkpoint as ckpt


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the size of every file the child writes at ``limit`` bytes."""

    def apply() -> None:
        # Ignored signals stay ignored across exec: a write past the limit fails with EFBIG instead of the
        # process being killed by SIGXFSZ, exactly what a full disk looks like to the writer (ENOSPC).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_stops_with_one_line_and_the_run_resumes_from_the_previous_one(
    write_run_config,
):
    config = write_run_config(training={"max_steps": 4, "learning_rate": 1.0e-3, "save_every": 2, "seed": 0})
    out = config.parent / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cgpo", "train", str(config)]
    first = subprocess.run([*command, "training.max_steps=2"], env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    optimizer_size = (out / "checkpoints" / "step-2" / "optimizer.pt").stat().st_size
    weights_size = (out / "checkpoints" / "step-2" / "policy" / "model.safetensors").stat().st_size
    assert weights_size < optimizer_size // 2  # so that the limit below stops the optimizer state, by name
    # The disk "fills up" at the step-4 checkpoint: files may grow to half the optimizer state, no further.
    full = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                          preexec_fn=_file_size_limit(optimizer_size // 2))  # fmt: skip
    assert full.returncode == 2, full.stderr[-2000:]
    last = full.stderr.strip().splitlines()[-1]
    staging = ckpt.staging_dir(out, 4)
    assert last == (
        f"cgpo train: cannot write {staging / 'optimizer.pt'}: File too large "
        "(the disk is full or a file size limit was reached)"
    )
    assert "Traceback" not in full.stderr
    # Nothing half-written; the step-2 checkpoint and the first run's final model are intact.
    assert not staging.exists()
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2]
    assert ckpt.verify_checkpoint(out / "checkpoints" / "step-2") is None
    assert (out / "final" / "model.safetensors").is_file()
    # Space again: the same command resumes from step 2 and finishes.
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from {out / 'checkpoints' / 'step-2'} (step 2)" in again.stderr
    assert ckpt.verify_checkpoint(out / "checkpoints" / "step-4") is None


# The trainer resumes from cgpo.checkpoint.latest_valid_checkpoint and holds a cgpo.run_lock.RunLock.
@pytest.mark.slow
def test_a_truncated_optimizer_state_in_the_latest_checkpoint_resumes_from_the_previous_one(write_run_config):
    config = write_run_config(training={"max_steps": 4, "learning_rate": 1.0e-3, "save_every": 2, "seed": 0})
    out = config.parent / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cgpo", "train", str(config)]
    subprocess.run(command, env=env, capture_output=True, check=True)
    newest = out / "checkpoints" / "step-4"
    size = (newest / "optimizer.pt").stat().st_size
    os.truncate(newest / "optimizer.pt", size // 2)
    resumed = subprocess.run([*command, "training.max_steps=6"], env=env, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (
        f"warning: skipping checkpoint {newest}: optimizer.pt has {size // 2} bytes, the manifest says {size} "
        "(truncated or overwritten)"
    ) in resumed.stderr
    assert f"resumed from {out / 'checkpoints' / 'step-2'} (step 2)" in resumed.stderr
    assert ckpt.verify_checkpoint(out / "checkpoints" / "step-6") is None


@pytest.mark.slow
def test_a_second_run_on_the_same_output_dir_is_refused_naming_the_first(write_run_config):
    import socket
    import time

    config = write_run_config(training={"max_steps": 200, "learning_rate": 1.0e-3, "seed": 0})
    out = config.parent / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cgpo", "train", str(config)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").stat().st_size:
            assert first.poll() is None and time.time() < deadline, "the first run ended before its first step"
            time.sleep(0.1)
        second = subprocess.run(
            [*command, "training.max_steps=1"], env=env, capture_output=True, text=True, check=False, timeout=120
        )
        assert second.returncode == 2, second.stderr[-2000:]
        assert (
            second.stderr.strip()
            .splitlines()[-1]
            .startswith(
                f"cgpo train: {out} is in use by another cgpo run (pid {first.pid} on host {socket.gethostname()}, since "
            )
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
