"""The ``cgpo`` command line: ``main(argv) -> int`` so tests can call it directly.

Each subcommand lives in its own module under :mod:`cgpo.commands` and exposes
``add_parser(subparsers)`` (which sets ``handler``) and ``run(args) -> int``. Modules are imported when
the parser is built, so they must import nothing heavy at module level: ``cgpo --help`` stays fast.

Exit status: 0 success; 1 a run that failed for a reason other than user input; 2 a user mistake
(bad config, bad input file, unknown name), printed as one line without a traceback; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cgpo import __version__
from cgpo.errors import UserError

#: Subcommand modules, in the order ``cgpo --help`` lists them.
COMMANDS = ("train", "eval", "validate", "list", "bootstrap", "judge", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cgpo",
        description="Multi-task alignment under hard constraints (CGPO: mixture of judges; CRPG, CRRAFT, CODPO).",
    )
    parser.add_argument("--version", action="version", version=f"cgpo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"cgpo.commands.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(args.handler(args))
    except UserError as exc:
        print(f"cgpo {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cgpo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
