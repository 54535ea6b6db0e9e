"""The coordination module: keys, codec, scripts and the retry policy."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_kv import KV
from celery_kv.store import codec, keys, scripts
from celery_kv.store.client import connect

from .conftest import count_commands

PARTS = st.one_of(st.text(max_size=40), st.integers(), st.binary(max_size=20))
KEYS = st.one_of(
    PARTS, st.just(()), st.tuples(PARTS), st.tuples(PARTS, PARTS), st.tuples(PARTS, PARTS, PARTS)
)


@given(KEYS, KEYS)
def test_distinct_keys_never_meet(a: keys.KeyLike, b: keys.KeyLike) -> None:
    if a != b:
        assert keys.identity(a) != keys.identity(b)


@given(KEYS)
def test_identity_is_tag_safe(key: keys.KeyLike) -> None:
    encoded = keys.identity(key)
    assert not set(encoded) & set("{}*\n\r ?[]"), encoded
    assert len(encoded) <= 121


def test_colon_string_and_tuple_differ() -> None:
    assert keys.identity("a:b") != keys.identity(("a", "b"))
    assert keys.identity("1") != keys.identity(1)
    assert keys.identity("x") != keys.identity(("x",))
    assert keys.identity("x") != keys.identity(b"x")
    assert len({keys.identity(k) for k in ["", b"", (), ("",), (b"",), ("", ""), (0,)]}) == 7


def test_long_parts_are_hashed_and_distinct() -> None:
    a, b = "x" * 10_000, "x" * 9_999 + "y"
    assert keys.identity(a).startswith("#") and keys.identity(a) != keys.identity(b)


def test_every_key_has_one_hash_tag_under_the_prefix() -> None:
    space = keys.KeySpace("app")
    key = space.key("lock", "in{vo}ice:42", "fence")
    assert key.startswith("app:lock:{") and key.endswith("}:fence")
    assert key.count("{") == 1 and key.count("}") == 1


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "a b", "a:b", "x" * 65, "a*"])
def test_bad_prefix_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        keys.KeySpace(bad)


def test_codec_round_trips_rich_types() -> None:
    value = {
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "id": uuid.UUID(int=7),
        "amount": decimal.Decimal("10.25"),
        "list": [None, 0, "", []],
    }
    assert codec.loads(codec.dumps(value)) == value


def test_codec_refuses_non_json_with_a_named_error() -> None:
    with pytest.raises(TypeError, match=r"invoice:42.*not JSON"):
        codec.dumps({"x": object()}, what="value for key 'invoice:42'")


def test_every_script_declares_retry_safety() -> None:
    names = scripts.available()
    assert "noop" in names
    for name in names:
        assert isinstance(scripts.load(name).retry_safe, bool)


def test_script_is_one_evalsha_when_warm_and_reloads_after_flush(kv: KV) -> None:
    assert kv.store.run("noop", [kv.store.keys.key("probe", "x")]) == 1
    with count_commands(kv) as sent:
        kv.store.run("noop", [kv.store.keys.key("probe", "x")])
    assert [c[0] for c in sent] == ["EVALSHA"]
    kv.store.client.script_flush()
    assert kv.store.run("noop", [kv.store.keys.key("probe", "x")]) == 1


def test_ping(kv: KV) -> None:
    assert kv.ping() is True


@pytest.mark.parametrize(
    "url", ["", "localhost:6379", "http://localhost", "redis+sentinel://127.0.0.1:26379"]
)
def test_bad_urls_name_the_url(url: str) -> None:
    with pytest.raises(ValueError) as info:
        connect(url)
    assert repr(url) in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1, 2}, object()])
def test_codec_refuses_values_json_cannot_carry(bad: object) -> None:
    with pytest.raises(TypeError, match="not JSON"):
        codec.dumps(bad, what="value")
