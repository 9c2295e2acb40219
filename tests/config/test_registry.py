"""Registry resolution: registered names, entry points, module:Class, suggestions, broken plugins."""

from __future__ import annotations

import pytest

from cgpo.judging import JUDGES, Judge, satisfied
from cgpo.registry import Registry, RegistryError


class _Ok(Judge):
    def judge_batch(self, prompts, completions, metadata):
        return [satisfied() for _ in completions]


def test_register_get_and_duplicate_rejected():
    registry = Registry("thing", "cgpo.tests.none")
    registry.register("a", 1)
    assert registry.get("a") == 1
    assert "a" in registry and registry.names() == ["a"]
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("a", 2)


def test_unknown_name_suggests_close_matches():
    registry = Registry("judge", "cgpo.tests.none")
    registry.register("math_answer", 1)
    with pytest.raises(RegistryError, match="did you mean 'math_answer'"):
        registry.get("math_anwser")


def test_module_colon_attribute_resolves_and_reports_missing_module():
    registry = Registry("thing", "cgpo.tests.none")
    assert registry.get("json:dumps") is __import__("json").dumps
    with pytest.raises(RegistryError, match="cannot import module"):
        registry.get("no_such_module_xyz:Thing")
    with pytest.raises(RegistryError, match="has no attribute"):
        registry.get("json:no_such_attribute")


def test_check_rejects_objects_of_the_wrong_kind():
    with pytest.raises(RegistryError, match="not a valid judge"):
        JUDGES.get("json:dumps")
    assert JUDGES.get(f"{__name__}:_Ok") is _Ok


def test_builtin_judges_are_entry_points_of_this_distribution():
    origins = {entry.name: entry.origin for entry in JUDGES.entries()}
    for name in ("math", "code", "ifeval", "format", "safety", "false_refusal", "factuality", "llm_judge"):
        assert origins[name] == "built-in"


def test_entry_point_scan_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys; from cgpo.judging import JUDGES; from cgpo.optimizers import OPTIMIZERS; "
        "JUDGES.entries(); OPTIMIZERS.entries(); import cgpo.cli; cgpo.cli.build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'sympy', 'datasets') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
