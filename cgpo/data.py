"""Task prompt sets: loading, prompt formatting, and the seeded, resumable per-task sampler.

A task's rows become :class:`PromptRecord` objects: the raw prompt (what judges see, e.g. the HumanEval
function header or the IFEval instruction), the user message built from the task's template, the judge
metadata, and the gold response a_bar when the task has one. The policy sees the user message wrapped in
its tokenizer's chat template (or the message itself for plain tasks); the reward model formats the user
message and the completion with its own chat template.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cgpo.config import DataSource, FormatConfig, TaskConfig
from cgpo.errors import UserError


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a task.

    Attributes:
        prompt: The dataset's prompt text, given to judges.
        message: The user message after the task's template (``format.template``).
        metadata: Judge metadata, keyed by the task's ``metadata_fields`` names.
        reference: The gold or preferred response a_bar, if the task names a ``reference_field``.
    """

    prompt: str
    message: str
    metadata: Mapping[str, Any]
    reference: str | None = None


def _load_rows(source: DataSource, where: str) -> list[dict[str, Any]]:
    """Rows of a data source as plain dicts (via ``datasets``, offline)."""
    import datasets

    try:
        if source.path is not None:
            dataset = datasets.load_dataset(source.builder, data_files=source.path, split=source.split)
        else:
            assert source.dataset is not None
            dataset = datasets.load_dataset(source.dataset, source.config, split=source.split)
    except Exception as exc:  # datasets raises many types; the user needs the task and the source named
        name = source.path or source.dataset
        raise UserError(f"{where}: cannot load {name} (split {source.split!r}): {type(exc).__name__}: {exc}") from exc
    if source.limit is not None:
        dataset = dataset.select(range(min(source.limit, len(dataset))))
    return [dict(row) for row in dataset]


def load_records(task: TaskConfig, split: str = "train") -> list[PromptRecord]:
    """The task's prompts of ``split`` (``train`` or ``eval``) as records.

    Raises:
        UserError: the split is not configured, cannot be loaded, lacks a configured column, or a template
            field is missing from a row.
    """
    source: DataSource | None = getattr(task.prompts, split)
    where = f"task {task.name}: prompts.{split}"
    if source is None:
        raise UserError(f"task {task.name}: has no prompts.{split} split")
    rows = _load_rows(source, where)
    if not rows:
        raise UserError(f"{where}: no rows in {source.path or source.dataset}")
    columns = set(rows[0])
    for column in task.prompts.columns():
        if column not in columns:
            raise UserError(f"{where}: column '{column}' is not in the data (columns: {', '.join(sorted(columns))})")
    fields = task.prompts.metadata_fields
    records = []
    for row in rows:
        metadata = {key: row[column] for key, column in fields.items()}
        prompt = str(row[task.prompts.prompt_field])
        reference = row[task.prompts.reference_field] if task.prompts.reference_field else None
        records.append(
            PromptRecord(
                prompt=prompt,
                message=render_message(task.format, prompt, metadata),
                metadata=metadata,
                reference=None if reference is None else str(reference),
            )
        )
    return records


def render_message(fmt: FormatConfig, prompt: str, metadata: Mapping[str, Any]) -> str:
    """The user message: the task's ``str.format`` template over ``prompt`` and the metadata."""
    return fmt.template.format(prompt=prompt, **metadata)


def policy_prompt_text(tokenizer: Any, fmt: FormatConfig, message: str) -> str:
    """The text the policy continues: the chat template with a generation prompt, or the message itself.

    Raises:
        UserError: the task asks for a chat template and the tokenizer has none.
    """
    if not fmt.chat:
        return message
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError(
            "the task sets format.chat: true but the policy tokenizer has no chat template; "
            "set format.chat: false and write the prompt layout in format.template"
        )
    messages = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
    messages.append({"role": "user", "content": message})
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def encode_prompt(tokenizer: Any, fmt: FormatConfig, message: str) -> list[int]:
    """Token ids of the policy prompt. A chat template already writes its special tokens, so none are added."""
    text = policy_prompt_text(tokenizer, fmt, message)
    return list(tokenizer(text, add_special_tokens=not fmt.chat)["input_ids"])


class TaskSampler:
    """Draws a task's prompts in seeded random order, epoch after epoch, and can resume exactly.

    The order of epoch ``e`` is a permutation seeded by ``(seed, task name, e)``, so the state is just
    ``(epoch, position)``. Batches wrap across epoch boundaries.
    """

    def __init__(self, size: int, *, seed: int, name: str, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError("a sampler needs at least one item")
        self.size, self.seed, self.name, self.shuffle = size, seed, name, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(f"{self.seed}:{self.name}:{epoch}").shuffle(order)
        return order

    def next_batch(self, count: int) -> list[int]:
        """The next ``count`` indices (repeating across epochs when ``count`` exceeds what is left)."""
        out: list[int] = []
        while len(out) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(count - len(out), self.size - self.position)
            out += self._order[self.position : self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "size": self.size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["size"] != self.size:
            raise UserError(
                f"task {self.name}: the checkpoint was written for {state['size']} prompts, the data now has "
                f"{self.size}; resume with the same data or start afresh (--fresh)"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
