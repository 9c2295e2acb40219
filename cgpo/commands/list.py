"""``cgpo list judges|optimizers|rewards|tasks``: what is installed, with its kind and origin."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

WHAT = ("judges", "optimizers", "rewards", "tasks")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list judges, optimizers, reward functions or bundled tasks",
        description=(
            "List registered judges, optimizers or reward functions (name, kind, origin: built-in or the "
            "plugin distribution that provides it), or the task YAMLs in a folder (default: the bundled tasks/)."
        ),
    )
    parser.add_argument("what", choices=WHAT)
    parser.add_argument("--dir", default=None, help="with 'tasks': folder to scan (default: the bundled tasks/)")
    parser.set_defaults(handler=run)


def _registry_rows(what: str) -> list[tuple[str, str, str]]:
    from cgpo.judging import JUDGES
    from cgpo.optimizers import OPTIMIZERS
    from cgpo.registry import RegistryError
    from cgpo.rewards import REWARD_FUNCTIONS

    registry: Any = {"judges": JUDGES, "optimizers": OPTIMIZERS, "rewards": REWARD_FUNCTIONS}[what]
    rows = []
    for entry in registry.entries():
        try:
            obj = registry.get(entry.name)
            kind = str(getattr(obj, "kind", "function"))
        except RegistryError as exc:  # a broken plugin is listed, not fatal
            kind = f"unavailable ({str(exc).split(': ', 1)[-1][:80]})"
        rows.append((entry.name, kind, entry.origin))
    return rows


def _task_rows(folder: Path) -> list[tuple[str, str, str]]:
    from cgpo.config_loader import load_task_config
    from cgpo.errors import ConfigError

    rows = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            task = load_task_config(path, check_plugins=False)
            judges = ", ".join(spec.metric_label for spec in task.judges) or "none"
            rows.append((task.name, f"{task.optimizer.name}; judges: {judges}", str(path)))
        except ConfigError as exc:
            rows.append((path.stem, f"invalid: {exc.reason}", str(path)))
    return rows


def bundled_tasks_dir() -> Path:
    """The repository's ``tasks/`` folder (present in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "tasks"


def run(args: argparse.Namespace) -> int:
    if args.what == "tasks":
        folder = Path(args.dir) if args.dir else bundled_tasks_dir()
        if not folder.is_dir():
            from cgpo.errors import UserError

            raise UserError(f"no tasks folder at {folder}; pass --dir")
        rows = _task_rows(folder)
        header = ("name", "optimizer and judges", "file")
    else:
        rows = _registry_rows(args.what)
        header = ("name", "kind", "origin")
    if not rows:
        print(f"no {args.what} found")
        return 0
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    for row in [header, *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
    return 0
