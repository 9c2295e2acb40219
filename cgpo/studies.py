"""Small helpers the example studies (``examples/*/run.py``) share to read what ``cgpo`` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cgpo.report import read_jsonl


def single_task(evaluation: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Name and metrics of the one task of a ``cgpo eval`` result (a study of one task).

    Raises:
        ValueError: the result holds no task or several.
    """
    tasks = evaluation["tasks"]
    if len(tasks) != 1:
        raise ValueError(f"expected one evaluated task, got {sorted(tasks)}")
    return next(iter(tasks.items()))


def jsonl_objects(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (``metrics.jsonl``, eval samples); a bad line is an error naming FILE:LINE."""
    return [obj for _, obj in read_jsonl(path)]
