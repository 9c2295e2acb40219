"""The command line as users meet it: --version, --help, validate, list, train's config checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgpo import __version__
from cgpo.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]
SHIPPED_YAML = sorted(p for folder in ("tasks", "configs") for p in (REPO / folder).rglob("*.yaml"))


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cgpo {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: cgpo " + command in capsys.readouterr().out


def test_every_shipped_yaml_validates(capsys):
    assert SHIPPED_YAML, "no shipped YAML found"
    code = main(["validate", *map(str, SHIPPED_YAML)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.count(": ok (") == len(SHIPPED_YAML)


def test_validate_reports_file_key_and_line_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "tasks" / "tiny_arithmetic.yaml").read_text().replace("weight: 1.0", "weight: -1"))
    good = REPO / "tasks" / "tiny_json.yaml"
    code = main(["validate", str(good), str(bad)])
    out, err = capsys.readouterr()
    assert code == 2
    assert f"{good}: ok" in out
    assert "bad.yaml: weight: must be >= 0, got -1.0 (line" in err


def test_validate_accepts_overrides_for_one_file(capsys):
    config = str(REPO / "configs" / "quickstart.yaml")
    assert main(["validate", config, "training.max_steps=2"]) == 0
    assert main(["validate", config, "tasks.0.sampling.temperature=0"]) == 2
    assert "<command line>: tasks.0.sampling.temperature: must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["judges", "optimizers", "rewards"])
def test_list_shows_builtins_with_origin(what, capsys):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    expected = {"judges": ["math", "code", "ifeval", "format", "safety"], "optimizers": ["crpg", "crraft", "codpo"]}
    for name in expected.get(what, []):
        line = next(line for line in out.splitlines() if line.split()[0] == name)
        assert line.split()[-1] == "built-in" and "unavailable" not in line, line


def test_list_tasks(capsys):
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "tiny_arithmetic" in out and "invalid" not in out


def test_train_rejects_a_bad_config_before_loading_models(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CGPO_HOME", str(tmp_path / "home"))  # a model build would appear here
    code = main(["train", str(REPO / "configs" / "quickstart.yaml"), "training.max_steps=0"])
    assert code == 2
    assert "training.max_steps: must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


BROKEN = {
    "malformed yaml": ("configs/quickstart.yaml", "policy:\n  path: [tiny:policy\n"),
    "unknown key": ("configs/quickstart.yaml", "polcy:\n  path: tiny:policy\n"),
    "wrong type": ("tasks/tiny_json.yaml", "batch_size: eight\n"),
    "unknown judge": ("tasks/tiny_json.yaml", "judges: [jsn]\n"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_console_script_never_prints_a_traceback(case, tmp_path):
    source, extra = BROKEN[case]
    text = (REPO / source).read_text()
    first_key = extra.split(":")[0]
    # Replace the shipped value of that key (or append) so the file keeps its other keys.
    lines = [line for line in text.splitlines() if not line.startswith(first_key + ":")]
    path = tmp_path / Path(source).name
    path.write_text("\n".join(lines) + "\n" + extra)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "cgpo", "validate", str(path)], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(str(path)) or result.stderr.startswith(path.name), result.stderr
