"""`cgpo judge NAME --input IN.jsonl`: in-process through cgpo.cli.main, plus one run of the real console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cgpo.cli import main
from cgpo.commands.judge import default_output, parse_params
from cgpo.errors import UserError
from cgpo.judging import JUDGES, Judge, JudgeConfigError, Verdict, failed, satisfied, violated
from cgpo.schema import Invalid


@dataclass(frozen=True)
class Limits:
    max_chars: int = 10


@dataclass(frozen=True)
class LengthParams:
    limits: Limits = field(default_factory=Limits)
    banned: list[str] = field(default_factory=list)
    with_probability: bool = False

    def __post_init__(self) -> None:
        if self.limits.max_chars < 0:
            raise Invalid(("limits", "max_chars"), "must be >= 0")


class LengthJudge(Judge):
    """Satisfied when the completion has at most `limits.max_chars` characters and no banned word.

    A per-sample `max_chars` metadata field overrides the limit; a completion "FAIL" gives -1 (to exercise
    the failure path). Every call is recorded in `calls` so tests can see the batching.
    """

    Params = LengthParams
    calls: list[int] = []  # noqa: RUF012 - test instrumentation shared by all instances
    closed: list[bool] = []  # noqa: RUF012

    def judge_batch(
        self, prompts: Sequence[str], completions: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        LengthJudge.calls.append(len(completions))
        out = []
        for completion, meta in zip(completions, metadata, strict=True):
            limit = meta.get("max_chars", self.params.limits.max_chars)
            p = 0.75 if self.params.with_probability else None
            if completion == "FAIL":
                out.append(failed("could not decide"))
            elif any(word in completion for word in self.params.banned):
                out.append(violated("banned word", p))
            elif len(completion) > limit:
                out.append(violated(f"{len(completion)} > {limit} chars", p))
            else:
                out.append(satisfied("short enough", p))
        return out

    def close(self) -> None:
        LengthJudge.closed.append(True)


class NeedsAnswerJudge(Judge):
    required_metadata = ("answer",)

    def judge_batch(self, prompts, completions, metadata):
        return [
            satisfied() if c == m["answer"] else violated("wrong") for c, m in zip(completions, metadata, strict=True)
        ]


class BrokenStartJudge(Judge):
    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        raise JudgeConfigError("model path /nope does not exist")

    def judge_batch(self, prompts, completions, metadata):  # pragma: no cover - never built
        return []


class InterruptedJudge(LengthJudge):
    """Judges the first batch, then the user presses Ctrl-C."""

    def judge_batch(self, prompts, completions, metadata):
        if LengthJudge.calls:
            raise KeyboardInterrupt
        return super().judge_batch(prompts, completions, metadata)


@pytest.fixture(autouse=True)
def _registered():
    names = {
        "t_len": LengthJudge,
        "t_answer": NeedsAnswerJudge,
        "t_broken": BrokenStartJudge,
        "t_int": InterruptedJudge,
    }
    for name, cls in names.items():
        JUDGES.register(name, cls)
    LengthJudge.calls.clear()
    LengthJudge.closed.clear()
    yield
    for name in names:
        JUDGES.unregister(name)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


RECORDS = [
    {"prompt": "p1", "completion": "short", "id": 1},
    {"prompt": "p2", "completion": "much too long here", "id": 2, "tags": ["x"]},
    {"prompt": "p3", "completion": "FAIL", "id": 3},
    {"prompt": "p4", "completion": "medium len", "id": 4, "max_chars": 5},
    {"prompt": "p5", "completion": "ok", "id": 5},
]


def test_judges_a_file_in_order_with_metadata_kept(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert main(["judge", "t_len", "--input", str(src)]) == 0
    out = read_jsonl(tmp_path / "in.judged.jsonl")  # the documented default output
    assert [r["id"] for r in out] == [1, 2, 3, 4, 5]
    assert [r["verdict"] for r in out] == [1, 0, -1, 0, 1]
    assert out[1]["tags"] == ["x"] and out[3]["max_chars"] == 5
    assert out[1]["reason"] == "18 > 10 chars" and out[3]["reason"] == "10 > 5 chars"
    assert all("probability" not in r for r in out)
    err = capsys.readouterr().err
    assert "5 samples: 2 satisfied (1), 2 violated (0), 1 failed (-1)" in err
    assert "verdicts/s" in err
    assert "failed x1: could not decide" in err
    assert LengthJudge.closed == [True]


def test_batches_stream_the_file(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out = tmp_path / "out.jsonl"
    assert main(["judge", "t_len", "-i", str(src), "-o", str(out), "--batch-size", "2"]) == 0
    assert LengthJudge.calls == [2, 2, 1]
    assert [r["id"] for r in read_jsonl(out)] == [1, 2, 3, 4, 5]


def test_stdout_output_and_probability(tmp_path, capsys):
    stale = {"prompt": "p", "completion": "way too long for it", "verdict": 1, "reason": "old", "probability": 0.1}
    src = write_jsonl(tmp_path / "in.jsonl", [*RECORDS[:2], stale])
    assert main(["judge", "t_len", "-i", str(src), "-o", "-", "-p", "with_probability=true"]) == 0
    captured = capsys.readouterr()
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["verdict"] for r in out] == [1, 0, 0]
    assert [r["probability"] for r in out] == [0.75, 0.75, 0.75]
    assert out[2]["reason"] == "19 > 10 chars"  # an earlier verdict is replaced, not kept
    assert "wrote stdout" in captured.err
    assert not (tmp_path / "in.judged.jsonl").exists()


def test_a_stale_probability_is_dropped_when_the_judge_has_none(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "x", "probability": 0.2, "verdict": 0}])
    assert main(["judge", "t_len", "-i", str(src)]) == 0
    [record] = read_jsonl(tmp_path / "in.judged.jsonl")
    assert record == {"prompt": "p", "completion": "x", "verdict": 1, "reason": "short enough"}


def test_params_are_yaml_with_dotted_keys(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out = tmp_path / "out.jsonl"
    args = ["judge", "t_len", "-i", str(src), "-o", str(out), "--param", "limits.max_chars=100", "-p", "banned=[long]"]
    assert main(args) == 0
    assert [r["verdict"] for r in read_jsonl(out)] == [1, 0, -1, 0, 1]
    assert read_jsonl(out)[1]["reason"] == "banned word"


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("limits.max_chars=abc", "judge 't_len': --param limits.max_chars: must be an integer, got a string 'abc'"),
        ("limits.max_chars=-1", "judge 't_len': --param limits.max_chars: must be >= 0"),
        ("limit.max_chars=3", "judge 't_len': --param limit: unknown key; did you mean 'limits'?"),
        ("banned=x", "judge 't_len': --param banned: must be a list, got a string"),
        ("novalue", "--param 'novalue': expected KEY=VALUE"),
        ("banned=[a,", "--param banned: value '[a,' is not valid YAML"),
    ],
)
def test_bad_params_exit_2_naming_the_param(tmp_path, capsys, param, message):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert main(["judge", "t_len", "-i", str(src), "-p", param]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cgpo judge: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert LengthJudge.calls == [] and not (tmp_path / "in.judged.jsonl").exists()


def test_parse_params_builds_nested_mappings():
    assert parse_params([]) == {}
    assert parse_params(["a=1", "b.c=[x, 2]", "b.d=true", "e=", "f='007'", "g=1.5e-3"]) == {
        "a": 1,
        "b": {"c": ["x", 2], "d": True},
        "e": None,
        "f": "007",
        "g": 1.5e-3,
    }
    with pytest.raises(UserError, match="given twice"):
        parse_params(["a=1", "a=2"])
    with pytest.raises(UserError, match="'a' was already given a value"):
        parse_params(["a=1", "a.b=2"])
    with pytest.raises(UserError, match="already holds nested keys"):
        parse_params(["a.b=1", "a=2"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_params(["a..b=1"])


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
        ('["prompt", "completion"]', "expected a JSON object, got a list"),
        ('{"completion": "c"}', "missing 'prompt'"),
        ('{"prompt": "p"}', "missing 'completion'"),
        ('{"prompt": "p", "completion": 3}', "'completion' must be a string, got an integer"),
        ('{"prompt": null, "completion": "c"}', "'prompt' must be a string, got null"),
        ("", "empty line; every line must be a JSON object"),
    ],
)
def test_malformed_input_exits_2_with_file_and_line_and_judges_nothing(tmp_path, capsys, line, reason):
    src = write_jsonl(tmp_path / "in.jsonl", [RECORDS[0], RECORDS[1], line, RECORDS[2]])
    assert main(["judge", "t_len", "-i", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"cgpo judge: {src}:3: {reason}; nothing was judged"
    assert LengthJudge.calls == []  # validated before the judge was even built
    assert LengthJudge.closed == []
    assert not (tmp_path / "in.judged.jsonl").exists()


def test_invalid_utf8_and_several_bad_lines(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    good = json.dumps(RECORDS[0]).encode()
    src.write_bytes(b"\n".join([good, b'{"prompt": "\xff", "completion": "c"}', good, b"[]", b"3", good]) + b"\n")
    assert main(["judge", "t_len", "-i", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cgpo judge: {src}:2: not valid UTF-8 (byte 13) (and 2 more malformed lines: 4, 5); nothing was judged"
    )


def test_required_metadata_is_checked_per_line(tmp_path, capsys):
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"prompt": "p", "completion": "4", "answer": "4"}, {"prompt": "p", "completion": "4"}]
    )
    assert main(["judge", "t_answer", "-i", str(src)]) == 2
    assert f"{src}:2: missing 'answer', which judge 't_answer' needs in every record" in capsys.readouterr().err


def test_unknown_judge_gets_did_you_mean(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert main(["judge", "t_lne", "-i", str(src)]) == 2
    err = capsys.readouterr().err
    assert "unknown judge 't_lne'; did you mean 't_len'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-i", "{tmp}/missing.jsonl"], "--input {tmp}/missing.jsonl: no such file"),
        (["-i", "{tmp}/in.jsonl", "-o", "{tmp}/nodir/out.jsonl"], "directory {tmp}/nodir does not exist"),
        (["-i", "{tmp}/in.jsonl", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ],
)
def test_usage_mistakes_exit_2(tmp_path, capsys, argv, message):
    write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert main(["judge", "t_len", *[a.format(tmp=tmp_path) for a in argv]]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_a_judge_that_cannot_start_is_a_user_error(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert main(["judge", "t_broken", "-i", str(src)]) == 2
    assert "judge 't_broken' could not start: model path /nope does not exist" in capsys.readouterr().err


def test_empty_input_gives_empty_output(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("")
    assert main(["judge", "t_len", "-i", str(src)]) == 0
    assert (tmp_path / "in.judged.jsonl").read_text() == ""
    assert "0 samples" in capsys.readouterr().err


def test_interrupted_run_leaves_no_half_file_and_closes_the_judge(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out = tmp_path / "out.jsonl"
    out.write_text("previous complete output\n")
    assert main(["judge", "t_int", "-i", str(src), "-o", str(out), "--batch-size", "2"]) == 130
    assert out.read_text() == "previous complete output\n"  # untouched: the new one was never renamed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary left
    assert LengthJudge.closed == [True]


def test_module_colon_class_and_judge_batch_failure(tmp_path, capsys):
    # The base class turns a raising judge_batch into -1 for the batch: exit 0, all failed, reason kept.
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "c"}] * 3)
    assert main(["judge", f"{__name__}:NeedsAnswerJudge", "-i", str(src)]) == 2  # needs `answer`
    assert "missing 'answer'" in capsys.readouterr().err
    assert main(["judge", f"{__name__}:ExplodingJudge", "-i", str(src)]) == 0
    out = read_jsonl(tmp_path / "in.judged.jsonl")
    assert [r["verdict"] for r in out] == [-1, -1, -1]
    assert out[0]["reason"] == "ExplodingJudge raised RuntimeError: boom"
    assert "3 failed (-1)" in capsys.readouterr().err


def test_a_module_that_fails_to_import_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "tmp_broken_judge_module.py").write_text("x = 1\nraise ValueError('half-written plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert main(["judge", "tmp_broken_judge_module:Judge", "-i", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "cgpo judge: cannot load judge 'tmp_broken_judge_module:Judge': ValueError: half-written plugin ("
    )
    assert err.endswith("tmp_broken_judge_module.py:2)")
    assert main(["judge", "no_such_module_xyz:Judge", "-i", str(src)]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err


class ExplodingJudge(Judge):
    def judge_batch(self, prompts, completions, metadata):
        raise RuntimeError("boom")


def test_default_output_name():
    assert default_output(Path("d/x.jsonl")) == Path("d/x.judged.jsonl")
    assert default_output(Path("d/x.json")) == Path("d/x.json.judged.jsonl")
    assert default_output(Path("x")) == Path("x.judged.jsonl")


def test_help_documents_default_output_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["judge", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "IN.judged.jsonl" in out and "`--output -` writes" in out and "exit:" in out and "--batch-size" in out


PLUGIN_MODULE = textwrap.dedent(
    """
    from cgpo.judging import Judge, satisfied, violated

    class Upper(Judge):
        def judge_batch(self, prompts, completions, metadata):
            return [violated("all caps") if c.isupper() else satisfied() for c in completions]
    """
)


def test_console_script_end_to_end_without_traceback(tmp_path):
    """The installed `cgpo` script: a real judgement, then malformed input (exit 2, one line, no traceback)."""
    script = shutil.which("cgpo") or str(Path(sys.executable).with_name("cgpo"))
    (tmp_path / "tmp_cli_plugin.py").write_text(PLUGIN_MODULE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"prompt": "p", "completion": "HEY"}, {"prompt": "p", "completion": "hi"}]
    )
    ok = subprocess.run(
        [script, "judge", "tmp_cli_plugin:Upper", "--input", str(src)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert [r["verdict"] for r in read_jsonl(tmp_path / "in.judged.jsonl")] == [0, 1]
    assert "2 samples: 1 satisfied (1), 1 violated (0), 0 failed (-1)" in ok.stderr

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c"}, '{"prompt": "p",'])
    proc = subprocess.run(
        [script, "judge", "tmp_cli_plugin:Upper", "--input", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    expected = (
        f"cgpo judge: {bad}:2: not valid JSON: Expecting property name enclosed in double quotes (column 16); "
        "nothing was judged"
    )
    assert proc.stderr.strip().splitlines() == [expected]  # one line: no traceback
    assert proc.stdout == ""
