"""``cgpo train CONFIG [KEY=VALUE ...]``: validate the run config, prepare its models, and train."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a policy on a run config",
        description=(
            "Train the policy of a run config on its tasks (CGPO Algorithm 2). Overrides use dotted keys: "
            "cgpo train configs/quickstart.yaml training.max_steps=5 output_dir=/tmp/run tasks.0.weight=2"
        ),
    )
    parser.add_argument("config", metavar="CONFIG", help="run config YAML")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cgpo.config_loader import load_run_config
    from cgpo.models import resolve_model_path

    config = load_run_config(args.config, args.overrides)  # ConfigError -> exit 2, before any model loads

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    models = {"policy": resolve_model_path(config.policy.path, log=log)}
    if config.reference is not None:
        models["reference"] = resolve_model_path(config.reference.path, log=log)
    for task in config.tasks:
        if task.reward.model:
            models[f"reward ({task.name})"] = resolve_model_path(task.reward.model, log=log)
    print(f"{args.config}: valid; {len(config.tasks)} tasks: " + ", ".join(t.name for t in config.tasks))
    for role, path in models.items():
        print(f"  {role}: {path}")
    try:
        from cgpo.trainer import train  # type: ignore[import-not-found]
    except ModuleNotFoundError as exc:
        if exc.name != "cgpo.trainer":
            raise
        print(
            "cgpo train: this version of cgpo has no training loop yet (the multi-task trainer is the next "
            "milestone); the config and its models were checked and are ready.",
            file=sys.stderr,
        )
        return 1
    return int(train(config, log=log))
