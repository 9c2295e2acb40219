"""RAFT's K sweep in miniature: the same RAFT budget with K = 1, 2, 4, 8 samples per prompt.

::

    python examples/raft_k_sweep/run.py --out runs/raft_k_sweep

The RAFT paper (arXiv 2304.06767) reports that the reward of best-of-K fine-tuning rises with K: each step
trains on the best of K samples per prompt, and a larger K picks a better one. Here every run has the same
steps, prompts per step and learning rate (``config.yaml``: the tiny JSON task, the tiny Bradley-Terry reward
model, the ``raft`` optimizer); only ``tasks.0.sampling.num_samples`` changes. K = 1 is plain SFT on the
policy's own samples, the control: no selection, so no pressure on the reward. Each K is trained with several
seeds (``training.seed``) and the held-out rewards are averaged: one run of this size is noisy (seed 0 and seed 1
of the same K can end 0.5 apart).

1. ``cgpo eval`` of the starting policy on the task's held-out prompts (greedy; shared by every K and seed).
2. For each K and seed: ``cgpo train`` with ``tasks.0.sampling.num_samples=K training.seed=S``, then
   ``cgpo eval --model OUT/k{K}_s{S}/final``.
3. ``OUT/results.json``::

       {"task", "steps", "prompts_per_step", "seeds", "eval_prompts",
        "reward_start", "calibrated_reward_start", "pass_rate_start", "judge_violation_rate_start": {judge: rate},
        "final_reward": {"1": mean over seeds, "2": ..., "4": ..., "8": ...},
        "k": {"1": {"reward_end", "reward_end_per_seed", "reward_end_std", "calibrated_reward_end",
                    "pass_rate_end", "response_length_end", "judge_violation_rate_end": {judge: rate},
                    "train_reward_first", "train_reward_last", "train_seconds"}, ...}}

   (every ``*_end`` and ``train_*`` value a mean over seeds; ``train_seconds`` their total) and ``k_sweep.png``
   (held-out reward after training against K, each seed and the mean; training-sample reward over steps).

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
from pathlib import Path
from typing import Any

from cgpo.studies import jsonl_objects, single_task

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
DEFAULT_KS = (1, 2, 4, 8)
DEFAULT_SEEDS = (0, 1, 2)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--steps`` and ``--max-eval-prompts`` shrink the sweep for a smoke test)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="run.py")
    parser.add_argument("--out", required=True, type=Path, help="output folder (runs, evaluations, results, plot)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="values of K (default 1 2 4 8)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="training seeds per K (default 0 1 2)"
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: config.yaml's)")
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
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct non-negative integers, got {args.seeds}")
    for flag in ("steps", "max_eval_prompts", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    args.ks = sorted(args.ks)
    return args


def cgpo(args: Sequence[str], *, log_file: Path) -> None:
    """Run ``cgpo ARGS`` in this process (the real command line), its output in ``log_file``."""
    from cgpo.cli import run_logged

    run_logged(args, log_file)


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


def train_rewards(metrics: list[dict[str, Any]], task: str) -> list[float]:
    """Mean reward of each step's training samples (all K of every prompt: the policy's own mean reward)."""
    return [float(m[f"task/{task}/reward"]) for m in metrics]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def summarize(
    start: dict[str, Any],
    ends: dict[int, dict[int, dict[str, Any]]],
    curves: dict[int, dict[int, list[float]]],
    seconds: dict[int, float],
    *,
    prompts_per_step: int,
) -> dict[str, Any]:
    """``results.json`` from the ``cgpo eval`` results before training and after each (K, seed) run.

    Args:
        start: The evaluation of the starting policy.
        ends: ``ends[K][seed]``: the evaluation of that run's final model.
        curves: ``curves[K][seed]``: that run's training-sample reward per step.
        seconds: Training seconds per K, all seeds together.
        prompts_per_step: The task's batch size.

    ``train_reward_last`` is the mean training-sample reward over the last quarter of the steps (at least one).
    """
    task, before = single_task(start)
    per_k: dict[str, dict[str, Any]] = {}
    seeds: list[int] = []
    steps = 0
    for k in sorted(ends):
        seeds = sorted(ends[k])
        rows = []
        for seed in seeds:
            name, after = single_task(ends[k][seed])
            if name != task or after["n"] != before["n"]:
                raise ValueError(
                    f"K={k} seed {seed} evaluated {name} on {after['n']} prompts, the start {task} on {before['n']}"
                )
            rows.append(after)
        tails = [c[-max(1, len(c) // 4) :] for c in (curves[k][seed] for seed in seeds)]
        steps = len(curves[k][seeds[0]])
        rewards = [float(r["reward"]) for r in rows]
        per_k[str(k)] = {
            "reward_end": mean(rewards),
            "reward_end_per_seed": rewards,
            "reward_end_std": (sum((r - mean(rewards)) ** 2 for r in rewards) / len(rewards)) ** 0.5,
            "calibrated_reward_end": mean([float(r["calibrated_reward"]) for r in rows]),
            "pass_rate_end": mean([float(r["pass_rate"]) for r in rows]),
            "response_length_end": mean([float(r["response_length"]) for r in rows]),
            "judge_violation_rate_end": {
                label: mean([float(r["judges"][label]["violation_rate"]) for r in rows]) for label in before["judges"]
            },
            "train_reward_first": mean([curves[k][seed][0] for seed in seeds]),
            "train_reward_last": mean([mean(tail) for tail in tails]),
            "train_seconds": round(seconds[k], 1),
        }
    return {
        "task": task,
        "steps": steps,
        "prompts_per_step": prompts_per_step,
        "seeds": seeds,
        "eval_prompts": int(before["n"]),
        "reward_start": float(before["reward"]),
        "calibrated_reward_start": float(before["calibrated_reward"]),
        "pass_rate_start": float(before["pass_rate"]),
        "judge_violation_rate_start": {label: float(j["violation_rate"]) for label, j in before["judges"].items()},
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


def plot(results: dict[str, Any], curves: dict[int, dict[int, list[float]]], out: Path) -> Path:
    """``k_sweep.png``: held-out reward after training per K (each seed and the mean), training reward over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(int(k) for k in results["final_reward"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for k in ks:
        per_seed = results["k"][str(k)]["reward_end_per_seed"]
        left.scatter([k] * len(per_seed), per_seed, color="tab:blue", alpha=0.35, s=18)
    left.plot(ks, [results["final_reward"][str(k)] for k in ks], marker="o", color="tab:blue",
              label=f"after training (mean of {len(results['seeds'])} seeds; dots: each seed)")  # fmt: skip
    left.axhline(results["reward_start"], color="gray", linestyle="--", label="before training")
    left.set_xscale("log", base=2)
    left.set_xticks(ks, [str(k) for k in ks])
    left.set_xlabel("K (samples per prompt)")
    left.set_title(f"held-out reward ({results['eval_prompts']} prompts, greedy)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    cmap = plt.get_cmap("viridis")
    for i, k in enumerate(ks):
        runs = list(curves[k].values())
        curve = [mean(values) for values in zip(*runs, strict=True)]
        steps = range(1, len(curve) + 1)
        right.plot(steps, moving_average(curve, max(1, len(curve) // 8)), color=cmap(i / max(1, len(ks) - 1)),
                   label=f"K={k}")  # fmt: skip
    right.set_xlabel("step")
    right.set_title("training-sample reward (mean over seeds, moving avg.)")
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
    task, _ = single_task(start)

    ends: dict[int, dict[int, dict[str, Any]]] = {}
    curves: dict[int, dict[int, list[float]]] = {}
    seconds: dict[int, float] = {}
    batch_size = 0
    for k in args.ks:
        ends[k], curves[k], seconds[k] = {}, {}, 0.0
        for seed in args.seeds:
            run_dir = out / f"k{k}_s{seed}"
            say(f"K={k} seed {seed}: training -> {run_dir}")
            t0 = time.perf_counter()
            # Plain progress lines into the log (a progress bar would look for a terminal).
            train = ["train", str(CONFIG), *overrides(args), f"tasks.0.sampling.num_samples={k}", f"training.seed={seed}",
                     f"output_dir={run_dir}", "logging.progress=plain", "--fresh"]  # fmt: skip
            cgpo(train, log_file=logs / f"train_k{k}_s{seed}.log")
            seconds[k] += time.perf_counter() - t0
            resolved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
            if resolved["tasks"][0]["sampling"]["num_samples"] != k or resolved["training"]["seed"] != seed:
                raise RuntimeError(f"{run_dir}: the run did not use K={k} and seed {seed}")
            batch_size = int(resolved["tasks"][0]["batch_size"])
            curves[k][seed] = train_rewards(jsonl_objects(run_dir / "metrics.jsonl"), task)
            cgpo(["eval", str(CONFIG), *overrides(args), "--model", str(run_dir / "final"),
                  *eval_args(args, run_dir / "eval_end.json")], log_file=logs / f"eval_k{k}_s{seed}.log")  # fmt: skip
            ends[k][seed] = json.loads((run_dir / "eval_end.json").read_text(encoding="utf-8"))
            say(f"K={k} seed {seed}: held-out reward {single_task(start)[1]['reward']:.3f} -> "
                f"{single_task(ends[k][seed])[1]['reward']:.3f}")  # fmt: skip

    results = summarize(start, ends, curves, seconds, prompts_per_step=batch_size)
    check_results(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    path = plot(results, curves, out)
    say(f"results: {out / 'results.json'}; plot: {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
