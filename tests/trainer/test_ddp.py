"""Two-process DDP on CPU: the replicas stay identical while each process trains on its own prompts.

The run goes through the launch command that really synchronizes on CPU (environment.md §6):
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2``. The other spellings silently
start two independent single-process runs, whose weights then drift apart; the checks below catch that.

The launched script (written to ``tmp_path``) drives :class:`cgpo.trainer.CGPOTrainer` exactly as
``cgpo train`` does (``setup()`` then ``train()``), records the prompt indices each process draws (by
wrapping ``trainer.draw``), and every rank writes a SHA-256 of its policy parameters before and after
training, plus the tensors themselves, to ``OUT/rank-{rank}.*``. Nothing in the trainer is instrumented.

The three tiny tasks use three optimizers (CRPG, CODPO, CRRAFT); CRRAFT comes last with a generated
baseline a_bar, so the synchronizing backward of each step follows two forward passes of the DDP-wrapped
policy (the samples and a_bar). A second configuration turns on ``training.micro_batch_size``, whose
gradient is pushed through the model chunk by chunk, each chunk a separate (synchronizing) backward.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = 2
BATCH = 2  # prompts per task per process; the global batch is BATCH * 2

SCRIPT = r'''
"""Launched once per rank: train with CGPOTrainer, then write this rank's evidence to OUT."""
import hashlib
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from cgpo.config_loader import load_run_config  # noqa: E402
from cgpo.trainer import CGPOTrainer  # noqa: E402


def digest(model):
    """SHA-256 over every parameter's bytes, in name order (identical replicas <=> identical digests)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


config_path, out = sys.argv[1], Path(sys.argv[2])
trainer = CGPOTrainer(load_run_config(config_path, sys.argv[3:]), log=lambda message: None, fresh=True)
trainer.setup()
initial = digest(trainer.unwrapped)
drawn = []
original_draw = trainer.draw


def recording_draw(task):
    indices = original_draw(task)
    drawn.append({"step": trainer.step + 1, "task": task.name, "indices": list(indices)})
    return indices


trainer.draw = recording_draw
try:
    trainer.train()
finally:
    trainer.close()
rank = trainer.rank
torch.save({k: v.detach().cpu().clone() for k, v in trainer.unwrapped.state_dict().items()}, out / f"rank-{rank}.pt")
evidence = {
    "rank": rank,
    "world": trainer.world,
    "num_processes": trainer.accelerator.num_processes,
    "distributed_type": str(trainer.accelerator.distributed_type),
    "wrapper": type(trainer.policy).__name__,
    "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    "initial": initial,
    "final": digest(trainer.unwrapped),
    "drawn": drawn,
    "samplers": {t.name: t.sampler.state_dict() for t in trainer.tasks},
    "dataset_sizes": {t.name: len(t.records) for t in trainer.tasks},
    "step": trainer.step,
}
(out / f"rank-{rank}.json").write_text(json.dumps(evidence))

# Ends as `cgpo train` does (cgpo.distributed.shutdown says why).
from cgpo.distributed.shutdown import exit_process, leave_process_group  # noqa: E402

leave_process_group()
exit_process(0)
'''


def _free_port() -> int:
    with socket.socket() as sock:  # other test runs on this machine may hold the default port 29500
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_config(models: Path, output_dir: Path, micro_batch_size: int | None) -> str:
    # Random tiny models never satisfy the shipped judges, and a batch in which nothing passes has a zero
    # gradient, so weights would not move. A format judge that about 60% of random 6-character samples pass
    # (a letter from a to m) gives every optimizer satisfied and violating samples to learn from.
    judge = '[{name: format, params: {must_match: ["[a-m]"]}}]'
    common = f"batch_size: {BATCH}, judges: {judge}, sampling: {{num_samples: 4, max_new_tokens: 6}}"
    micro = f", micro_batch_size: {micro_batch_size}" if micro_batch_size else ""
    return f"""
policy: {{path: {models / "policy"}}}
tasks:
  - {{include: {REPO}/tasks/tiny_arithmetic.yaml, reward: {{model: {models / "reward"}, baseline: reference}}, {common}}}
  - {{include: {REPO}/tasks/tiny_json.yaml, reward: {{model: {models / "reward"}, baseline: reference}}, {common}}}
  - {{include: {REPO}/tasks/tiny_instructions.yaml, weight: 0.5,
     reward: {{model: {models / "reward"}, baseline: generated}}, {common}}}
training: {{max_steps: {STEPS}, learning_rate: 1.0e-2, lr_scheduler: constant, save_every: 1, keep_checkpoints: 3{micro}}}
output_dir: {output_dir}
logging: {{progress: plain}}
"""


def _launch(tmp_path: Path, models: Path, micro_batch_size: int | None) -> tuple[Path, Path, float]:
    """Run the script under the 2-process CPU launcher; return (evidence folder, output_dir, seconds)."""
    out, output_dir = tmp_path / "evidence", tmp_path / "run"
    out.mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(_run_config(models, output_dir, micro_batch_size))
    result, seconds = _launch_script(tmp_path, SCRIPT, [str(config), str(out)])
    assert result.returncode == 0, (
        f"launcher exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return out, output_dir, seconds


def _launcher_env(tmp_path: Path) -> dict[str, str]:
    """A clean launcher environment: no inherited ACCELERATE_* settings, and an empty HF_HOME so that no
    default accelerate config file (mixed precision, GPU ids, ...) changes what the flags ask for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(ACCELERATE_USE_CPU="true", HF_HOME=str(tmp_path / "hf-home"), PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))  # fmt: skip
    return env


def _launch_script(tmp_path: Path, text: str, args: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a script (``text``) once per rank under the 2-process CPU launcher; return its result and seconds."""
    script = tmp_path / f"ddp_script_{len(list(tmp_path.glob('ddp_script_*.py')))}.py"
    script.write_text(text)
    env = _launcher_env(tmp_path)
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
        str(script), *args,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=tmp_path)
    return result, time.perf_counter() - started


def _check_replicas(out: Path, output_dir: Path) -> tuple[dict, dict]:
    import torch

    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    # (a) two really distributed processes, not two single-process copies
    for r, ev in enumerate(ranks):
        assert ev["rank"] == r and ev["world"] == 2 and ev["num_processes"] == 2, ev
        assert ev["distributed_type"].endswith("MULTI_CPU"), ev["distributed_type"]
        assert ev["wrapper"] == "DistributedDataParallel" and ev["backend"] == "gloo", ev
        assert ev["step"] == STEPS
    state = json.loads((output_dir / "checkpoints" / f"step-{STEPS}" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert (output_dir / "checkpoints" / f"step-{STEPS}" / "rng-1.pt").is_file()

    # (b) identical replicas: same start, same end, and training moved the weights
    first, second = ranks
    assert first["initial"] == second["initial"]
    assert first["final"] != first["initial"], "training left the weights unchanged"
    tensors = [torch.load(out / f"rank-{r}.pt") for r in (0, 1)]
    worst = max(float((tensors[0][k] - tensors[1][k]).abs().max()) for k in tensors[0])
    assert first["final"] == second["final"], f"replicas differ (max |diff| {worst:g})"
    from safetensors.torch import load_file

    saved = load_file(output_dir / "final" / "model.safetensors")  # written by rank 0 only
    assert all(torch.equal(saved[k], tensors[0][k]) for k in saved)

    # (c) each process trains on its own slice of one global batch
    for step in range(1, STEPS + 1):
        for task in first["samplers"]:
            mine = [d["indices"] for d in first["drawn"] if d["step"] == step and d["task"] == task]
            theirs = [d["indices"] for d in second["drawn"] if d["step"] == step and d["task"] == task]
            assert len(mine) == len(theirs) == 1 and len(mine[0]) == len(theirs[0]) == BATCH
            assert mine[0] != theirs[0], f"step {step}, task {task}: both ranks drew {mine[0]}"
            if first["dataset_sizes"][task] >= 2 * BATCH:  # within one epoch, no prompt is drawn twice
                assert not set(mine[0]) & set(theirs[0])
    assert first["samplers"] == second["samplers"]  # the samplers advanced in lockstep: 2 * BATCH per step
    for task, sampler in first["samplers"].items():
        drawn_total = sampler["epoch"] * sampler["size"] + sampler["position"]
        assert drawn_total == STEPS * 2 * BATCH, (task, sampler)
    return first, second


@pytest.mark.slow
@pytest.mark.parametrize("micro_batch_size", [None, 2], ids=["full-batch", "micro-batch-2"])
def test_two_process_ddp_keeps_replicas_identical(tmp_path, tiny_models_dir, micro_batch_size):
    out, output_dir, seconds = _launch(tmp_path, tiny_models_dir, micro_batch_size)
    first, second = _check_replicas(out, output_dir)
    print(f"DDP 2x CPU, micro_batch_size={micro_batch_size}: {seconds:.1f} s; "
          f"initial {first['initial'][:16]}, final rank0 {first['final'][:16]} rank1 {second['final'][:16]}")  # fmt: skip


# A full disk on rank 1 only: its files are capped at LIMIT bytes (RLIMIT_FSIZE, set in that process alone,
# before cgpo is imported), so its rng-1.pt write fails with EFBIG while rank 0 writes everything. The run is
# `cgpo train` itself, as a user launches it.
FULL_DISK_ON_RANK_1 = r"""
import os
import resource
import signal
import sys

if os.environ["RANK"] == "1":
    # Ignored, SIGXFSZ leaves the failing write to return EFBIG, what a full disk (ENOSPC) looks like.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))

from cgpo.cli import main  # noqa: E402

sys.exit(main(["train", sys.argv[1]]))
"""


@pytest.mark.slow
def test_a_failed_checkpoint_write_on_one_rank_stops_every_rank_at_once_with_the_same_line(tmp_path, tiny_models_dir):
    from cgpo import checkpoint as ckpt

    output_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(_run_config(tiny_models_dir, output_dir, None))
    # The datasets cache of the launched run is filled first (its Arrow files are tens of kB), so that the
    # first file rank 1 writes past 1 kB is its checkpoint's rng-1.pt.
    warm = "import sys; from cgpo.config_loader import load_run_config; from cgpo.data import load_records; " \
           "[load_records(task) for task in load_run_config(sys.argv[1]).tasks]"  # fmt: skip
    subprocess.run([sys.executable, "-c", warm, str(config)], env=_launcher_env(tmp_path), check=True, timeout=120)
    result, seconds = _launch_script(tmp_path, FULL_DISK_ON_RANK_1, [str(config), "1024"])
    assert result.returncode != 0, result.stderr[-4000:]
    staging = ckpt.staging_dir(output_dir, 1)
    line = (
        f"cgpo train: cannot write {staging / 'rng-1.pt'}: File too large "
        "(the disk is full or a file size limit was reached) (on process 1 of 2)"
    )
    # Both ranks stop with the same line (rank 0's own writes succeeded), in seconds. Before the ranks agreed,
    # rank 1 raised alone: here torchrun then killed rank 0 (SIGTERM) after rank 0 had failed on a file of the
    # staging folder rank 1 had removed ("rng-0.pt: No such file or directory"); with NCCL rank 0 would have
    # waited at the next barrier for the collective timeout (30 minutes).
    # Counted in the text, not per line: the two processes write to one pipe, and their lines may interleave.
    assert result.stderr.count(line) == 2, result.stderr[-4000:]
    assert seconds < 120, seconds
    assert not staging.exists() and ckpt.complete_checkpoints(output_dir) == []


# Resumes a run under the launcher and records, per rank, which checkpoint it resumed from and how many files
# it hashed while choosing it (cgpo.checkpoint._sha256 wrapped, during setup only).
RESUME = r"""
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from cgpo import checkpoint as ckpt  # noqa: E402
from cgpo.config_loader import load_run_config  # noqa: E402
from cgpo.trainer import CGPOTrainer  # noqa: E402

hashed = []
original = ckpt._sha256


def counting_sha256(path, **kwargs):
    hashed.append(str(path))
    return original(path, **kwargs)


ckpt._sha256 = counting_sha256
lines = []
trainer = CGPOTrainer(load_run_config(sys.argv[1], sys.argv[3:]), log=lines.append)
trainer.setup()
during_setup, resumed = len(hashed), trainer.step
try:
    trainer.train()
finally:
    trainer.close()
evidence = {"resumed": resumed, "hashed": during_setup, "step": trainer.step, "log": lines}
(Path(sys.argv[2]) / f"resume-{trainer.rank}.json").write_text(json.dumps(evidence))

# Ends as `cgpo train` does (cgpo.distributed.shutdown says why).
from cgpo.distributed.shutdown import exit_process, leave_process_group  # noqa: E402

leave_process_group()
exit_process(0)
"""


@pytest.mark.slow
def test_ddp_resume_is_verified_by_rank_0_alone_and_every_rank_resumes_from_its_choice(tmp_path, tiny_models_dir):
    out, output_dir, _ = _launch(tmp_path, tiny_models_dir, None)  # checkpoints at steps 1 and 2
    newest = output_dir / "checkpoints" / f"step-{STEPS}" / "optimizer.pt"
    os.truncate(newest, newest.stat().st_size // 2)  # corrupt: the resume must fall back to step 1
    result, _ = _launch_script(
        tmp_path, RESUME, [str(tmp_path / "run.yaml"), str(out), f"training.max_steps={STEPS + 1}"]
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    first, second = (json.loads((out / f"resume-{rank}.json").read_text()) for rank in (0, 1))
    assert first["resumed"] == second["resumed"] == STEPS - 1  # the same, verified, fallback on both ranks
    assert first["step"] == second["step"] == STEPS + 1
    manifest = json.loads((output_dir / "checkpoints" / f"step-{STEPS - 1}" / "manifest.json").read_text())
    assert second["hashed"] == 0  # rank 1 hashed nothing: rank 0's choice was broadcast
    # Rank 0 stopped hashing the corrupt checkpoint at its size check, then hashed every file of step 1.
    assert first["hashed"] == len(manifest["files"])
    assert any(f"skipping checkpoint {newest.parent}: optimizer.pt has" in line for line in first["log"])
