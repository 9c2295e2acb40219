"""Checks of a task's data files, row by row, before any model loads (``cgpo validate``).

What training would otherwise meet mid-run, or never notice:

* a JSONL line that is not a JSON object, or not UTF-8 (``FILE:LINE``); the ``datasets`` loader stops the
  run on the first one, inside ``cgpo train``;
* a row without its prompt, or with an empty one: ``datasets`` fills a missing column with null, and the
  prompt would become the text ``"None"``, trained on silently;
* a missing or empty gold response (``reference_field``) where the task configures one, and a metadata
  column that no row has (``cgpo train`` stops on it; a column absent from some rows only is allowed, e.g.
  a factuality judge runs only where an answer exists);
* metadata a judge of the task cannot use (``Judge.metadata_problem``): every sample of that row would be
  judged -1 and left out of training;
* train prompts that also appear in the eval split (a warning with counts: held-out results would be
  inflated);
* (run configs, :func:`check_prompt_lengths`) train prompts too long for the policy's context together with
  ``sampling.max_new_tokens``: ``cgpo train`` leaves them out; each is listed as a warning, with a count.

Every problem is one line, ``FILE:LINE: reason`` for a JSONL row, ``FILE: row N: reason`` for rows of other
formats (read through ``datasets``), ``task NAME: reason`` for the task as a whole. Errors make
``cgpo validate`` exit 2; warnings do not. At most ``MAX_PER_FILE`` problems are listed per file, then a
count of the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cgpo.config import DataSource, RunConfig, TaskConfig
from cgpo.errors import UserError

MAX_PER_FILE = 20


@dataclass(frozen=True)
class Problem:
    """One problem in a task's data: where (``FILE:LINE`` or ``task NAME``), what, and how bad."""

    where: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        label = "warning: " if self.severity == "warning" else ""
        return f"{self.where}: {label}{self.message}"


@dataclass(frozen=True)
class Row:
    """A data row and where it is: ``FILE:LINE`` (JSONL) or ``FILE: row N`` (other formats)."""

    where: str
    record: Mapping[str, Any]


def has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def check_run_data(config: RunConfig) -> list[Problem]:
    """Problems in the data of every task of a run config."""
    return [problem for task in config.tasks for problem in check_task_data(task)]


def check_task_data(task: TaskConfig) -> list[Problem]:
    """Problems in a task's train and eval data: per-row errors, then the train/eval overlap warning."""
    problems: list[Problem] = []
    prompts: dict[str, dict[str, str]] = {}
    judges = _judge_classes(task)
    for split in ("train", "eval"):
        source: DataSource | None = getattr(task.prompts, split)
        if source is None:
            continue
        found: list[Problem] = []
        prompts[split] = {}
        columns: set[str] = set()
        rows = 0
        try:
            for item in _rows(source, f"task {task.name}: prompts.{split}"):
                if isinstance(item, Problem):
                    found.append(item)
                    continue
                rows += 1
                columns.update(item.record)
                found += _row_problems(task, judges, item)
                prompt = item.record.get(task.prompts.prompt_field)
                if isinstance(prompt, str) and prompt.strip():
                    prompts[split].setdefault(prompt.strip(), item.where)
        except UserError as exc:
            found.append(Problem(f"task {task.name}", str(exc)))
            rows = -1  # not loadable: already reported
        name = source.path or source.dataset or split
        problems += _capped(found, name)
        problems += _column_problems(task, split, name, rows, columns)
    problems += _overlap(task, prompts)
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Reading rows, with their location
# ----------------------------------------------------------------------------------------------------------------
def _rows(source: DataSource, where: str) -> Iterator[Row | Problem]:
    """Each row of a source, or a Problem for a line that is not a row.

    JSONL is read here, line by line (``datasets`` gives no line numbers and stops at the first bad line);
    other formats through ``datasets``.
    """
    if source.path is not None and source.builder == "json" and source.path.lower().endswith(".jsonl"):
        yield from _jsonl_rows(Path(source.path), source.limit)
        return
    from cgpo.data import _load_rows  # the loader cgpo train uses, so the rows are exactly what it sees

    name = source.path or source.dataset
    for index, record in enumerate(_load_rows(source, where), start=1):
        yield Row(f"{name}: row {index}", record)


def _jsonl_rows(path: Path, limit: int | None) -> Iterator[Row | Problem]:
    count = 0
    with path.open("rb") as handle:
        # Split on b"\n" only, as the JSON loader does: str.splitlines would also split on \x1c, \u2028 ...
        # inside JSON strings and shift every following line number.
        for lineno, raw in enumerate(handle, start=1):
            if limit is not None and count >= limit:
                return
            where = f"{path}:{lineno}"
            try:
                text = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Problem(
                    where, f"not valid UTF-8 (byte {exc.start + 1} of the line); re-encode the file as UTF-8"
                )
                continue
            if lineno == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark, which the loader accepts
            if not text.strip():
                continue  # blank lines are skipped by the loader, and hold no row
            count += 1
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Problem(where, f"not valid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(record, dict):
                yield Problem(where, f"expected a JSON object, got {type(record).__name__}")
                continue
            yield Row(where, record)


# ----------------------------------------------------------------------------------------------------------------
# Per-row checks
# ----------------------------------------------------------------------------------------------------------------
def _judge_classes(task: TaskConfig) -> list[tuple[str, Any]]:
    """(label, class) of each judge of the task; names were resolved when the config loaded."""
    from cgpo.judging import JUDGES

    return [(spec.metric_label, JUDGES.get(spec.name)) for spec in task.judges]


def _row_problems(task: TaskConfig, judges: list[tuple[str, Any]], row: Row) -> list[Problem]:
    prompts = task.prompts
    record = row.record
    problems = []
    for column, role in [(prompts.prompt_field, "prompt"), (prompts.reference_field, "reference (a_bar)")]:
        if column is None:
            continue
        reason = _text_problem(record, column)
        if reason:
            problems.append(Problem(row.where, f"{role} field '{column}' {reason}"))
    # A metadata value may be absent from some rows (a factuality judge runs only where an answer exists);
    # whether a row's metadata is usable is each judge's call, on exactly what training would pass it.
    metadata = {key: record.get(column) for key, column in prompts.metadata_fields.items()}
    for label, judge in judges:
        reason = judge.metadata_problem(metadata)
        if reason:
            problems.append(Problem(row.where, f"judge '{label}' cannot use this row: {reason}"))
    return problems


def _column_problems(task: TaskConfig, split: str, name: str, rows: int, columns: set[str]) -> list[Problem]:
    """Whole-file problems: no rows, or a metadata column that no row has (``cgpo train`` would stop)."""
    if rows == 0:
        return [Problem(name, f"no rows (task {task.name}: prompts.{split})")]
    if rows < 0:
        return []
    absent = [column for column in task.prompts.metadata_fields.values() if column not in columns]
    return [Problem(name, f"metadata field '{column}' is in no row (task {task.name}: prompts.{split})")
            for column in absent]  # fmt: skip


def _text_problem(record: Mapping[str, Any], column: str) -> str | None:
    value = record.get(column)
    if value is None:
        return "is missing" if column not in record else "is null"
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "is empty"
    return None


def _capped(problems: list[Problem], name: str) -> list[Problem]:
    if len(problems) <= MAX_PER_FILE:
        return problems
    rest = problems[MAX_PER_FILE:]
    errors = sum(p.severity == "error" for p in rest)
    more = Problem(name, f"{len(rest)} more problems not listed ({errors} errors)", "error" if errors else "warning")
    return [*problems[:MAX_PER_FILE], more]


def _overlap(task: TaskConfig, prompts: dict[str, dict[str, str]]) -> list[Problem]:
    """A warning when eval prompts (compared after stripping whitespace) also appear in the train split."""
    train, held_out = prompts.get("train", {}), prompts.get("eval", {})
    shared = [text for text in held_out if text in train]
    if not shared:
        return []
    first = shared[0]
    return [
        Problem(
            f"task {task.name}",
            f"{len(shared)} of {len(held_out)} eval prompts also appear in the train split "
            f"(first: {held_out[first]} = {train[first]}); held-out results would be inflated",
            "warning",
        )
    ]


# ----------------------------------------------------------------------------------------------------------------
# Prompt lengths (needs the policy's tokenizer and config, not its weights)
# ----------------------------------------------------------------------------------------------------------------
def check_prompt_lengths(config: RunConfig) -> list[Problem]:
    """Warnings for train prompts that ``cgpo train`` would leave out as too long, and a count per task.

    A prompt is too long when its token count (the policy tokenizer, the task's chat formatting) plus
    ``sampling.max_new_tokens`` exceeds the policy's ``max_position_embeddings``: the trainer's rule. When
    every prompt of a task is too long it is an error (the trainer stops on it). Loads the tokenizer and
    the model config only; the embedded tiny models are not built and a named source (``smollm2:...``) is
    not converted for this (a warning says so).
    """
    from cgpo.config import TINY_PREFIX

    policy = config.policy.path
    if policy.startswith(TINY_PREFIX):
        from cgpo.tiny.build import is_built, tiny_models_dir

        folder = tiny_models_dir()
        if not is_built(folder):
            return [Problem(f"policy {policy}", "prompt lengths not checked: the tiny models are not built yet "
                            "(cgpo train builds them)", "warning")]  # fmt: skip
        policy = str(folder / policy[len(TINY_PREFIX) :])
    from cgpo import model_sources

    if policy in model_sources.SOURCES:
        # A named source is read from its converted folder; validation never downloads or converts one.
        converted = model_sources.model_dir(model_sources.named_source(policy))
        if not model_sources.is_converted(converted):
            return [Problem(f"policy {policy}", "prompt lengths not checked: not converted yet (cgpo train or "
                            f"cgpo bootstrap {policy.split(':')[0]} converts it)", "warning")]  # fmt: skip
        policy = str(converted)
    try:
        tokenizer, positions = _tokenizer_and_positions(config, policy)
    except Exception as exc:  # noqa: BLE001 - any loader failure: cgpo train reports it; here it only limits the check
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return [Problem(f"policy {policy}", f"prompt lengths not checked: cannot load its tokenizer locally "
                        f"({type(exc).__name__}: {first_line})", "warning")]  # fmt: skip
    if not positions:
        return []
    return [problem for task in config.tasks for problem in _long_prompts(task, tokenizer, positions)]


def _tokenizer_and_positions(config: RunConfig, path: str) -> tuple[Any, int]:
    from transformers import AutoConfig, AutoTokenizer

    # local_files_only: validation never downloads (nor waits on a hub that cannot be reached).
    common = {"revision": config.policy.revision, "trust_remote_code": config.policy.trust_remote_code,
              "local_files_only": True}  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    model_config = AutoConfig.from_pretrained(path, **common)
    return tokenizer, int(getattr(model_config, "max_position_embeddings", 0) or 0)


def _long_prompts(task: TaskConfig, tokenizer: Any, positions: int) -> list[Problem]:
    from cgpo.data import encode_prompt, render_message

    budget = positions - task.sampling.max_new_tokens
    long, total = [], 0
    for item in _rows(task.prompts.train, f"task {task.name}: prompts.train"):
        prompt = item.record.get(task.prompts.prompt_field) if isinstance(item, Row) else None
        if not isinstance(item, Row) or not isinstance(prompt, str):
            continue  # already an error of check_task_data
        total += 1
        metadata = {key: item.record.get(column) for key, column in task.prompts.metadata_fields.items()}
        try:
            length = len(encode_prompt(tokenizer, task.format, render_message(task.format, prompt, metadata)))
        except UserError as exc:
            return [Problem(f"task {task.name}", str(exc))]
        if length > budget:
            long.append(Problem(item.where, f"prompt is {length} tokens: with max_new_tokens "
                                f"{task.sampling.max_new_tokens} it exceeds the policy's {positions} positions; "
                                "cgpo train leaves it out", "warning"))  # fmt: skip
    if not long:
        return []
    every = len(long) == total
    summary = Problem(
        f"task {task.name}",
        f"{len(long)} of {total} train prompts are too long for {positions} positions with max_new_tokens "
        f"{task.sampling.max_new_tokens}" + ("; lower sampling.max_new_tokens" if every else "; they are left out"),
        "error" if every else "warning",
    )
    return [*_capped(long, task.prompts.train.path or task.name), summary]
