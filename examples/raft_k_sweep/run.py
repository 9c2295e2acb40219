"""RAFT's K sweep in miniature: the same RAFT budget with K = 1, 2, 4, 8 samples per prompt.

::

    python examples/raft_k_sweep/run.py --out runs/raft_k_sweep

The RAFT paper (arXiv 2304.06767) reports that the reward of best-of-K fine-tuning rises with K: each step
trains on the best of K samples per prompt, and a larger K picks a better one. Here every run has the same
steps, prompts per step, learning rate and seed (``config.yaml``: the tiny JSON task, the tiny Bradley-Terry
reward model, the ``raft`` optimizer); only ``tasks.0.sampling.num_samples`` changes. K = 1 is plain SFT on
the policy's own samples, the control: no selection, so no pressure on the reward.

1. ``cgpo eval`` of the starting policy on the task's held-out prompts (greedy; shared by every K).
2. For each K: ``cgpo train`` with ``tasks.0.sampling.num_samples=K``, then ``cgpo eval --model OUT/k{K}/final``.
3. ``OUT/results.json``::

       {"task", "steps", "prompts_per_step", "eval_prompts",
        "reward_start", "calibrated_reward_start", "pass_rate_start",
        "final_reward": {"1": ..., "2": ..., "4": ..., "8": ...},
        "k": {"1": {"reward_end", "calibrated_reward_end", "pass_rate_end", "train_reward_last",
                    "train_seconds"}, ...}}

   and ``k_sweep.png`` (held-out reward after training against K; training-sample reward over steps per K).

Every step is the real command line (``cgpo.cli.main``, in this process so that torch loads once); the output of
each call goes to ``OUT/logs/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
DEFAULT_KS = (1, 2, 4, 8)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--steps`` and ``--max-eval-prompts`` shrink the sweep for a smoke test)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="run.py")
    parser.add_argument("--out", required=True, type=Path, help="output folder (runs, evaluations, results, plot)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="values of K (default 1 2 4 8)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per K (default: config.yaml's)")
    parser.add_argument(
        "--max-eval-prompts", type=int, default=None, metavar="N", help="held-out prompts to evaluate (default: all)"
    )
    parser.add_argument("--policy", default=None, help="policy to start from (default: config.yaml's, tiny:policy)")
    parser.add_argument("--reward-model", default=None, help="reward model (default: the task's, tiny:reward)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the 1M-parameter model gains little from more)",
    )
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.ks) or len(set(args.ks)) != len(args.ks):
        parser.error(f"--ks must be distinct positive integers, got {args.ks}")
    for flag in ("steps", "max_eval_prompts", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    args.ks = sorted(args.ks)
    return args


def cgpo(args: Sequence[str], *, log_file: Path) -> None:
    """Run ``cgpo ARGS`` (the real command line, :func:`cgpo.cli.main`) in this process; output to ``log_file``.

    Raises:
        RuntimeError: the command exited with a non-zero status (the message ends with the tail of its log).
    """
    from cgpo.cli import main as cgpo_main

    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w", encoding="utf-8") as handle, redirect_stdout(handle), redirect_stderr(handle):
        status = cgpo_main(list(args))
    if status != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8").splitlines()[-20:])
        raise RuntimeError(f"cgpo {' '.join(args)} exited with {status} (log: {log_file}):\n{tail}")


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides every train and eval call of the sweep shares."""
    out = []
    if args.steps is not None:
        out.append(f"training.max_steps={args.steps}")
    if args.policy is not None:
        out.append(f"policy.path={args.policy}")
    if args.reward_model is not None:
        out.append(f"tasks.0.reward.model={args.reward_model}")
    return out


def eval_args(args: argparse.Namespace, output: Path) -> list[str]:
    extra = ["--output", str(output)]
    if args.max_eval_prompts is not None:
        extra += ["--max-prompts", str(args.max_eval_prompts)]
    return extra


def only_task(evaluation: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Name and metrics of the single task of a ``cgpo eval`` result."""
    tasks = evaluation["tasks"]
    if len(tasks) != 1:
        raise ValueError(f"expected one evaluated task, got {sorted(tasks)}")
    return next(iter(tasks.items()))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def train_rewards(metrics: list[dict[str, Any]], task: str) -> list[float]:
    """Mean reward of each step's training samples (all K of every prompt: the policy's own mean reward)."""
    return [float(m[f"task/{task}/reward"]) for m in metrics]


def summarize(
    start: dict[str, Any],
    ends: dict[int, dict[str, Any]],
    curves: dict[int, list[float]],
    seconds: dict[int, float],
    *,
    prompts_per_step: int,
) -> dict[str, Any]:
    """``results.json`` from the ``cgpo eval`` results before training and after each K's run.

    ``train_reward_last`` is the mean training-sample reward over the last quarter of the steps (at least one).
    """
    task, before = only_task(start)
    per_k: dict[str, dict[str, Any]] = {}
    steps = 0
    for k in sorted(ends):
        name, after = only_task(ends[k])
        if name != task or after["n"] != before["n"]:
            raise ValueError(f"K={k} evaluated {name} on {after['n']} prompts, the start {task} on {before['n']}")
        curve = curves[k]
        tail = curve[-max(1, len(curve) // 4) :]
        steps = len(curve)
        per_k[str(k)] = {
            "reward_end": float(after["reward"]),
            "calibrated_reward_end": float(after["calibrated_reward"]),
            "pass_rate_end": float(after["pass_rate"]),
            "response_length_end": float(after["response_length"]),
            "train_reward_first": curve[0],
            "train_reward_last": sum(tail) / len(tail),
            "train_seconds": round(seconds[k], 1),
        }
    return {
        "task": task,
        "steps": steps,
        "prompts_per_step": prompts_per_step,
        "eval_prompts": int(before["n"]),
        "reward_start": float(before["reward"]),
        "calibrated_reward_start": float(before["calibrated_reward"]),
        "pass_rate_start": float(before["pass_rate"]),
        "final_reward": {k: v["reward_end"] for k, v in per_k.items()},
        "k": per_k,
    }


def check_results(results: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless the start reward and every final reward are finite numbers."""
    values = {"reward_start": results.get("reward_start")}
    values.update({f"final_reward.{k}": v for k, v in results.get("final_reward", {}).items()})
    if len(values) < 2:
        raise ValueError("results have no final reward")
    for key, value in values.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"results.{key} is {value!r}, not a finite number")


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over at most ``window`` values."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def plot(results: dict[str, Any], curves: dict[int, list[float]], out: Path) -> Path:
    """``k_sweep.png``: held-out reward after training per K, and the training reward over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(int(k) for k in results["final_reward"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(ks, [results["final_reward"][str(k)] for k in ks], marker="o", label="after training")
    left.axhline(results["reward_start"], color="gray", linestyle="--", label="before training")
    left.set_xscale("log", base=2)
    left.set_xticks(ks, [str(k) for k in ks])
    left.set_xlabel("K (samples per prompt)")
    left.set_title(f"held-out reward ({results['eval_prompts']} prompts, greedy)")
    left.legend()
    left.grid(alpha=0.3)
    cmap = plt.get_cmap("viridis")
    for i, k in enumerate(ks):
        curve = curves[k]
        steps = range(1, len(curve) + 1)
        right.plot(steps, moving_average(curve, max(1, len(curve) // 8)), color=cmap(i / max(1, len(ks) - 1)),
                   label=f"K={k}")  # fmt: skip
    right.set_xlabel("step")
    right.set_title("reward of the training samples (moving average)")
    right.legend()
    right.grid(alpha=0.3)
    fig.suptitle(f"RAFT on {results['task']}: {results['steps']} steps x {results['prompts_per_step']} prompts")
    fig.tight_layout()
    path = out / "k_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import yaml

    torch.set_num_threads(args.threads)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    say("held-out evaluation of the starting policy")
    cgpo(["eval", str(CONFIG), *overrides(args), *eval_args(args, out / "eval_start.json")],
         log_file=logs / "eval_start.log")  # fmt: skip
    start = json.loads((out / "eval_start.json").read_text(encoding="utf-8"))
    task, _ = only_task(start)

    ends: dict[int, dict[str, Any]] = {}
    curves: dict[int, list[float]] = {}
    seconds: dict[int, float] = {}
    batch_size = 0
    for k in args.ks:
        run_dir = out / f"k{k}"
        say(f"K={k}: training -> {run_dir}")
        t0 = time.perf_counter()
        # Plain progress lines into the log (a progress bar would look for a terminal).
        train = ["train", str(CONFIG), *overrides(args), f"tasks.0.sampling.num_samples={k}",
                 f"output_dir={run_dir}", "logging.progress=plain", "--fresh"]  # fmt: skip
        cgpo(train, log_file=logs / f"train_k{k}.log")
        seconds[k] = time.perf_counter() - t0
        resolved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        if resolved["tasks"][0]["sampling"]["num_samples"] != k:
            raise RuntimeError(f"{run_dir}: the run did not use K={k}")
        batch_size = int(resolved["tasks"][0]["batch_size"])
        curves[k] = train_rewards(read_jsonl(run_dir / "metrics.jsonl"), task)
        say(f"K={k}: held-out evaluation of {run_dir / 'final'}")
        cgpo(["eval", str(CONFIG), *overrides(args), "--model", str(run_dir / "final"),
              *eval_args(args, run_dir / "eval_end.json")], log_file=logs / f"eval_k{k}.log")  # fmt: skip
        ends[k] = json.loads((run_dir / "eval_end.json").read_text(encoding="utf-8"))
        _, after = only_task(ends[k])
        say(f"K={k}: held-out reward {only_task(start)[1]['reward']:.3f} -> {after['reward']:.3f}")

    results = summarize(start, ends, curves, seconds, prompts_per_step=batch_size)
    check_results(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    path = plot(results, curves, out)
    say(f"results: {out / 'results.json'}; plot: {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
