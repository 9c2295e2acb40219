"""The example third-party plugin (examples/judge_plugin): installed for real, found through its entry points.

The package is built with pip into a temporary ``--target`` folder (no dependencies, no build isolation, no
network) and put on ``PYTHONPATH`` of ``cgpo`` subprocesses, so ``importlib.metadata`` sees its dist-info
exactly as it would after ``pip install``, and the shared environment is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cgpo.testing import Sample, check_judge

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "examples" / "judge_plugin"
VERSION = re.search(r'^version = "([^"]+)"', (PLUGIN_DIR / "pyproject.toml").read_text(), re.MULTILINE).group(1)  # type: ignore[union-attr]
ORIGIN = f"plugin: cgpo-example-judges=={VERSION}"


def cgpo_script() -> str:
    return shutil.which("cgpo") or str(Path(sys.executable).with_name("cgpo"))


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The plugin, pip-installed into a private folder (built from a copy, so the checkout stays clean)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(PLUGIN_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"),
            *("--target", str(site), str(source)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (site / f"cgpo_example_judges-{VERSION}.dist-info").is_dir()
    return site


def run_cgpo(*args: str, site: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([cgpo_script(), *args], capture_output=True, text=True, env=env, check=False)


@pytest.mark.slow
def test_cgpo_list_shows_the_plugin_with_its_distribution(plugin_site):
    proc = run_cgpo("list", "judges", site=plugin_site)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    for name in ("word_budget", "no_shouting"):
        assert re.fullmatch(rf"{name}\s+rule\s+{re.escape(ORIGIN)}", rows[name].strip()), rows[name]
    # Without the plugin on the path, the names are simply not there.
    bare = run_cgpo("list", "judges", site=None)
    assert bare.returncode == 0 and "word_budget" not in bare.stdout


@pytest.mark.slow
def test_cgpo_judge_uses_the_plugin(plugin_site, tmp_path):
    records = [
        {"prompt": "p", "completion": "one two three"},
        {"prompt": "p", "completion": "one two three four five six"},
        {"prompt": "p", "completion": "a b c d e f g", "word_budget": 10},
        {"prompt": "p", "completion": "x", "word_budget": -3},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = run_cgpo("judge", "word_budget", "--input", str(src), "--param", "max_words=5", site=plugin_site)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in (tmp_path / "in.judged.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in out] == [1, 0, 1, -1]
    assert out[1]["reason"] == "6 words, over the budget of 5"
    assert out[3]["reason"] == "metadata 'word_budget' must be a non-negative integer, got -3"
    assert "4 samples: 2 satisfied (1), 1 violated (0), 1 failed (-1)" in proc.stderr

    # The task's own reference answers satisfy the shouting rule it configures.
    data = PLUGIN_DIR / "data" / "prompts.jsonl"
    calm = run_cgpo("judge", "no_shouting", "-i", str(data), "-o", "-", "-p", "max_upper_ratio=0.3", site=plugin_site)
    assert calm.returncode == 0, calm.stderr
    assert {json.loads(line)["verdict"] for line in calm.stdout.splitlines()} == {1}

    bad = run_cgpo("judge", "no_shouting", "-i", str(src), "-p", "max_upper_ratio=2", site=plugin_site)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "cgpo judge: judge 'no_shouting': --param max_upper_ratio: must be in [0, 1], got 2.0"


@pytest.mark.slow
def test_task_yaml_validates_only_with_the_plugin(plugin_site):
    task = str(PLUGIN_DIR / "task.yaml")
    ok = run_cgpo("validate", task, site=plugin_site)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{task}: ok (task 'concise_calm')"
    # The plugin's Params are checked from the task YAML, with the key path.
    bad = run_cgpo("validate", task, "judges.1.params.max_upper_ratio=1.5", site=plugin_site)
    assert bad.returncode == 2
    assert "judges.1.params.max_upper_ratio: must be in [0, 1], got 1.5" in bad.stderr
    missing = run_cgpo("validate", task, site=None)
    assert missing.returncode == 2
    assert "judges.0.name: unknown judge 'word_budget'" in missing.stderr
    assert "Traceback" not in bad.stderr + missing.stderr


def test_plugin_judges_pass_the_conformance_kit(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    from cgpo_example_judges import NoShoutingJudge, WordBudgetJudge

    samples = [
        Sample("Describe tea.", "Tea is a calm drink."),
        Sample("Describe tea.", "TEA IS THE BEST DRINK EVER"),
        Sample("Describe tea.", "Tea " * 30, {"word_budget": 50}),
        Sample("Describe tea.", "Tea.", {"word_budget": "ten"}),
        Sample("Describe tea.", ""),
    ]
    for cls, params in ((WordBudgetJudge, {"max_words": 5, "min_words": 1}), (NoShoutingJudge, {})):
        report = check_judge(cls, samples, params=params)
        assert report.ok, report
        assert report.result("imports").status == "passed"  # the plugin module imports nothing heavy
    assert (
        "{1: 2, 0: 2, -1: 1}"
        in check_judge(WordBudgetJudge, samples, params={"max_words": 5, "min_words": 1}).result("verdicts").detail
    )
