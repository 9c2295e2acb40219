"""The README's two set-up commands stay true: CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.DOTALL)


def test_readme_starts_with_the_two_commands():
    quickstart, tests = bash_blocks()[:2]
    assert quickstart.endswith("cgpo train configs/quickstart.yaml")
    assert tests.endswith("python -m pytest")
    for command in (quickstart, tests):
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt")
    assert (REPO / "configs" / "quickstart.yaml").is_file()


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert bash_blocks()[1] in ci.splitlines()


def test_torch_is_pinned_for_cpu_installs():
    assert (REPO / "constraints.txt").read_text().split() == ["torch==2.13.0"]
