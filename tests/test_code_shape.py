"""House rules a reader relies on: short functions, and a training step that fits on one screen."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cgpo"


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None
    ]


def test_no_function_in_the_package_is_longer_than_80_lines():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{name} ({lines} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, lines in _functions(path)
        if lines > 80
    ]
    assert not long, long


def test_the_training_step_shows_its_six_phases_in_one_function():
    source = (PACKAGE / "trainer.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    [step] = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "train_step"]
    assert step.end_lineno is not None and step.end_lineno - step.lineno + 1 <= 60
    body = ast.get_source_segment(source, step) or ""
    phases = [
        "generate_rollouts",
        "judge_rollouts",
        "score_rollouts",
        "task_losses",
        "weighted_backward",
        "optimizer_step",
    ]
    positions = [body.index(name + "(") for name in phases]
    assert positions == sorted(positions), "the phases must appear in the order they run"
    for timer in (  # judge and reward also say whether they run in the overlap worker: timer("judge", ...)
        'timer("generate"',
        'timer("judge"',
        'timer("reward"',
        'timer("forward_backward"',
        'timer("optimizer"',
    ):
        assert timer in body
