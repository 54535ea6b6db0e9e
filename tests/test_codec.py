"""The JSON codec: what is stored comes back equal, type markers in user data included (F7)."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_kv.store import codec

MARKER_TEXT = st.sampled_from(
    ["__type__", "__value__", "__type__~", "__type__~~", "bytes", "base64", "datetime", "uuid",
     "decimal", "date", "time", "", "hello", "aGVsbG8="]
)
TEXT = st.one_of(MARKER_TEXT, st.text(max_size=12))
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=False, allow_infinity=False),
        TEXT,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(TEXT, inner, max_size=4),
        # a dict shaped like a kombu marker, with arbitrary payloads
        st.fixed_dictionaries({"__type__": inner, "__value__": inner}),
        st.fixed_dictionaries({"__type__": MARKER_TEXT, "__value__": inner},
                              optional={"__type__~": inner, "x": inner}),
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal and of exactly the same types all the way down (True is not 1, 1 is not 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES)
def test_every_json_value_round_trips_type_exact(value: Any) -> None:
    encoded = codec.dumps(value)
    assert same(codec.loads(encoded), value)
    assert same(codec.loads(encoded.encode()), value)


@settings(max_examples=100, deadline=None)
@given(JSON_VALUES)
def test_values_inside_kombu_types_round_trip(value: Any) -> None:
    stored = {"when": datetime.datetime(2024, 5, 1, 12, 30), "id": uuid.UUID(int=7),
              "amount": decimal.Decimal("1.10"), "user": value, "raw": b"hello"}
    assert codec.loads(codec.dumps(stored)) == stored


@pytest.mark.parametrize("value", [
    {"__type__": "bytes", "__value__": "hello"},  # the operator's report
    {"__type__": "base64", "__value__": "not base64!"},
    {"__type__": "uuid", "__value__": {"bad": 1}},
    {"__type__": "nope", "__value__": 1},
    {"__type__": "datetime", "__value__": "yesterday"},
    [{"__type__": "decimal", "__value__": "1.5"}],
    {"__type__~": {"__type__": "bytes", "__value__": "x"}},
])
def test_user_dicts_shaped_like_markers_come_back_unchanged(value: Any) -> None:
    assert same(codec.loads(codec.dumps(value)), value)


@pytest.mark.parametrize("raw", [
    '{"__type__": "uuid", "__value__": {"bad": 1}}',
    '{"__type__": "nope", "__value__": 1}',
    '{"__type__": ["unhashable"], "__value__": 1}',
    '{"__type__": "base64", "__value__": "abc"}',
    '{"__type__": "datetime", "__value__": 5}',
    '{"__type__": "bytes"}',
])
def test_a_malformed_stored_marker_never_raises_on_read(raw: str) -> None:
    assert codec.loads(raw) == json.loads(raw)


def test_plain_json_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(codec, "_escape", lambda v: calls.append(v) or v)
    monkeypatch.setattr(codec, "_unescape", lambda o: calls.append(o) or o)
    value = {"user": 7, "roles": ["admin"], "t": "type", "nested": [{"a": None}]}
    assert codec.loads(codec.dumps(value)) == value
    assert calls == []  # neither walked on encode nor hooked on decode


def test_non_json_values_name_what_was_stored() -> None:
    with pytest.raises(TypeError, match=r"session data.*celery-kv stores JSON only"):
        codec.dumps({"x": object()}, what="session data")
    with pytest.raises(TypeError, match="cache value"):
        codec.dumps({"x": float("nan")}, what="cache value")
