"""``cgpo validate FILE...``: check task YAMLs, run configs and accelerate configs without loading any model."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check task YAMLs, run configs and accelerate configs",
        description=(
            "Check task YAMLs and run configs: keys, types, values, judge/optimizer/reward names and their "
            "params, and every row of the tasks' data (malformed or non-UTF-8 lines, missing or empty prompt, "
            "reference and metadata fields, metadata a judge cannot use; train/eval overlap, and for run configs "
            "prompts too long for the policy's context, as warnings). "
            "Prints 'ok' per valid file; for an invalid one prints FILE: key.path: reason, or FILE:LINE: reason "
            "for data, and exits 2. Loads no model."
        ),
    )
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="task YAMLs and/or run configs; with one file, KEY=VALUE overrides may follow (as for cgpo train)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cgpo.config_loader import detect_kind, load_run_config, load_task_config
    from cgpo.data_checks import check_prompt_lengths, check_run_data, check_task_data, has_errors
    from cgpo.errors import ConfigError

    files = [f for f in args.files if "=" not in f]
    overrides = [f for f in args.files if "=" in f]
    if overrides and len(files) != 1:
        print("cgpo validate: key=value overrides need exactly one file", file=sys.stderr)
        return 2
    failed = 0
    for file in files:
        try:
            kind = detect_kind(file)
            if kind == "accelerate":
                if overrides:
                    key = overrides[0].partition("=")[0]
                    raise ConfigError("<command line>", key, "key=value overrides apply to cgpo configs, not to "
                                      "accelerate configs; edit the file or pass accelerate launch flags")  # fmt: skip
                from cgpo.accelerate_config import validate_accelerate_config

                detail = validate_accelerate_config(file)
            elif kind == "run":
                config = load_run_config(file, overrides)
                detail = f"run config, {len(config.tasks)} task{'s' if len(config.tasks) != 1 else ''}"
                problems = check_run_data(config)
                if not has_errors(problems):  # a broken row would be counted twice
                    problems += check_prompt_lengths(config)
            else:
                task = load_task_config(file, overrides)
                detail = f"task '{task.name}'"
                problems = check_task_data(task)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            failed += 1
            continue
        except Exception as exc:  # noqa: BLE001 - odd input must never end in a traceback; name the file
            print(f"{file}: (top level): cannot validate: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if kind != "accelerate":
            for problem in problems:
                print(problem, file=sys.stderr)
            if has_errors(problems):
                failed += 1
                continue
        print(f"{file}: ok ({detail})")
    return 2 if failed else 0
