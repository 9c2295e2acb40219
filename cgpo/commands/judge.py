"""``cgpo judge NAME --input IN.jsonl``: run one judge over a JSONL file of prompts and completions.

Input: one JSON object per line, ``{"prompt": str, "completion": str, ...metadata}``; every field other
than ``prompt`` and ``completion`` is the sample's metadata (``answer`` for math, ``tests`` for code, ...).
Output: the same records, in the same order, one per input line, each with ``verdict`` (1, 0 or -1),
``reason`` and, when the judge has one, ``probability``.

The whole input is validated before the judge is even built, so a malformed line (``IN.jsonl:LINE:
reason``, exit 2) never leaves half a run behind; then the file is read again and judged in batches of
``--batch-size``, so memory stays bounded by one batch whatever the file size. The output is written to a
temporary file beside the destination and renamed over it at the end: an interrupted run leaves the old
output (or none), never a truncated one.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cgpo.errors import UserError

if TYPE_CHECKING:
    from cgpo.judging import Judge

DEFAULT_BATCH_SIZE = 64
#: Fields the command adds to each record; an input that already has them (a judged file judged again)
#: gets them replaced, so the output always describes this judge.
OUTPUT_FIELDS = ("verdict", "reason", "probability")
_MAX_LISTED_ERRORS = 10
_VERDICT_NAMES = {1: "satisfied", 0: "violated", -1: "failed"}

_EPILOG = """\
input:  one JSON object per line: {"prompt": "...", "completion": "...", <metadata>...}
        (metadata by judge: math `answer`; code `tests`, or `test` + `entry_point`, or `io`;
        ifeval `instruction_id_list` + `kwargs`; factuality `answer`)
output: each input record plus "verdict" (1 satisfied, 0 violated, -1 judge failed), "reason" and,
        for judges that have one, "probability"; same order, one line per input line.
        Default: IN.judged.jsonl beside the input (IN.jsonl -> IN.judged.jsonl); `--output -` writes
        to stdout. A file is written atomically (temporary file, then rename).
exit:   0 whatever the verdicts; 2 for a usage mistake or malformed input (IN.jsonl:LINE: reason).

examples:
  cgpo judge math --input gsm8k.jsonl --param answer_format=gsm8k
  cgpo judge ifeval -i responses.jsonl -o - | jq .verdict
  cgpo judge my_pkg.judges:NoShouting -i samples.jsonl --param limits.max_words=200
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``cgpo judge`` on the CLI's subparsers (the protocol of :mod:`cgpo.cli`)."""
    parser = subparsers.add_parser(
        "judge",
        help="run one judge over a JSONL file of prompts and completions",
        description="Run one judge over a JSONL file and write each record back with its verdict.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name", metavar="NAME", help="a registered judge (see `cgpo list judges`) or module:Class of a Judge subclass"
    )
    parser.add_argument("--input", "-i", required=True, metavar="IN.jsonl", help="JSONL file to judge")
    parser.add_argument(
        "--output",
        "-o",
        metavar="OUT.jsonl",
        help="where to write the judged records (default: IN.judged.jsonl beside the input; '-' for stdout)",
    )
    parser.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "a judge parameter, repeatable; VALUE is read as YAML (5 -> integer, true -> boolean, "
            "'[a, b]' -> list, empty -> null); a dotted KEY (a.b=1) sets a nested mapping"
        ),
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"samples per judge call (default {DEFAULT_BATCH_SIZE}); the file is streamed one batch at a time",
    )
    parser.set_defaults(handler=run)
    return parser


# -- parameters -------------------------------------------------------------------------------------------------
def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a=1", "b.c=[x, y]"]`` into ``{"a": 1, "b": {"c": ["x", "y"]}}``.

    Values are parsed with ``yaml.safe_load``, exactly as they would read in a task YAML's ``params``.

    Raises:
        UserError: a malformed item, invalid YAML, a key given twice, or a key that is both a value and a
            mapping (``a=1`` with ``a.b=2``).
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not part for part in parts):
            raise UserError(f"--param {item!r}: expected KEY=VALUE (KEY may be dotted: a.b=1)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"--param {key}: value {raw!r} is not valid YAML: {problem}") from None
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise UserError(f"--param {key}: '{prefix}' was already given a value, so it cannot hold '{key}'")
            node = child
        if parts[-1] in node:
            what = "given twice" if not isinstance(node[parts[-1]], dict) else "already holds nested keys"
            raise UserError(f"--param {key}: {what}")
        node[parts[-1]] = value
    return out


# -- input ------------------------------------------------------------------------------------------------------
class _LineError(ValueError):
    """One malformed input line; the message is the reason, the caller adds FILE:LINE."""


def _type_name(value: Any) -> str:
    from cgpo.schema import type_name

    return type_name(value)


def _parse_line(raw: bytes, required_metadata: Sequence[str], judge_name: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _LineError(f"not valid UTF-8 (byte {exc.start + 1})") from None
    if not text.strip():
        raise _LineError("empty line; every line must be a JSON object")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _LineError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(record, dict):
        raise _LineError(f"expected a JSON object, got {_type_name(record)}")
    for field in ("prompt", "completion"):
        if field not in record:
            raise _LineError(f"missing '{field}'")
        if not isinstance(record[field], str):
            raise _LineError(f"'{field}' must be a string, got {_type_name(record[field])}")
    for key in required_metadata:
        if key not in record:
            raise _LineError(f"missing '{key}', which judge '{judge_name}' needs in every record")
    return record


def _read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        # Split on b"\n" only: str.splitlines would also split on \x1c, \u2028 ... inside JSON strings and
        # shift every following line number.
        for lineno, raw in enumerate(handle, start=1):
            yield lineno, raw.rstrip(b"\r\n")


def validate_input(path: Path, required_metadata: Sequence[str], judge_name: str) -> int:
    """Check every line of ``path``; return the number of records.

    Raises:
        UserError: ``PATH:LINE: reason`` for the first malformed line, with the line numbers of the others.
    """
    errors: list[tuple[int, str]] = []
    count = 0
    for lineno, raw in _read_lines(path):
        count += 1
        try:
            _parse_line(raw, required_metadata, judge_name)
        except _LineError as exc:
            errors.append((lineno, str(exc)))
    if errors:
        lineno, reason = errors[0]
        message = f"{path}:{lineno}: {reason}"
        if len(errors) > 1:
            others = [str(n) for n, _ in errors[1 : 1 + _MAX_LISTED_ERRORS]]
            more = ", ..." if len(errors) - 1 > _MAX_LISTED_ERRORS else ""
            message += f" (and {len(errors) - 1} more malformed lines: {', '.join(others)}{more})"
        raise UserError(message + "; nothing was judged")
    return count


def _batches(path: Path, size: int, required: Sequence[str], name: str) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for _, raw in _read_lines(path):
        batch.append(_parse_line(raw, required, name))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- the judge --------------------------------------------------------------------------------------------------
def _param_error(name: str, exc: Any) -> UserError:
    from cgpo.schema import format_path

    return UserError(f"judge '{name}': --param {format_path(exc.path)}: {exc.reason}")


def resolve_judge(name: str, raw_params: Mapping[str, Any]) -> tuple[type[Judge], Any]:
    """Look ``name`` up and validate its parameters, importing nothing heavy (no model, no worker pool).

    Raises:
        UserError: an unknown name (with the registry's did-you-mean), a plugin that fails to import, or a
            parameter that does not fit the judge's ``Params`` (naming ``--param KEY``).
    """
    from cgpo.judging import JUDGES
    from cgpo.registry import RegistryError
    from cgpo.schema import SchemaError

    try:
        cls = JUDGES.get(name)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a `module:Class` whose module fails while importing (user code)
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise UserError(f"cannot load judge '{name}': {type(exc).__name__}: {exc}{where}") from None
    try:
        return cls, cls.parse_params(raw_params)
    except SchemaError as exc:
        raise _param_error(name, exc) from None


def start_judge(cls: type[Judge], params: Any, name: str) -> Judge:
    """Build the judge (this is where models load and pools start)."""
    from cgpo.judging import JudgeConfigError
    from cgpo.schema import SchemaError

    try:
        return cls(params)
    except SchemaError as exc:  # a judge that validates more in __init__
        raise _param_error(name, exc) from None
    except (JudgeConfigError, OSError) as exc:  # bad settings, or a model / file path that does not exist
        raise UserError(f"judge '{name}' could not start: {exc}") from None


# -- output -----------------------------------------------------------------------------------------------------
def default_output(input_path: Path) -> Path:
    """``data/x.jsonl`` -> ``data/x.judged.jsonl``; any other name gets ``.judged.jsonl`` appended."""
    if input_path.suffix == ".jsonl":
        return input_path.with_name(input_path.stem + ".judged.jsonl")
    return input_path.with_name(input_path.name + ".judged.jsonl")


class _AtomicWriter:
    """Text output that appears at ``path`` only when complete (temporary file + ``os.replace``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Same directory, so the final rename stays on one file system and is atomic. Mode "x" (rather than
        # tempfile's 0600 files) keeps the user's umask for the final file.
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        self.handle: IO[str] = self.tmp.open("x", encoding="utf-8")

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


def _judged_record(record: dict[str, Any], verdict: Any) -> dict[str, Any]:
    out = {key: value for key, value in record.items() if key not in OUTPUT_FIELDS}
    out["verdict"] = verdict.value
    out["reason"] = verdict.reason
    if verdict.probability is not None:
        out["probability"] = verdict.probability
    return out


def _err(message: str, end: str = "\n") -> None:
    sys.stderr.write(message + end)
    sys.stderr.flush()


# -- the command ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Validate the input, judge it in batches, write the output atomically, print a summary to stderr."""
    input_path = Path(args.input)
    if not input_path.is_file():
        raise UserError(f"--input {input_path}: no such file")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    to_stdout = args.output == "-"
    output_path = None if to_stdout else Path(args.output) if args.output else default_output(input_path)
    if output_path is not None and not output_path.parent.is_dir():
        raise UserError(f"--output {output_path}: directory {output_path.parent} does not exist")
    raw_params = parse_params(args.param)

    # Cheap checks first, so a typo in a name, a parameter or the input is reported before any model or
    # worker pool starts, and nothing is judged unless every line is usable.
    cls, params = resolve_judge(args.name, raw_params)
    required = tuple(cls.required_metadata)
    total = validate_input(input_path, required, args.name)

    judge = start_judge(cls, params, args.name)
    counts: Counter[int] = Counter()
    failure_reasons: Counter[str] = Counter()
    judging_s = 0.0
    try:
        writer = None if output_path is None else _AtomicWriter(output_path)
        sink: IO[str] = sys.stdout if writer is None else writer.handle
        try:
            done = 0
            for batch in _batches(input_path, args.batch_size, required, args.name):
                prompts = [r["prompt"] for r in batch]
                completions = [r["completion"] for r in batch]
                metadata = [{k: v for k, v in r.items() if k not in ("prompt", "completion")} for r in batch]
                start = time.perf_counter()
                verdicts = judge(prompts, completions, metadata)
                judging_s += time.perf_counter() - start
                for record, verdict in zip(batch, verdicts, strict=True):
                    counts[verdict.value] += 1
                    if verdict.value == -1:
                        failure_reasons[verdict.reason] += 1
                    sink.write(json.dumps(_judged_record(record, verdict), ensure_ascii=False) + "\n")
                done += len(batch)
                if sys.stderr.isatty():
                    _err(f"\rcgpo judge: {done}/{total}", end="")
            if writer is not None:
                writer.commit()
            else:
                sys.stdout.flush()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    finally:
        judge.close()

    if sys.stderr.isatty() and total:
        _err("")
    rate = f"{total / judging_s:,.1f} verdicts/s" if judging_s > 0 else "n/a verdicts/s"
    summary = ", ".join(f"{counts[v]} {_VERDICT_NAMES[v]} ({v})" for v in (1, 0, -1))
    where = "stdout" if output_path is None else str(output_path)
    _err(f"cgpo judge {args.name}: {total} samples: {summary}; {judging_s:.2f} s judging, {rate}; wrote {where}")
    for reason, n in failure_reasons.most_common(3):
        _err(f"  failed x{n}: {reason[:200]}")
    return 0
