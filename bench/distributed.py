"""DDP against FSDP2 on 2 processes: step time, peak RSS and the policy state each process holds.

Each mode trains ``configs/quickstart.yaml`` (its three tasks; tiny models by default) for a few steps under
``accelerate launch`` with 2 processes: ``ddp`` (``--multi_gpu``: every process holds the whole policy, its
gradients and AdamW state) and ``fsdp`` (``--config_file configs/accelerate/fsdp.yaml``: cgpo shards the
policy with ``fully_shard``). Every process reports:

* the wall time of each step (the first ``--warmup`` steps dropped), and its median;
* peak RSS of the whole process (``ru_maxrss``: loading included), RSS after setup, and the peak RSS during
  the training steps alone (``VmHWM`` reset after setup);
* the bytes of policy parameters and AdamW state it holds itself (local shards under FSDP), and of the frozen
  reference copy and reward models, which both modes keep whole on every process.

On CPU (``ACCELERATE_USE_CPU=true``, gloo) this measures the code path, not GPU speed: with 2 cores and
communication through gloo, FSDP's per-layer all-gathers cost time that NCCL on GPUs would overlap.

Usage::

    python bench/distributed.py --out bench-distributed.json
    python bench/distributed.py --model smollm2:135m-instruct --batch 1 --samples 2 --new-tokens 32 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

QUICKSTART = common.REPO / "configs" / "quickstart.yaml"
MODES = ("ddp", "fsdp")


def _local_mb(tensors: Any) -> float:
    """MiB this process holds of ``tensors`` (a DTensor counts its local shard only)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total / 2**20


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since start or since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux: ``5`` in ``clear_refs``), to see the training steps' peak."""
    Path("/proc/self/clear_refs").write_text("5")


def _held(trainer: Any) -> dict[str, float]:
    import torch

    optimizer = trainer.optimizer.optimizer
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    frozen = [trainer.reference] if trainer.reference is not None else []
    frozen += list({id(m): m for t in trainer.tasks if (m := getattr(t.scorer.reward_fn, "model", None))}.values())
    return {
        "policy_mb": _local_mb(trainer.unwrapped.parameters()),
        "adamw_state_mb": _local_mb(state),
        "frozen_models_mb": _local_mb(p for m in frozen for p in m.parameters()),
    }


def worker(args: argparse.Namespace) -> None:
    """One rank: train, time each step, write ``result-<rank>.json``."""
    common.set_threads(args.threads)
    from cgpo.config_loader import load_run_config
    from cgpo.trainer import CGPOTrainer

    overrides = [f"output_dir={Path(args.scratch) / 'run'}", f"training.max_steps={args.steps}",
                 "training.save_every=0", "training.eval_every=0", "logging.progress=none"]  # fmt: skip
    tasks = load_run_config(QUICKSTART, check_plugins=False).tasks
    for i, _ in enumerate(tasks):
        overrides += [f"tasks.{i}.batch_size={args.batch}", f"tasks.{i}.sampling.num_samples={args.samples}",
                      f"tasks.{i}.sampling.max_new_tokens={args.new_tokens}"]  # fmt: skip
    if args.model:
        overrides.append(f"policy.path={args.model}")
    trainer = CGPOTrainer(load_run_config(QUICKSTART, overrides), fresh=True, log=lambda _: None)
    trainer.setup()
    rss_setup = _status_mb("VmRSS")
    _reset_peak()
    times: list[float] = []
    steps_peak = [0.0]
    original = trainer.train_step

    def timed() -> dict[str, Any]:
        started = time.perf_counter()
        metrics = original()
        times.append(time.perf_counter() - started)
        steps_peak[0] = _status_mb("VmHWM")  # before the final save gathers the full weights on process 0
        return metrics

    trainer.train_step = timed  # type: ignore[method-assign]
    trainer.train()
    result = {"rank": trainer.rank, "world": trainer.world, "fsdp": trainer.fsdp, "step_s": times,
              "peak_rss_mb": common.peak_rss_mb(), "rss_after_setup_mb": rss_setup,
              "peak_rss_steps_mb": steps_peak[0], **_held(trainer)}  # fmt: skip
    trainer.close()
    Path(args.result, f"result-{trainer.rank}.json").write_text(json.dumps(result))


def launch(mode: str, args: argparse.Namespace, shared: list[str]) -> list[dict[str, Any]]:
    """Both ranks' results of one mode, from a fresh 2-process launch."""
    with tempfile.TemporaryDirectory(prefix="cgpo-bench-") as tmp:
        flags = (
            ["--multi_gpu"] if mode == "ddp" else ["--config_file", str(common.REPO / "configs/accelerate/fsdp.yaml")]
        )
        command = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", "2",
                   "--num_machines", "1", "--main_process_port", str(args.port), "--mixed_precision", "no",
                   "--dynamo_backend", "no", str(Path(__file__).resolve()), "--worker", mode, *shared,
                   "--result", tmp, "--scratch", tmp]  # fmt: skip
        env = {k: v for k, v in common.worker_env(args.threads, "cpu").items() if not k.startswith("FSDP_")}
        env["HF_HOME"] = os.environ.get("HF_HOME", str(Path(tmp) / "hf-home"))
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return [json.loads(Path(tmp, f"result-{r}.json").read_text()) for r in (0, 1)]


def summarize(ranks: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    measured = [t for r in ranks for t in r["step_s"][warmup:]] or [t for r in ranks for t in r["step_s"]]
    return {
        "step_s_median": common.median(measured),
        "peak_rss_mb": [r["peak_rss_mb"] for r in ranks],
        "rss_after_setup_mb": [r["rss_after_setup_mb"] for r in ranks],
        "peak_rss_steps_mb": [r["peak_rss_steps_mb"] for r in ranks],
        "policy_mb": [r["policy_mb"] for r in ranks],
        "adamw_state_mb": [r["adamw_state_mb"] for r in ranks],
        "frozen_models_mb": [r["frozen_models_mb"] for r in ranks],
        "ranks": ranks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each process left out of the median")
    parser.add_argument("--batch", type=int, default=2, help="prompts per task per process")
    parser.add_argument("--samples", type=int, default=4, help="K, samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--model", help="policy path (default: the quickstart's tiny policy)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--port", type=int, default=29531)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    common.tiny_paths()  # the quickstart's tiny models (its reward model too), once, outside the measured processes
    shared = ["--steps", str(args.steps), "--batch", str(args.batch), "--samples", str(args.samples),
              "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]  # fmt: skip
    shared += ["--model", args.model] if args.model else []
    load = common.load_average()
    results = {mode: summarize(launch(mode, args, shared), args.warmup) for mode in args.modes}
    print(f"{'2 processes, CPU (gloo)':<34}" + "".join(f"{m:>22}" for m in args.modes))
    rows = [("median step (s)", lambda r: f"{r['step_s_median']:.2f}")]
    for key, label in (("peak_rss_mb", "peak RSS per process (MiB)"), ("rss_after_setup_mb", "RSS after setup (MiB)"),
                       ("peak_rss_steps_mb", "peak RSS in the steps (MiB)"), ("policy_mb", "policy held (MiB)"),
                       ("adamw_state_mb", "AdamW state held (MiB)"), ("frozen_models_mb", "frozen models (MiB)")):  # fmt: skip
        rows.append((label, lambda r, k=key: " / ".join(f"{v:.1f}" for v in r[k])))
    for label, cell in rows:
        print(f"{label:<34}" + "".join(f"{cell(results[m]):>22}" for m in args.modes))
    print(f"load average before: {load}; after: {common.load_average()}")
    if args.out:
        args.out.write_text(json.dumps({"modes": results, "load_before": load, "args": vars(args)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
