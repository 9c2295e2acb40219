"""``cgpo eval CONFIG [--model DIR] [--output FILE.json] [KEY=VALUE ...]``: held-out pass rates and rewards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cgpo.errors import UserError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a policy on the tasks' eval splits",
        description=(
            "Generate one completion per eval prompt of each task (greedy unless --sample), judge it with the "
            "task's mixture of judges and score it with the task's reward. Prints a table per task and writes "
            "{tasks: {NAME: {pass_rate, reward, calibrated_reward, judges: {JUDGE: {violation_rate, error_rate}}, "
            "n}}} to --output. Without --model it evaluates the config's policy as it is (the 'before' of a "
            "run); with --model OUTPUT_DIR/final the trained model. Generated calibration baselines come from "
            "the reference model, so before and after share them."
        ),
    )
    parser.add_argument("config", metavar="CONFIG", help="run config YAML")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides")
    parser.add_argument(
        "--model", metavar="DIR", help="model folder to evaluate (OUTPUT_DIR/final, a run dir or a checkpoint)"
    )
    parser.add_argument("--output", metavar="FILE.json", help="write the results as JSON (atomically)")
    parser.add_argument("--samples", metavar="FILE.jsonl", help="also write every completion with its verdicts")
    parser.add_argument("--max-prompts", type=int, metavar="N", help="evaluate at most the first N prompts per task")
    parser.add_argument(
        "--task", action="append", metavar="NAME", dest="tasks", help="evaluate only this task (repeatable)"
    )
    parser.add_argument(
        "--sample", action="store_true", help="sample with each task's temperature/top_p/top_k instead of greedy"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: training.seed); matters only with --sample")
    parser.set_defaults(handler=run)


def _check_output(path: str | None, flag: str) -> None:
    if path is not None and Path(path).is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")


def run(args: argparse.Namespace) -> int:
    from cgpo.config_loader import load_run_config

    config = load_run_config(args.config, args.overrides)  # ConfigError -> exit 2, before any model loads
    _check_output(args.output, "--output")
    _check_output(args.samples, "--samples")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from cgpo.evaluation import evaluate, print_table, write_json, write_samples

    result = evaluate(
        config,
        args.model,
        tasks=args.tasks,
        max_prompts=args.max_prompts,
        sample=args.sample,
        seed=args.seed,
        with_samples=args.samples is not None,
        log=log,
    )
    samples = result.pop("samples", None)
    result["config"] = str(Path(args.config).resolve())
    if args.output:
        write_json(args.output, result)
        log(f"results: {args.output}")
    if samples is not None:
        write_samples(args.samples, samples)
        log(f"completions: {args.samples}")
    print_table(result)
    return 0
