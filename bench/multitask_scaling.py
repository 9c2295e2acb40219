"""Step time of cgpo with 1, 2 and 4 tasks at the same total number of completions per step.

Every configuration samples ``--completions`` completions per step (default 32 = 8 prompts x K 4), split
evenly over its tasks: 1 task of 8 prompts, 2 of 4, 4 of 2. What grows with the number of tasks is what the
trainer does per task (judging, reward scoring, log-prob forwards, loss, backward), so the growth of the
step time measures its multi-task cost. Target (issue 7): at most +10% from 1 to 4 tasks.

``--tasks copies`` (default) runs copies of ``tiny_arithmetic`` under distinct names: identical work per
completion, so the comparison isolates the per-task machinery. ``--tasks distinct`` runs different tiny
tasks (arithmetic, instructions, JSON, code), whose completions differ in length and judges: closer to a real
mixture, but the work per completion changes with the mixture too.

The default ``--max-new-tokens 8`` is shorter than the tiny model's arithmetic answers (``\\boxed{12}`` and
EOS), so nearly every sample runs to the limit and every configuration decodes and scores the same number of
tokens (the ``tokens`` column: generated rows x columns per step). With longer limits the completion
lengths, hence the work, vary at random from step to step and from one set of prompts to another.

Each configuration runs in a fresh process, in alternating order (1, 2, 4, 1, 2, 4, ...), with the phase
clock of ``bench/_common.py``; medians over processes.

Usage::

    python bench/multitask_scaling.py --out bench-scaling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

DISTINCT = ["tiny_arithmetic", "tiny_instructions", "tiny_json", "tiny_code"]


def task_entries(n: int, args: argparse.Namespace, reward_model: str) -> list[dict[str, Any]]:
    per_task = args.completions // (n * args.k)
    sampling = {"num_samples": args.k, "temperature": 1.0, "max_new_tokens": args.max_new_tokens}
    entries = []
    for i in range(n):
        name = "tiny_arithmetic" if args.tasks == "copies" else DISTINCT[i]
        entry = {
            "include": str(common.TASKS / f"{name}.yaml"),
            "batch_size": per_task,
            "sampling": sampling,
            "reward": {"model": reward_model, "baseline": "reference"},
            "weight": 1.0,
        }
        if args.tasks == "copies":
            entry["name"] = f"arithmetic_{i}"
        entries.append(entry)
    return entries


def worker(args: argparse.Namespace) -> dict[str, Any]:
    common.set_threads(args.threads)
    policy, reward = (args.model, args.reward_model) if args.model and args.reward_model else common.tiny_paths()
    config = common.cgpo_config(
        Path(args.scratch), tasks=task_entries(args.worker, args, args.reward_model or reward), policy=args.model or policy,
        dtype=args.dtype, steps=args.warmup + args.steps,
    )  # fmt: skip
    steps, _, _ = common.run_cgpo_steps(config, warmup=args.warmup, device=args.device)
    return {"steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4], help="numbers of tasks")
    parser.add_argument("--tasks", choices=["copies", "distinct"], default="copies")
    parser.add_argument("--completions", type=int, default=32, help="completions per step, all tasks together")
    parser.add_argument("--k", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="short enough that nearly every sample uses all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per process")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", help="policy path (default: the embedded tiny policy)")
    parser.add_argument("--reward-model", help="reward model path (default: the embedded tiny reward model)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for n in [args.worker] if args.worker else args.counts:
        if args.completions % (n * args.k):
            parser.error(f"--completions {args.completions} does not split into {n} tasks of K={args.k} samples")
        if args.tasks == "distinct" and n > len(DISTINCT):
            parser.error(f"--tasks distinct has {len(DISTINCT)} tasks")

    if args.worker:
        started = time.perf_counter()
        out = worker(args)
        out.update(wall_s=time.perf_counter() - started, peak_rss_mb=common.peak_rss_mb())
        Path(args.result).write_text(json.dumps(out))
        return 0

    if not (args.model and args.reward_model):
        common.tiny_paths()  # build the tiny models once, before any timing
    shared = [
        "--tasks", args.tasks, "--completions", str(args.completions), "--k", str(args.k),
        "--max-new-tokens", str(args.max_new_tokens), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
    ]  # fmt: skip
    for flag, value in (("--model", args.model), ("--reward-model", args.reward_model)):
        if value:
            shared += [flag, value]
    load_before = common.load_average()
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.counts}
    for round_ in range(args.rounds):
        for n in args.counts:
            result = common.run_worker(Path(__file__), ["--worker", str(n), *shared], threads=args.threads,
                                       device=args.device, timeout=args.timeout)  # fmt: skip
            summary = common.summarize_run(result["steps"])
            runs[n].append(summary)
            print(f"round {round_ + 1}, {n} task(s): median step {summary['step_median_s']:.4f} s "
                  f"({summary['cpu_step_median_s']:.4f} CPU s)", flush=True)  # fmt: skip
    base = args.counts[0]
    figures: dict[str, Any] = {}
    for n in args.counts:
        # Growth per round against the same round's first configuration (adjacent in time), then the median.
        growth = [r["step_median_s"] / b["step_median_s"] - 1 for r, b in zip(runs[n], runs[base], strict=True)]
        cpu = [r["cpu_step_median_s"] / b["cpu_step_median_s"] - 1 for r, b in zip(runs[n], runs[base], strict=True)]
        figures[str(n)] = {
            "step_s": common.median([r["step_median_s"] for r in runs[n]]),
            "cpu_step_s": common.median([r["cpu_step_median_s"] for r in runs[n]]),
            "growth": common.median(growth),
            "cpu_growth": common.median(cpu),
            "phases_s": {k: common.median([r["phases_mean_s"][k] for r in runs[n]]) for k in common.KEYS},
            "generated_tokens_per_step": common.median([r["generated_tokens_mean"] for r in runs[n]]),
        }
    summary = {
        "tasks": figures,
        "runs": {str(n): v for n, v in runs.items()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result", "scratch", "out")},
        "load_before": load_before,
        "load_after": common.load_average(),
    }
    print(f"{'tasks':>6}{'step s':>10}{'CPU s':>10}{'growth':>10}{'CPU growth':>12}{'tokens':>8}")
    for n in args.counts:
        f = figures[str(n)]
        print(f"{n:>6}{f['step_s']:>10.4f}{f['cpu_step_s']:>10.4f}{f['growth']:>+10.1%}{f['cpu_growth']:>+12.1%}"
              f"{f['generated_tokens_per_step']:>8.0f}")  # fmt: skip
    print(f"load average before: {load_before}; after: {summary['load_after']}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    last = figures[str(args.counts[-1])]
    print(f"step-time growth {base} -> {args.counts[-1]} tasks: {last['growth']:+.1%} (CPU {last['cpu_growth']:+.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
