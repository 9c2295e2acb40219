"""``cgpo bootstrap``: build (or locate) the embedded tiny tokenizer, policy and reward model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="build the embedded tiny models (tiny:policy, tiny:reward)",
        description=(
            "Build the tiny character-level tokenizer, the Llama policy (warm-started by a short SFT on the "
            "bundled synthetic tasks) and the Bradley-Terry reward model that configs name as tiny:policy "
            "and tiny:reward. The default recipe ships built inside the package; --rebuild (or another --seed) builds "
            "under $CGPO_HOME (default ~/.cache/cgpo), which then takes precedence."
        ),
    )
    parser.add_argument("--rebuild", action="store_true", help="build again even if a cached build exists")
    parser.add_argument("--seed", type=int, default=None, help="seed of the build (default: the recipe's, 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the build (default: torch's)")
    parser.add_argument("--print-path", action="store_true", help="print only the folder of the built models")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from cgpo.tiny.build import COMPLETE_MARKER, DEFAULT_RECIPE
    from cgpo.tiny.embedded import tiny_models

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    recipe = DEFAULT_RECIPE if args.seed is None else dataclasses.replace(DEFAULT_RECIPE, seed=args.seed)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    folder = tiny_models(recipe, log=log, rebuild=args.rebuild)
    if args.print_path:
        print(folder)
        return 0
    report = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    print(f"tiny models: {folder}")
    print(
        f"  policy: {folder / 'policy'}  (held-out exact match after SFT: "
        f"{json.dumps(report['sft_heldout_exact_match'])})"
    )
    print(f"  reward: {folder / 'reward'}  (held-out pair accuracy: {report['reward_heldout_pair_accuracy']})")
    print(f"  built in {report['seconds']} s with recipe {report['recipe_id']}")
    return 0
