"""The dependency ranges of pyproject.toml are bounded on both sides and hold what is installed (what CI tests)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the check needs no run on 3.10 as well

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["dev"], *extras["gguf"]]]


def test_every_core_and_dev_dependency_has_a_lower_and_an_upper_bound():
    for requirement in _requirements():
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators and "<" in operators, f"{requirement}: give both a lower and an upper bound"


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_the_installed_release_lies_inside_the_declared_range(requirement):
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{requirement.name} is declared but not installed")
    # A local build tag such as torch's "+cpu" is not part of the release the range speaks about.
    release = installed.split("+", 1)[0]
    assert requirement.specifier.contains(release, prereleases=True), f"{requirement.name} {installed} ∉ {requirement}"
