"""The reward-hacking study in miniature: a gameable reward, an unconstrained run and a CGPO run, same budget.

::

    python examples/reward_hacking/run.py --out runs/reward_hacking

1. ``cgpo eval`` of the starting policy on the task's held-out prompts (greedy; one evaluation serves both runs,
   which start from the same policy with the same task, judges and reward).
2. For each run (``unconstrained.yaml``: RAFT; ``cgpo.yaml``: CRRAFT), ``cgpo train`` with the same steps,
   prompts per step, K, learning rate and seed, then ``cgpo eval --model OUT/final`` on the same prompts.
3. ``OUT/results.json``::

       {"unconstrained": {"reward_start", "reward_end", "pass_rate_start", "pass_rate_end",
                          "calibrated_reward_start", "calibrated_reward_end",
                          "response_length_start", "response_length_end",
                          "optimizer", "steps", "eval_prompts", "train_seconds", "examples": [...]},
        "cgpo": {...}}

   with every reward measured by the same gameable length reward (``length_reward.py``) and every pass rate by
   the task's ifeval judge, and two plots: ``training_curves.png`` (per-step reward, pass rate and response
   length of the training samples) and ``held_out.png`` (held-out before and after).

Every step is the real command line (``cgpo.cli.main``, in this process so that torch loads once), with this
folder on ``sys.path`` (the reward is the ``module:Class`` plugin ``length_reward:LengthReward``); the output
of each call goes to ``OUT/logs/``.
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
#: Run name -> run config; both include task.yaml and differ only in the task's optimizer.
RUNS = {"unconstrained": HERE / "unconstrained.yaml", "cgpo": HERE / "cgpo.yaml"}
REQUIRED = ("reward_start", "reward_end", "pass_rate_start", "pass_rate_end")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--steps`` and ``--max-eval-prompts`` shrink the study for a smoke test)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="run.py")
    parser.add_argument("--out", required=True, type=Path, help="output folder (runs, evaluations, results, plots)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the configs', 60)")
    parser.add_argument(
        "--max-eval-prompts", type=int, default=None, metavar="N", help="held-out prompts to evaluate (default: all)"
    )
    parser.add_argument("--policy", default=None, help="policy to start from (default: the configs', tiny:policy)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the 1M-parameter model gains little from more)",
    )
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.max_eval_prompts is not None and args.max_eval_prompts < 1:
        parser.error(f"--max-eval-prompts must be at least 1, got {args.max_eval_prompts}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def cgpo(args: Sequence[str], *, log_file: Path) -> None:
    """Run ``cgpo ARGS`` in this process (the real command line), its output in ``log_file``."""
    from cgpo.cli import run_logged

    run_logged(args, log_file)


def overrides(args: argparse.Namespace, output_dir: Path | None = None) -> list[str]:
    """The ``key=value`` overrides every train and eval call of the study shares."""
    out = [] if output_dir is None else [f"output_dir={output_dir}"]
    if args.steps is not None:
        out.append(f"training.max_steps={args.steps}")
    if args.policy is not None:
        out.append(f"policy.path={args.policy}")
    return out


def eval_args(args: argparse.Namespace, output: Path, samples: Path) -> list[str]:
    extra = ["--output", str(output), "--samples", str(samples)]
    if args.max_eval_prompts is not None:
        extra += ["--max-prompts", str(args.max_eval_prompts)]
    return extra


def summarize(
    start: dict[str, Any],
    end: dict[str, Any],
    *,
    optimizer: str,
    steps: int,
    train_seconds: float,
    examples: list[dict[str, Any]],
) -> dict[str, Any]:
    """One run's entry of ``results.json`` from its ``cgpo eval`` results before and after training."""
    before, after = single_task(start)[1], single_task(end)[1]
    if before["n"] != after["n"]:
        raise ValueError(f"before and after evaluated different prompt counts: {before['n']} vs {after['n']}")
    out: dict[str, Any] = {}
    for key in ("reward", "pass_rate", "calibrated_reward", "response_length"):
        out[f"{key}_start"] = float(before[key])
        out[f"{key}_end"] = float(after[key])
    out.update(
        optimizer=optimizer, steps=steps, eval_prompts=int(after["n"]), train_seconds=round(train_seconds, 1),
        examples=examples,
    )  # fmt: skip
    return out


def check_results(results: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless every run has the required keys with finite numbers."""
    for name in RUNS:
        if name not in results:
            raise ValueError(f"results have no '{name}' run")
        for key in REQUIRED:
            value = results[name].get(key)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"results.{name}.{key} is {value!r}, not a finite number")


def training_curves(metrics: list[dict[str, Any]], task: str) -> dict[str, list[float]]:
    """Per-step reward, pass rate and response length of the training samples, from ``metrics.jsonl``."""
    prefix = f"task/{task}/"
    return {
        "step": [float(m["step"]) for m in metrics],
        "reward": [float(m[prefix + "reward"]) for m in metrics],
        "pass_rate": [float(m[prefix + "pass_rate"]) for m in metrics],
        "response_length": [float(m[prefix + "response_length"]) for m in metrics],
    }


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over at most ``window`` values (the per-step batches are small, the curves noisy)."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def plot(results: dict[str, Any], curves: dict[str, dict[str, list[float]]], out: Path) -> list[Path]:
    """``training_curves.png`` and ``held_out.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = {"unconstrained": "tab:red", "cgpo": "tab:blue"}
    labels = {name: f"{name} ({results[name]['optimizer']})" for name in RUNS}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    titles = {
        "reward": "gameable reward (length x 0.1)",
        "pass_rate": "judge pass rate",
        "response_length": "response length (tokens)",
    }
    for ax, key in zip(axes, titles, strict=True):
        for name, curve in curves.items():
            window = max(1, len(curve["step"]) // 10)
            ax.plot(curve["step"], curve[key], color=colors[name], alpha=0.25, linewidth=0.8)
            ax.plot(curve["step"], moving_average(curve[key], window), color=colors[name], label=labels[name])
        ax.set_title(f"training samples: {titles[key]}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    paths = [out / "training_curves.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in zip(axes, ("reward", "pass_rate"), ("held-out reward", "held-out pass rate"), strict=True):
        names = list(RUNS)
        xs = range(len(names))
        before = [results[n][f"{key}_start"] for n in names]
        after = [results[n][f"{key}_end"] for n in names]
        ax.bar([x - 0.2 for x in xs], before, width=0.4, color="lightgray")
        ax.bar([x + 0.2 for x in xs], after, width=0.4, color=[colors[n] for n in names])
        for x, b, a in zip(xs, before, after, strict=True):
            ax.text(x - 0.2, b, f"{b:.2f}", ha="center", va="bottom", fontsize=9)
            ax.text(x + 0.2, a, f"{a:.2f}", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(xs), [labels[n] for n in names])
        ax.set_title(f"{title} (greedy, {results[names[0]]['eval_prompts']} prompts)")
        # The "after" bars take each run's colour; the legend names the two positions.
        ax.legend(handles=[Patch(color="lightgray", label="before"), Patch(color="dimgray", label="after")])
    fig.tight_layout()
    paths.append(out / "held_out.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def run_optimizer(run_dir: Path) -> str:
    """The optimizer of the run's (single) task, from the resolved ``config.yaml`` the trainer wrote."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    return str(config["tasks"][0]["optimizer"]["name"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # the reward is the module:Class plugin length_reward:LengthReward
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    say("held-out evaluation of the starting policy")
    start_file = out / "eval_start.json"
    cgpo(["eval", str(RUNS["cgpo"]), *overrides(args), *eval_args(args, start_file, out / "samples_start.jsonl")],
         log_file=logs / "eval_start.log")  # fmt: skip
    start = json.loads(start_file.read_text(encoding="utf-8"))
    task = next(iter(start["tasks"]))

    results: dict[str, Any] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for name, config in RUNS.items():
        run_dir = out / name
        say(f"{name}: training ({config.name}) -> {run_dir}")
        t0 = time.perf_counter()
        # Plain progress lines into the log (a progress bar would look for a terminal).
        train = ["train", str(config), *overrides(args, run_dir), "logging.progress=plain", "--fresh"]
        cgpo(train, log_file=logs / f"train_{name}.log")
        train_seconds = time.perf_counter() - t0
        say(f"{name}: held-out evaluation of {run_dir / 'final'}")
        end_file = run_dir / "eval_end.json"
        samples = run_dir / "samples_end.jsonl"
        cgpo(["eval", str(config), *overrides(args), "--model", str(run_dir / "final"),
              *eval_args(args, end_file, samples)], log_file=logs / f"eval_{name}.log")  # fmt: skip
        metrics = jsonl_objects(run_dir / "metrics.jsonl")
        curves[name] = training_curves(metrics, task)
        examples = [
            {"prompt": row["prompt"], "completion": row["completion"], "verdict": row["verdict"]}
            for row in jsonl_objects(samples)[:4]
        ]
        results[name] = summarize(
            start, json.loads(end_file.read_text(encoding="utf-8")), optimizer=run_optimizer(run_dir),
            steps=len(metrics), train_seconds=train_seconds, examples=examples,
        )  # fmt: skip
        r = results[name]
        say(f"{name}: reward {r['reward_start']:.3f} -> {r['reward_end']:.3f}, "
            f"pass rate {r['pass_rate_start']:.3f} -> {r['pass_rate_end']:.3f}")  # fmt: skip

    check_results(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plots = plot(results, curves, out)
    say(f"results: {out / 'results.json'}; plots: {', '.join(p.name for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
