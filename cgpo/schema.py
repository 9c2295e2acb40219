"""Strict conversion of plain YAML data into typed, frozen dataclasses.

``build(SomeConfig, data)`` walks the dataclass's type hints and rejects, with the key path and a reason,
everything a silent loader would let through: unknown keys (with a did-you-mean), missing required keys,
wrong types (``"3"`` for an int, a list for a mapping), values outside a ``Literal``. Value checks that
depend on more than the type live in each dataclass's ``__post_init__`` and raise :class:`Invalid`,
which ``build`` turns into a :class:`SchemaError` at the right path.

We write this instead of depending on pydantic or OmegaConf because the project's dependency set is
fixed (torch, transformers, trl, datasets, accelerate, sympy, evaluate) and because we need the key path
to map errors back to file and line (see :mod:`cgpo.yamlio`); the whole converter is ~150 lines.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

KeyPath = tuple[str | int, ...]
T = TypeVar("T")

_FLOAT_LITERAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class SchemaError(ValueError):
    """A value that does not fit the schema, at ``path`` inside the document being built."""

    def __init__(self, path: KeyPath, reason: str) -> None:
        super().__init__(f"{format_path(path)}: {reason}")
        self.path = path
        self.reason = reason


class Invalid(ValueError):
    """Raised by a dataclass's ``__post_init__`` for a bad value; ``key`` is relative to that dataclass."""

    def __init__(self, key: str | int | KeyPath, reason: str) -> None:
        super().__init__(reason)
        self.key: KeyPath = key if isinstance(key, tuple) else (key,)
        self.reason = reason


def format_path(path: KeyPath) -> str:
    """``("tasks", 0, "weight")`` -> ``"tasks.0.weight"``; the empty path is ``"(top level)"``."""
    return ".".join(str(part) for part in path) if path else "(top level)"


def type_name(value: Any) -> str:
    """How a YAML user would name the type of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: KeyPath) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        arms = get_args(tp)
        if value is None:
            if type(None) in arms:
                return None
            raise SchemaError(path, f"must be {_describe(tp)}, got null")
        errors: list[SchemaError] = []
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _convert(arm, value, path)
            except SchemaError as exc:
                errors.append(exc)
        # A nested error (inside a mapping arm) is more useful than "must be X or Y".
        deep = [e for e in errors if len(e.path) > len(path)]
        raise deep[0] if deep else SchemaError(path, f"must be {_describe(tp)}, got {type_name(value)}")
    if origin is Literal:
        if value in get_args(tp) and not isinstance(value, bool):
            return value
        raise SchemaError(path, f"must be {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SchemaError(path, f"must be a list, got {type_name(value)}")
        (item_type, *_) = get_args(tp) or (Any,)
        items = [_convert(item_type, item, (*path, i)) for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise SchemaError(path, f"must be a mapping, got {type_name(value)}")
        key_type, value_type = get_args(tp) or (str, Any)
        out = {}
        for key, item in value.items():
            if key_type is str and not isinstance(key, str):
                raise SchemaError((*path, key), f"keys must be strings, got {type_name(key)}")
            out[key] = _convert(value_type, item, (*path, key))
        return out
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # PyYAML (YAML 1.1) reads `1e-5` as a string; accept a numeric literal written that way.
        if isinstance(value, str) and _FLOAT_LITERAL.match(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"schema type {tp!r} is not supported")  # a bug in our dataclasses, not user input
    raise SchemaError(path, f"must be {_describe(tp)}, got {type_name(value)} {value!r}")


def build(cls: type[T], data: Any, path: KeyPath = ()) -> T:
    """Build dataclass ``cls`` from a mapping, strictly.

    Raises:
        SchemaError: with the key path of the first problem found.
    """
    if not isinstance(data, Mapping):
        raise SchemaError(path, f"must be a mapping, got {type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed keys: {', '.join(fields)}"
            raise SchemaError((*path, key), f"unknown key{hint}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], (*path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SchemaError((*path, name), "missing required key")
    try:
        return cls(**kwargs)
    except Invalid as exc:
        raise SchemaError((*path, *exc.key), exc.reason) from None


def to_dict(obj: Any) -> Any:
    """A dataclass tree back to plain YAML-able data (for the resolved config written to a run)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class Configurable:
    """Base of every plugin configured by a frozen ``Params`` dataclass (judges, optimizers, reward functions).

    ``cls.parse_params(mapping)`` validates a YAML ``params`` mapping without constructing the plugin, which
    is how ``cgpo validate`` checks them before anything heavy loads; ``cls(params)`` or ``cls(**kwargs)``
    builds it.
    """

    Params: ClassVar[type]

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        if params is not None and kwargs:
            raise TypeError("give either a Params instance or keyword parameters, not both")
        self.params = params if params is not None else self.parse_params(kwargs)

    @classmethod
    def parse_params(cls, data: Mapping[str, Any], path: KeyPath = ()) -> Any:
        """Validate a ``params`` mapping into ``Params``; raises :class:`SchemaError` at the offending key."""
        return build(cls.Params, data, path)
