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
            "Ctrl-C saves a checkpoint and stops. The tasks' data files are checked row by row first (as by cgpo "
            "validate); a problem there stops the run before any model loads."
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

    _check_data(config, args.config, log)

    from cgpo.trainer import train

    log(f"cgpo train: {args.config}: {len(config.tasks)} tasks ({', '.join(t.name for t in config.tasks)}), "
        f"{config.training.max_steps} steps -> {config.output_dir}")  # fmt: skip
    return train(config, log=log, fresh=args.fresh)


def _check_data(config: Any, config_path: str, log: Any) -> None:
    """The data checks of ``cgpo validate``, before any model loads: problems printed, errors stop the run.

    Under a multi-process launch every process checks (each would stop) and only rank 0 prints.
    """
    import os

    from cgpo.data_checks import check_run_data
    from cgpo.errors import UserError

    problems = check_run_data(config)
    if os.environ.get("RANK", "0") == "0":
        for problem in problems:
            log(str(problem))
    errors = sum(p.severity == "error" for p in problems)
    if errors:
        raise UserError(
            f"{errors} data problem{'s' if errors != 1 else ''} (listed above) in the tasks of {config_path}; "
            "fix the data files (cgpo validate lists the same problems)"
        )
