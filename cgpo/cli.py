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
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

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


def entry() -> None:
    """The ``cgpo`` console script and ``python -m cgpo``: run :func:`main`, then end the process.

    The process ends with main's status; after a distributed run without interpreter finalization
    (:mod:`cgpo.distributed.shutdown` says why).
    """
    from cgpo.distributed.shutdown import exit_process

    exit_process(main())


def run_logged(argv: Sequence[str], log_file: str | Path) -> None:
    """Run ``cgpo ARGV`` in this process with its output in ``log_file``; for scripts that chain commands.

    In-process rather than a subprocess: torch and transformers are imported once for a whole study, which
    saves seconds per call on a small CPU. The commands resolve ``sys.stderr`` when they run, so the
    redirection reaches progress output too.

    Raises:
        RuntimeError: The command exited with a non-zero status; the message ends with the tail of its log.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w", encoding="utf-8") as handle, redirect_stdout(handle), redirect_stderr(handle):
        status = main(list(argv))
    if status != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8").splitlines()[-20:])
        raise RuntimeError(f"cgpo {' '.join(argv)} exited with {status} (log: {log_file}):\n{tail}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
