"""Step time and framework overhead of cgpo against TRL's GRPOTrainer on identical work, run side by side.

Both programs train the same policy on the same prompts (``tasks/data/tiny_arithmetic_train.jsonl``, chat
format) with the same rollout and scoring work per step:

* B prompts x K completions, sampled at temperature T (top_p 1, no top_k) for at most M new tokens, with
  ``model.generate`` (no vLLM);
* a rule reward: the math judge (``answer_format: boxed``), cgpo's own in cgpo and the same judge class
  behind :class:`cgpo.adapters.GRPORewardFunction` in TRL;
* a reward model (the tiny Bradley-Terry model) scoring every completion;
* KL to a frozen reference copy of the initial policy (TRL ``beta`` > 0), i.e. one reference forward;
* one policy forward with gradients, one backward, gradient clipping at 1.0 and one AdamW step; no gradient
  checkpointing, fp32 on CPU; metrics logged every step by both.

cgpo runs CRPG on that task (its calibration also scores each prompt's gold answer once with the reward
model, cached per prompt); TRL runs GRPO (loss ``dapo``) with ``beta`` 0.04. The losses differ, the work
does not.

Each run is a fresh process; runs alternate cgpo, TRL, cgpo, TRL, ...; within a run the first
``--warmup`` steps are discarded. Phases are measured by wrapping the same calls in both programs (see
``bench/_common.py``); ``overhead`` = step - (generate + forward passes + backward + optimizer).

Usage::

    python bench/step_vs_trl.py --out bench-step.json                     # 3 rounds of 10 measured steps
    python bench/step_vs_trl.py --model PATH --device cuda --dtype bf16   # a real model on a GPU
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

ARITHMETIC = common.TASKS / "tiny_arithmetic.yaml"
DATA = common.TASKS / "data" / "tiny_arithmetic_train.jsonl"
TRL_BETA = 0.04


def _task_override(args: argparse.Namespace, reward_model: str) -> dict[str, Any]:
    return {
        "include": str(ARITHMETIC),
        "batch_size": args.batch,
        "sampling": {"num_samples": args.k, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens},
        "reward": {"model": reward_model, "baseline": "reference"},
        "prompts": {"shuffle": False},  # prompts in file order in both programs: the same prompts every step
    }


def _models(args: argparse.Namespace) -> tuple[str, str]:
    policy, reward = (None, None) if args.model and args.reward_model else common.tiny_paths()
    return args.model or policy, args.reward_model or reward


def worker_cgpo(args: argparse.Namespace) -> dict[str, Any]:
    common.set_threads(args.threads)
    policy, reward = _models(args)
    config = common.cgpo_config(
        Path(args.scratch), tasks=[_task_override(args, reward)], policy=policy, dtype=args.dtype,
        steps=args.warmup + args.steps, extra_training={"seed": args.seed},
    )  # fmt: skip
    steps, own, _ = common.run_cgpo_steps(config, warmup=args.warmup, device=args.device)
    return {"steps": steps, "own_phases": own}


def worker_trl(args: argparse.Namespace) -> dict[str, Any]:
    common.set_threads(args.threads)
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cgpo.adapters import GRPORewardFunction
    from cgpo.config_loader import load_task_config
    from cgpo.judging import JUDGES

    policy, reward = _models(args)
    task = load_task_config(ARITHMETIC)
    judges = {}
    for spec in task.judges:  # the task's own judges, built as cgpo's TaskScorer builds them
        cls = JUDGES.get(spec.name)
        judges[spec.metric_label] = cls(cls.parse_params(spec.params))
    clock = common.make_clock(args.device)
    rule = GRPORewardFunction(judges, failed=None)
    common.warm_judges(rule.mixture)
    timed_rule = clock.timed(rule.__call__, "rule_reward")
    timed_rule.__name__ = rule.__name__  # TRL names reward functions by __name__

    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    dataset = datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in rows]
    )
    bf16 = args.dtype == "bf16"
    config = GRPOConfig(
        output_dir=str(Path(args.scratch) / "trl"),
        per_device_train_batch_size=args.batch * args.k,  # TRL counts completions: B prompts x K
        num_generations=args.k,
        gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        top_p=1.0,
        top_k=0,
        beta=TRL_BETA,
        learning_rate=common.LEARNING_RATE,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=args.warmup + args.steps,
        logging_steps=1,  # cgpo writes a metrics line every step too
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=bf16,
        use_cpu=args.device == "cpu",
        activation_checkpointing=False,
        dataloader_pin_memory=False,
        seed=args.seed,
        shuffle_dataset=False,  # file order, as cgpo is told above: the same prompts every step
        model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"},
    )
    trainer = GRPOTrainer(model=policy, reward_funcs=[timed_rule, reward], args=config, train_dataset=dataset)
    clock.wrap_generate(trainer.model)
    clock.wrap(trainer.model, "forward", "forward_policy")
    clock.wrap(trainer.ref_model, "forward", "forward_reference")
    reward_model = trainer.reward_funcs[1]
    clock.wrap(reward_model, "forward", "forward_reward")
    clock.wrap(trainer.accelerator, "backward", "backward")
    clock.wrap(trainer.accelerator, "clip_grad_norm_", "optimizer")
    holder: dict[str, common.StepRecorder] = {}

    class Steps(TrainerCallback):
        def on_train_begin(self, _args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.wrap(kwargs["optimizer"], "step", "optimizer")  # created inside train()
            holder["recorder"] = common.StepRecorder(clock)

        def on_step_end(self, _args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            holder["recorder"].mark()

    trainer.add_callback(Steps())
    trainer.train()
    rule.close()
    return {"steps": holder["recorder"].steps(args.warmup)}


def table(summary: dict[str, Any]) -> str:
    """Wall-clock and CPU seconds per phase, side by side."""
    phases, cpu = summary["phases"], summary["cpu_phases"]
    lines = [
        f"{'seconds per step (mean over steps, median over runs)':<44}{'cgpo':>9}{'TRL':>9}{'cgpo cpu':>10}{'TRL cpu':>9}"
    ]
    for key in common.KEYS:
        row = (phases["cgpo"][key], phases["trl"][key], cpu["cgpo"][key], cpu["trl"][key])
        lines.append(f"  {key:<42}{row[0]:>9.4f}{row[1]:>9.4f}{row[2]:>10.4f}{row[3]:>9.4f}")
    lines.append(f"  {'median step':<42}{summary['cgpo_step_s']:>9.4f}{summary['trl_step_s']:>9.4f}"
                 f"{summary['cgpo_cpu_step_s']:>10.4f}{summary['trl_cpu_step_s']:>9.4f}")  # fmt: skip
    lines.append(f"  {'overhead fraction':<42}{summary['cgpo_overhead_fraction']:>9.3f}"
                 f"{summary['trl_overhead_fraction']:>9.3f}{summary['cgpo_cpu_overhead_fraction']:>10.3f}"
                 f"{summary['trl_cpu_overhead_fraction']:>9.3f}")  # fmt: skip
    lines.append(f"  cpu ratio cgpo/trl (median over rounds): {summary['cpu_ratio_median']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--rounds", type=int, default=3, help="alternations (one cgpo and one TRL process each)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per process")
    parser.add_argument("--warmup", type=int, default=3, help="steps discarded at the start of each process")
    parser.add_argument("--batch", type=int, default=8, help="B, prompts per step")
    parser.add_argument("--k", type=int, default=4, help="K, completions per prompt (TRL num_generations)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both programs")
    parser.add_argument("--model", help="policy path (default: the embedded tiny policy)")
    parser.add_argument("--reward-model", help="reward model path (default: the embedded tiny reward model)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--seed", type=int, default=0, help="round r runs both programs with seed + r")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per worker process")
    parser.add_argument("--worker", choices=["cgpo", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        started = time.perf_counter()
        out = worker_cgpo(args) if args.worker == "cgpo" else worker_trl(args)
        out.update(wall_s=time.perf_counter() - started, peak_rss_mb=common.peak_rss_mb())
        Path(args.result).write_text(json.dumps(out))
        return 0

    if not (args.model and args.reward_model):
        common.tiny_paths()  # build the tiny models once, before any timing
    shared = [
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch), "--k", str(args.k),
        "--max-new-tokens", str(args.max_new_tokens), "--temperature", str(args.temperature),
        "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
    ]  # fmt: skip
    for flag, value in (("--model", args.model), ("--reward-model", args.reward_model)):
        if value:
            shared += [flag, value]
    load_before = common.load_average()
    runs: dict[str, list[dict[str, Any]]] = {"cgpo": [], "trl": []}
    for round_ in range(args.rounds):
        for name in ("cgpo", "trl"):
            # Both programs of a round share a seed; rounds differ, so the medians span several sample draws.
            seeded = [*shared, "--seed", str(args.seed + round_)]
            result = common.run_worker(Path(__file__), ["--worker", name, *seeded], threads=args.threads,
                                       device=args.device, timeout=args.timeout)  # fmt: skip
            summary = common.summarize_run(result["steps"])
            summary["peak_rss_mb"] = result["peak_rss_mb"]
            if name == "cgpo":
                summary["own_phases_mean_s"] = {
                    k: sum(r[k] for r in result["own_phases"]) / len(result["own_phases"])
                    for k in result["own_phases"][0]
                }
            runs[name].append(summary)
            print(f"round {round_ + 1} {name:>4}: median step {summary['step_median_s']:.4f} s, "
                  f"overhead {summary['overhead_fraction']:.3f}", flush=True)  # fmt: skip

    def per_phase(field: str) -> dict[str, dict[str, float]]:
        return {name: {k: common.median([r[field][k] for r in runs[name]]) for k in common.KEYS} for name in runs}

    def ratios_of(field: str) -> list[float]:
        return [a[field] / b[field] for a, b in zip(runs["cgpo"], runs["trl"], strict=True)]

    def median_of(name: str, field: str) -> float:
        return common.median([r[field] for r in runs[name]])

    ratios, cpu_ratios = ratios_of("step_median_s"), ratios_of("cpu_step_median_s")
    summary = {
        "cgpo_step_s": median_of("cgpo", "step_median_s"),
        "trl_step_s": median_of("trl", "step_median_s"),
        "ratio_median": common.median(ratios),
        "ratios": ratios,
        "cgpo_overhead_fraction": median_of("cgpo", "overhead_fraction"),
        "trl_overhead_fraction": median_of("trl", "overhead_fraction"),
        "phases": per_phase("phases_mean_s"),
        "cgpo_cpu_step_s": median_of("cgpo", "cpu_step_median_s"),
        "trl_cpu_step_s": median_of("trl", "cpu_step_median_s"),
        "cpu_ratio_median": common.median(cpu_ratios),
        "cpu_ratios": cpu_ratios,
        "cgpo_cpu_overhead_fraction": median_of("cgpo", "cpu_overhead_fraction"),
        "trl_cpu_overhead_fraction": median_of("trl", "cpu_overhead_fraction"),
        "cpu_phases": per_phase("cpu_phases_mean_s"),
        "cgpo_own_phases_s": {
            k: common.median([r["own_phases_mean_s"][k] for r in runs["cgpo"]])
            for k in runs["cgpo"][0]["own_phases_mean_s"]
        },
        "peak_rss_mb": {name: max(r["peak_rss_mb"] for r in runs[name]) for name in runs},
        "generated_tokens_per_step": {name: median_of(name, "generated_tokens_mean") for name in runs},
        "generated_tokens_per_s": {
            name: common.median([r["generated_tokens_mean"] / r["phases_mean_s"]["step"] for r in runs[name]])
            for name in runs
        },
        "runs": runs,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result", "scratch", "out")}
        | {"trl_beta": TRL_BETA},
        "load_before": load_before,
        "load_after": common.load_average(),
    }
    print(table(summary))
    tokens = summary["generated_tokens_per_step"]
    rate = summary["generated_tokens_per_s"]
    print(f"generated tokens per step (rows x new columns): cgpo {tokens['cgpo']:.0f}, TRL {tokens['trl']:.0f}; "
          f"per second of training: cgpo {rate['cgpo']:.0f}, TRL {rate['trl']:.0f}")  # fmt: skip
    print(f"load average before: {load_before}; after: {summary['load_after']}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"ratio cgpo/trl: {summary['ratio_median']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
