"""RAFT distillation from a teacher with another tokenizer, against self-sampled RAFT at the same budget.

::

    python examples/raft_distill/run.py --out runs/raft_distill            # SmolLM2-135M teaches the tiny model
    python examples/raft_distill/run.py --out /tmp/distill_smoke --smoke   # toy sizes (2 steps, 4 prompts)

Two arms train the same student (``config.yaml``: the embedded tiny model, one tiny task, RAFT) with the same
steps, prompts per step, K, learning rate and seeds; they differ only in who writes the K samples:

* ``self``: the student samples them (plain RAFT);
* ``distill``: the teacher (``--teacher``, default ``smollm2:135m-instruct``: a byte-level BPE tokenizer and
  ChatML template, against the student's 100 characters and ``role: content``) samples them through the task's
  ``sampler`` key (docs/distillation.md); they cross as text and the student re-encodes them.

The reward model ranks the K samples and the student trains on the best one (SFT) in both arms.

1. ``cgpo eval`` of the starting student on the held-out prompts (greedy; shared by both arms and all seeds).
2. For each arm and seed: ``cgpo train`` (``training.seed=S``, plus ``tasks.0.sampler.path=TEACHER`` for
   ``distill``), then ``cgpo eval --model OUT/{arm}_s{S}/final``.
3. ``OUT/results.json``::

       {"task", "teacher", "steps", "prompts_per_step", "num_samples", "max_new_tokens", "seeds", "eval_prompts",
        "start": {"pass_rate", "reward"},
        "arms": {"self": {"pass_rate_end", "pass_rate_end_per_seed", "pass_rate_end_std",
                          "reward_end", "reward_end_per_seed", "reward_end_std",
                          "train_pass_rate", "train_reward", "seconds_per_step"}, "distill": {...}}}

   (``train_*``: the mean over steps and seeds of the training samples' pass rate and reward, i.e. of the
   samples each arm's writer produced, measured after re-encoding), ``OUT/results.md``, the same as a table, and
   ``OUT/{arm}_s{S}/eval_samples.jsonl``, every held-out completion of that final model with its verdicts.

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

from cgpo.studies import check_study_arguments, jsonl_objects, single_task

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
ARMS = ("self", "distill")
DEFAULT_TEACHER = "smollm2:135m-instruct"
#: --smoke: the toy sizes CI runs (the study's shape, none of its statistics).
SMOKE = {"steps": 2, "seeds": [0], "max_eval_prompts": 4, "batch_size": 2, "num_samples": 2}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--smoke`` sets the toy sizes of :data:`SMOKE` where no flag says otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="run.py")
    parser.add_argument("--out", required=True, type=Path, help="output folder (runs, evaluations, results)")
    parser.add_argument("--teacher", default=DEFAULT_TEACHER, help=f"the sampler model (default {DEFAULT_TEACHER})")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds per arm (default 0 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: config.yaml's)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per step (default: config.yaml's)")
    parser.add_argument("--num-samples", type=int, default=None, help="K (default: config.yaml's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="T, training and held-out (default: 32)")
    parser.add_argument(
        "--max-eval-prompts", type=int, default=None, metavar="N", help="held-out prompts (default: all)"
    )
    parser.add_argument("--policy", default=None, help="the student (default: config.yaml's, tiny:policy)")
    parser.add_argument("--reward-model", default=None, help="reward model (default: the task's, tiny:reward)")
    parser.add_argument(
        "--smoke", action="store_true", help="toy sizes: 2 steps, 1 seed, 4 held-out prompts, B=2, K=2"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    for key, value in SMOKE.items():
        if args.smoke and getattr(args, key) is None:
            setattr(args, key, value)
    if args.seeds is None:
        args.seeds = [0, 1]
    check_study_arguments(
        parser, args, ("steps", "batch_size", "num_samples", "max_new_tokens", "max_eval_prompts", "threads")
    )
    return args


def cgpo(args: Sequence[str], *, log_file: Path) -> None:
    """Run ``cgpo ARGS`` in this process (the real command line), its output in ``log_file``."""
    from cgpo.cli import run_logged

    run_logged(args, log_file)


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides every train and eval call shares (both arms: the same budget)."""
    out = []
    for flag, key in (("steps", "training.max_steps"), ("batch_size", "tasks.0.batch_size"),
                      ("num_samples", "tasks.0.sampling.num_samples"),
                      ("max_new_tokens", "tasks.0.sampling.max_new_tokens"), ("policy", "policy.path"),
                      ("reward_model", "tasks.0.reward.model")):  # fmt: skip
        if getattr(args, flag) is not None:
            out.append(f"{key}={getattr(args, flag)}")
    return out


def arm_overrides(arm: str, teacher: str) -> list[str]:
    """What makes an arm: ``distill`` names the teacher as the task's sampler; ``self`` leaves the policy sampling."""
    return [f"tasks.0.sampler.path={teacher}", "tasks.0.sampler.dtype=float32"] if arm == "distill" else []


def eval_args(args: argparse.Namespace, output: Path) -> list[str]:
    extra = ["--output", str(output)]
    if args.max_eval_prompts is not None:
        extra += ["--max-prompts", str(args.max_eval_prompts)]
    return extra


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def std(values: Sequence[float]) -> float:
    """Population standard deviation (0 for one value): the spread of the seeds, not an error bar."""
    m = mean(values)
    return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5


def summarize_arm(ends: dict[int, dict[str, Any]], metrics: dict[int, list[dict[str, Any]]], task: str,
                  seconds: float) -> dict[str, Any]:  # fmt: skip
    """One arm's entry of ``results.json``: held-out means and spreads over seeds, training-sample means."""
    seeds = sorted(ends)
    passes = [float(single_task(ends[s])[1]["pass_rate"]) for s in seeds]
    rewards = [float(single_task(ends[s])[1]["reward"]) for s in seeds]
    rows = [m for s in seeds for m in metrics[s]]
    return {
        "pass_rate_end": mean(passes),
        "pass_rate_end_per_seed": passes,
        "pass_rate_end_std": std(passes),
        "reward_end": mean(rewards),
        "reward_end_per_seed": rewards,
        "reward_end_std": std(rewards),
        "train_pass_rate": mean([float(m[f"task/{task}/pass_rate"]) for m in rows]),
        "train_reward": mean([float(m[f"task/{task}/reward"]) for m in rows]),
        "seconds_per_step": round(seconds / max(1, len(rows)), 2),
    }


def check_results(results: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless every held-out number of both arms and of the start is finite."""
    values = {f"start.{k}": v for k, v in results["start"].items()}
    for arm in ARMS:
        for key in ("pass_rate_end", "reward_end", "train_pass_rate", "train_reward"):
            values[f"arms.{arm}.{key}"] = results["arms"].get(arm, {}).get(key)
    for key, value in values.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"results.{key} is {value!r}, not a finite number")


def table(results: dict[str, Any]) -> str:
    """``results.md``: the held-out table (mean ± spread over seeds, and each seed) and the samples' quality."""
    r = results
    lines = [
        (
            f"RAFT on `{r['task']}`: {r['steps']} steps x {r['prompts_per_step']} prompts x K={r['num_samples']}, "
            f"T={r['max_new_tokens']} tokens, "
            f"seeds {r['seeds']}, {r['eval_prompts']} held-out prompts (greedy). Teacher: `{r['teacher']}`."
        ),
        "",
        "| arm | held-out pass rate | per seed | held-out reward | per seed | training samples: pass rate | reward | s/step |",
        "|---|---|---|---|---|---|---|---|",
        f"| start | {r['start']['pass_rate']:.3f} | | {r['start']['reward']:.3f} | | | | |",
    ]
    for arm in ARMS:
        a = r["arms"][arm]
        lines.append(
            f"| {arm} | {a['pass_rate_end']:.3f} ± {a['pass_rate_end_std']:.3f} | "
            f"{', '.join(f'{v:.3f}' for v in a['pass_rate_end_per_seed'])} | "
            f"{a['reward_end']:.3f} ± {a['reward_end_std']:.3f} | {', '.join(f'{v:.3f}' for v in a['reward_end_per_seed'])} | "
            f"{a['train_pass_rate']:.3f} | {a['train_reward']:.3f} | {a['seconds_per_step']} |"
        )
    return "\n".join(lines) + "\n"


def train_arm(args: argparse.Namespace, arm: str, out: Path, say: Any) -> tuple[dict, dict, float]:
    """Train and evaluate every seed of one arm: ``(evaluations by seed, metrics rows by seed, train seconds)``."""
    import yaml

    ends, metrics, seconds = {}, {}, 0.0
    for seed in args.seeds:
        run_dir = out / f"{arm}_s{seed}"
        say(f"{arm} seed {seed}: training -> {run_dir}")
        t0 = time.perf_counter()
        train = ["train", str(CONFIG), *overrides(args), *arm_overrides(arm, args.teacher), f"training.seed={seed}",
                 f"output_dir={run_dir}", "logging.progress=plain", "--fresh"]  # fmt: skip
        cgpo(train, log_file=out / "logs" / f"train_{arm}_s{seed}.log")
        seconds += time.perf_counter() - t0
        resolved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        sampler = resolved["tasks"][0].get("sampler")
        if (sampler is not None) != (arm == "distill") or resolved["training"]["seed"] != seed:
            raise RuntimeError(f"{run_dir}: the run is not arm {arm} with seed {seed}")
        metrics[seed] = jsonl_objects(run_dir / "metrics.jsonl")
        # --samples: every held-out completion with its verdicts, to read what each arm learned to write.
        cgpo(["eval", str(CONFIG), *overrides(args), "--model", str(run_dir / "final"),
              *eval_args(args, run_dir / "eval_end.json"), "--samples", str(run_dir / "eval_samples.jsonl")],
             log_file=out / "logs" / f"eval_{arm}_s{seed}.log")  # fmt: skip
        ends[seed] = json.loads((run_dir / "eval_end.json").read_text(encoding="utf-8"))
        say(f"{arm} seed {seed}: held-out pass rate {single_task(ends[seed])[1]['pass_rate']:.3f}")
    return ends, metrics, seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import yaml

    torch.set_num_threads(args.threads)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    say("held-out evaluation of the starting student")
    cgpo(["eval", str(CONFIG), *overrides(args), *eval_args(args, out / "eval_start.json")],
         log_file=out / "logs" / "eval_start.log")  # fmt: skip
    start = json.loads((out / "eval_start.json").read_text(encoding="utf-8"))
    task, before = single_task(start)
    arms = {}
    for arm in ARMS:
        ends, metrics, seconds = train_arm(args, arm, out, say)
        arms[arm] = summarize_arm(ends, metrics, task, seconds)
    resolved = yaml.safe_load((out / f"distill_s{args.seeds[0]}" / "config.yaml").read_text(encoding="utf-8"))
    results = {
        "task": task,
        "teacher": args.teacher,
        "steps": int(resolved["training"]["max_steps"]),
        "prompts_per_step": int(resolved["tasks"][0]["batch_size"]),
        "num_samples": int(resolved["tasks"][0]["sampling"]["num_samples"]),
        "max_new_tokens": int(resolved["tasks"][0]["sampling"]["max_new_tokens"]),
        "seeds": list(args.seeds),
        "eval_prompts": int(before["n"]),
        "start": {"pass_rate": float(before["pass_rate"]), "reward": float(before["reward"])},
        "arms": arms,
    }
    check_results(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(table(results), encoding="utf-8")
    say(f"results: {out / 'results.json'}\n{table(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
