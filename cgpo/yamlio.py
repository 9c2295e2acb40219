"""YAML loading that remembers where every value came from (file, line, key path inside that file).

Configs are assembled from several files (a run config, its task YAMLs, their ``include:`` bases) and
command-line overrides. When validation fails at a key path of the assembled tree, :func:`locate` maps the
path back to the file that holds the value, the key path inside that file and its line, so every error
reads ``FILE: key.path: reason (line N)``.

Duplicate keys in one mapping are an error: YAML silently keeps the last one, which would hide a typo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cgpo.errors import ConfigError
from cgpo.schema import KeyPath, format_path

COMMAND_LINE = "<command line>"


@dataclass(frozen=True)
class Origin:
    """Where a value was written: ``file`` (or ``<command line>``), ``path`` inside it, 1-based ``line``."""

    file: str
    path: KeyPath
    line: int | None = None


class SourcedDict(dict[Any, Any]):
    """A ``dict`` that records the :class:`Origin` of each key (``origins``) and of itself (``origin``)."""

    origin: Origin | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.origins: dict[Any, Origin] = {}


class SourcedList(list[Any]):
    """A ``list`` that records the :class:`Origin` of each item (``origins``) and of itself (``origin``)."""

    origin: Origin | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.origins: list[Origin | None] = [None] * len(self)


class _SourcedLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """SafeLoader that builds Sourced containers with line numbers (the file is attached afterwards)."""


def _construct_mapping(loader: _SourcedLoader, node: yaml.MappingNode) -> SourcedDict:
    loader.flatten_mapping(node)
    result = SourcedDict()
    result.origin = Origin("", (), node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain scalar", key_node.start_mark)
        if key in result:
            first = result.origins[key].line
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first defined on line {first})", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.origins[key] = Origin("", (), key_node.start_mark.line + 1)
    return result


def _construct_sequence(loader: _SourcedLoader, node: yaml.SequenceNode) -> SourcedList:
    result = SourcedList(loader.construct_object(child, deep=True) for child in node.value)
    result.origin = Origin("", (), node.start_mark.line + 1)
    result.origins = [Origin("", (), child.start_mark.line + 1) for child in node.value]
    return result


_SourcedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_SourcedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _stamp(value: Any, file: str, path: KeyPath) -> None:
    """Attach ``file`` and in-file key paths to every container loaded from ``file``."""
    if isinstance(value, SourcedDict):
        value.origin = Origin(file, path, value.origin.line if value.origin else None)
        for key, child in value.items():
            old = value.origins.get(key)
            value.origins[key] = Origin(file, (*path, key), old.line if old else None)
            _stamp(child, file, (*path, key))
    elif isinstance(value, SourcedList):
        value.origin = Origin(file, path, value.origin.line if value.origin else None)
        for i, child in enumerate(value):
            old = value.origins[i]
            value.origins[i] = Origin(file, (*path, i), old.line if old else None)
            _stamp(child, file, (*path, i))


def load_yaml(path: Path, display: str | None = None) -> Any:
    """Parse a YAML file into Sourced containers.

    Args:
        path: The file to read.
        display: How to name the file in messages (default: the path as given).

    Raises:
        ConfigError: the file is missing, unreadable or not valid YAML (with the line of the problem).
    """
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(name, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(name, "", "is a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, "", f"cannot read file: {exc}") from None
    try:
        data = yaml.load(text, Loader=_SourcedLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(name, "", f"invalid YAML: {problem}", line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, "", f"invalid YAML: {exc}") from None
    _stamp(data, name, ())
    return data


def set_override(tree: SourcedDict, dotted: str, raw_value: str) -> None:
    """Apply one ``a.b.0.c=value`` override in place; the value is parsed as a YAML scalar or flow collection.

    Intermediate mappings are created when missing; list indices must exist. The overridden key's origin
    becomes the command line, so a bad value is reported against the override, not the file.

    Raises:
        ConfigError: the key path cannot be followed (an index out of range, a key below a scalar).
    """
    text = f"{dotted}={raw_value}"
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise ConfigError(COMMAND_LINE, dotted, f"override '{text}' needs a key path like training.max_steps=5")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(COMMAND_LINE, dotted, f"override value is not valid YAML: {exc}") from None
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(
                    COMMAND_LINE, here, f"override '{text}': no list item {part} (the list has {len(node)})"
                )
            key: Any = int(part)
        elif isinstance(node, Mapping):
            key = part
        else:
            raise ConfigError(COMMAND_LINE, here, f"override '{text}': '{parts[depth - 1]}' is not a mapping or list")
        if last:
            node[key] = value
            origin = Origin(COMMAND_LINE, tuple(parts), None)
            if isinstance(node, SourcedDict | SourcedList):
                node.origins[key] = origin
            return
        if isinstance(node, dict) and key not in node:
            child = SourcedDict()
            child.origin = Origin(COMMAND_LINE, tuple(parts[: depth + 1]), None)
            node[key] = child
            if isinstance(node, SourcedDict):
                node.origins[key] = child.origin
        node = node[key]


def locate(tree: Any, path: KeyPath, default_file: str) -> tuple[str, str, int | None]:
    """Map a key path of the assembled tree to ``(file, key path inside that file, line)``.

    Walks down ``path`` as far as the tree goes, remembering the deepest origin seen; keys below it (a
    missing key, or one inside a plain value) are appended to that origin's in-file path.
    """
    best: Origin | None = tree.origin if isinstance(tree, SourcedDict | SourcedList) else None
    consumed = 0
    node: Any = tree
    for i, key in enumerate(path):
        origin: Origin | None = None
        child: Any = None
        if isinstance(node, SourcedDict) and key in node:
            origin, child = node.origins.get(key), node[key]
        elif isinstance(node, SourcedList) and isinstance(key, int) and 0 <= key < len(node):
            origin, child = node.origins[key], node[key]
        elif isinstance(node, Mapping) and key in node:  # noqa: SIM114 - separate arms let mypy narrow `key`
            child = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            child = node[key]
        else:
            break
        if origin is not None:
            best, consumed = origin, i + 1
        # A container carries the origin of its own file (a task loaded from its own YAML).
        own = child.origin if isinstance(child, SourcedDict | SourcedList) else None
        if own is not None and own.file and own.file != (best.file if best else None):
            best, consumed = own, i + 1
        node = child
    if best is None or not best.file:
        return default_file, format_path(path), None
    local = (*best.path, *path[consumed:])
    return best.file, format_path(local) if local else "", best.line
