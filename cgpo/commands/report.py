"""``cgpo report RUN_DIR... [--out DIR] [--smooth N]``: PNG plots and a markdown summary of training runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cgpo.errors import UserError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="plot one or several training runs and write a markdown summary",
        description=(
            "Read RUN_DIR/metrics.jsonl (and RUN_DIR/eval.jsonl when present) of each `cgpo train` output_dir and "
            "write into --out: task_<name>.png per task (reward, calibrated reward, pass rate, violation rate per "
            "judge, KL, response length over steps; held-out evaluations as markers), run.png (loss, gradient "
            "norm, learning rate, tokens/s, step time, seconds per phase) and summary.md (first vs last training "
            "and held-out values per task and run, with links to the figures). Several runs are overlaid, one "
            "colour per run, named by their directory."
        ),
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training output directories")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (created if needed; existing files of the same names are replaced). Default for one "
        "run: RUN_DIR/report. Required with several runs, so a comparison never lands inside one of them.",
    )
    parser.add_argument(
        "--smooth",
        type=int,
        default=None,
        metavar="N",
        help="moving-average window in steps for curves and for the summary's first/last values (default 5; 1 "
        "turns smoothing off)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cgpo.report import DEFAULT_WINDOW, write_report

    if args.out is None:
        if len(args.run_dirs) > 1:
            raise UserError("several runs: pass --out DIR for the comparison report")
        out = Path(args.run_dirs[0]) / "report"
    else:
        out = Path(args.out)
    write_report(args.run_dirs, out, window=DEFAULT_WINDOW if args.smooth is None else args.smooth)
    return 0
