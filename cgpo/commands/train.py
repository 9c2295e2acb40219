"""``cgpo train CONFIG [KEY=VALUE ...]``: validate the run config, then train (resuming when possible)."""

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
            "cgpo train configs/quickstart.yaml training.max_steps=5 output_dir=/tmp/run tasks.0.weight=2. "
            "Running the same command again with the same output_dir continues from its latest checkpoint; "
            "Ctrl-C saves a checkpoint and stops."
        ),
    )
    parser.add_argument("config", metavar="CONFIG", help="run config YAML")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides")
    parser.add_argument("--fresh", action="store_true", help="ignore checkpoints in output_dir and start from step 0")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cgpo.config_loader import load_run_config

    config = load_run_config(args.config, args.overrides)  # ConfigError -> exit 2, before any model loads

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from cgpo.trainer import train

    log(f"cgpo train: {args.config}: {len(config.tasks)} tasks ({', '.join(t.name for t in config.tasks)}), "
        f"{config.training.max_steps} steps -> {config.output_dir}")  # fmt: skip
    return train(config, log=log, fresh=args.fresh)
