"""The strict dataclass builder: types, unknown keys, Literal values, nested paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from cgpo.schema import Invalid, SchemaError, build, to_dict


@dataclass(frozen=True)
class Inner:
    k: int
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    items: list[Inner] = field(default_factory=list)
    rate: float = 1.0
    maybe: int | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise Invalid("rate", "must be >= 0")


def test_builds_nested_dataclasses_and_round_trips():
    data = {"name": "x", "inner": {"k": 1}, "items": [{"k": 2, "mode": "b"}], "rate": 2, "tags": {"a": "b"}}
    obj = build(Outer, data)
    assert obj.inner == Inner(1) and obj.items == [Inner(2, "b")] and obj.rate == 2.0
    assert isinstance(obj.rate, float)
    assert build(Outer, to_dict(obj)) == obj


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({"name": "x", "inner": {"k": 1}, "rtae": 1.0}, ("rtae",), "did you mean 'rate'"),
        ({"name": "x"}, ("inner",), "missing required key"),
        ({"name": "x", "inner": {"k": "3"}}, ("inner", "k"), "must be an integer"),
        ({"name": "x", "inner": {"k": True}}, ("inner", "k"), "must be an integer"),
        ({"name": "x", "inner": {"k": 1, "mode": "c"}}, ("inner", "mode"), "one of 'a', 'b'"),
        ({"name": "x", "inner": {"k": 1}, "items": [{"k": 1}, {"k": 1.5}]}, ("items", 1, "k"), "integer"),
        ({"name": "x", "inner": [1]}, ("inner",), "must be a mapping, got a list"),
        ({"name": "x", "inner": {"k": 1}, "rate": -1}, ("rate",), "must be >= 0"),
        ({"name": "x", "inner": {"k": 1}, "maybe": "no"}, ("maybe",), "must be an integer or null"),
        ({"name": "x", "inner": {"k": 1}, "tags": {"a": 1}}, ("tags", "a"), "must be a string"),
    ],
)
def test_errors_name_the_key_path(data, path, reason):
    with pytest.raises(SchemaError) as info:
        build(Outer, data)
    assert info.value.path == path
    assert reason in info.value.reason


def test_float_written_in_exponent_form_is_accepted():
    # PyYAML reads `1e-5` (no dot) as a string; a float field accepts that literal.
    assert build(Outer, {"name": "x", "inner": {"k": 1}, "rate": "1e-5"}).rate == 1e-5
    with pytest.raises(SchemaError):
        build(Outer, {"name": "x", "inner": {"k": 1}, "rate": "fast"})
