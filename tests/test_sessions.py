"""Sessions contract: sliding TTL, absolute lifetime, rotation, malformed ids, round trips."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from celery_kv import KV
from celery_kv.primitives.sessions import Sessions

from ._primitive_workers import wait_until
from .conftest import count_commands, keys_under


def _record_key(kv: KV, namespace: str, sid: str) -> str:
    return kv.store.keys.key("sess", (namespace, sid.split(".")[0]))


def test_create_and_get(kv: KV) -> None:
    sessions = kv.sessions("web")
    sid = sessions.create({"user": 7, "roles": ["admin"]})
    assert sessions.get(sid) == {"user": 7, "roles": ["admin"]}
    assert sessions.get(sessions.create({})) == {}  # an empty session is still a session


def test_ids_are_long_random_and_unique(kv: KV) -> None:
    sessions = kv.sessions("web")
    sids = {sessions.create({"i": i}) for i in range(50)}
    assert len(sids) == 50
    for sid in sids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}", sid)


def test_redis_never_holds_the_secret(kv: KV) -> None:
    sessions = kv.sessions("web")
    sid = sessions.create({"user": 1})
    secret = sid.split(".")[1].encode()
    stored = kv.store.client.hgetall(_record_key(kv, "web", sid))
    assert stored and not any(secret in v for v in stored.values())


def test_get_slides_the_ttl(kv: KV) -> None:
    sessions = kv.sessions("web", ttl=3.0)
    sid = sessions.create({"user": 1})
    key = _record_key(kv, "web", sid)

    def aged() -> int:
        left = int(kv.store.client.pttl(key))
        return left if 0 < left < 2000 else 0

    before = wait_until(aged, timeout=10)  # a second has passed, without reading
    assert sessions.get(sid) == {"user": 1}
    assert kv.store.client.pttl(key) > before  # back near 3 s: the read slid it


def test_an_unused_session_ends_after_its_ttl(kv: KV) -> None:
    sessions = kv.sessions("web", ttl=0.3)
    sid = sessions.create({"user": 1})
    key = _record_key(kv, "web", sid)
    wait_until(lambda: kv.store.client.exists(key) == 0, timeout=5)  # polled without reading
    assert sessions.get(sid) is None


def test_max_lifetime_ends_a_busy_session(kv: KV) -> None:
    sessions = kv.sessions("web", ttl=30, max_lifetime=0.5)
    sid = sessions.create({"user": 1})
    assert 0 < kv.store.client.pttl(_record_key(kv, "web", sid)) <= 500
    assert sessions.get(sid) == {"user": 1}
    wait_until(lambda: sessions.get(sid) is None, timeout=5, every=0.05)
    assert sessions.save(sid, {"user": 2}) is False
    assert keys_under(kv) == []


def test_max_lifetime_is_enforced_by_the_script_not_only_the_ttl(kv: KV) -> None:
    sessions = kv.sessions("web", ttl=30, max_lifetime=0.3)
    sid = sessions.create({"user": 1})
    key = _record_key(kv, "web", sid)
    kv.store.client.pexpire(key, 30_000)  # as if the TTL had been pushed out somehow
    wait_until(lambda: sessions.get(sid) is None, timeout=5, every=0.05)
    assert kv.store.client.exists(key) == 0


def test_save_replaces_data_and_keeps_the_creation_time(kv: KV) -> None:
    sessions = kv.sessions("web", ttl=30, max_lifetime=0.5)
    sid = sessions.create({"cart": []})
    created = kv.store.client.hget(_record_key(kv, "web", sid), "c")
    assert sessions.save(sid, {"cart": [1]}) is True
    assert sessions.get(sid) == {"cart": [1]}
    assert kv.store.client.hget(_record_key(kv, "web", sid), "c") == created
    wait_until(lambda: sessions.get(sid) is None, timeout=5, every=0.05)


def test_save_needs_a_live_session(kv: KV) -> None:
    sessions = kv.sessions("web")
    ghost = "A" * 22 + "." + "B" * 43
    assert sessions.save(ghost, {"x": 1}) is False
    assert sessions.get(ghost) is None
    assert keys_under(kv) == []


def test_destroy(kv: KV) -> None:
    sessions = kv.sessions("web")
    sid = sessions.create({"user": 1})
    assert sessions.destroy(sid) is True
    assert sessions.get(sid) is None
    assert sessions.destroy(sid) is False
    assert keys_under(kv) == []


def test_rotate_gives_a_new_id_and_kills_the_old_one(kv: KV) -> None:
    sessions = kv.sessions("web")
    old = sessions.create({"user": 1})
    new = sessions.rotate(old)
    assert new is not None and new != old
    assert new.split(".")[1] != old.split(".")[1]
    assert sessions.get(new) == {"user": 1}
    assert sessions.get(old) is None
    assert sessions.save(old, {"user": "attacker"}) is False
    assert sessions.rotate(old) is None
    assert sessions.destroy(old) is False
    assert sessions.get(new) == {"user": 1}
    newer = sessions.rotate(new)
    assert newer is not None and sessions.get(new) is None and sessions.get(newer) == {"user": 1}


def test_rotate_keeps_the_creation_time(kv: KV) -> None:
    sessions = kv.sessions("web", ttl=30, max_lifetime=0.6)
    sid = sessions.create({"user": 1})
    rotated = sessions.rotate(sid)
    assert rotated is not None
    wait_until(lambda: sessions.get(rotated) is None, timeout=5, every=0.05)


def test_a_wrong_secret_touches_nothing(kv: KV) -> None:
    sessions = kv.sessions("web", ttl=30)
    sid = sessions.create({"user": 1})
    family, secret = sid.split(".")
    forged = family + "." + ("A" if secret[0] != "A" else "B") + secret[1:]
    key = _record_key(kv, "web", sid)
    kv.store.client.pexpire(key, 5_000)
    assert sessions.get(forged) is None
    assert sessions.save(forged, {"user": 2}) is False
    assert sessions.rotate(forged) is None
    assert sessions.destroy(forged) is False
    assert kv.store.client.pttl(key) <= 5_000  # no refresh through a forged id
    assert sessions.get(sid) == {"user": 1}


def test_namespaces_are_separate(kv: KV) -> None:
    a, b = kv.sessions("a"), kv.sessions("b")
    sid = a.create({"user": 1})
    assert b.get(sid) is None
    assert b.destroy(sid) is False
    assert a.get(sid) == {"user": 1}


VALID_SHAPE = "A" * 22 + "." + "B" * 43
MALFORMED: list[Any] = [
    None, 123, b"A" * 66, "", "x", "A" * 66, "A" * 22 + "." + "B" * 42, "A" * 22 + "." + "B" * 44,
    "A" * 22 + ":" + "B" * 43, "{" * 22 + "." + "B" * 43, "A" * 21 + "\n." + "B" * 43,
    VALID_SHAPE + "\n", "A" * 22 + "." + "B" * 42 + "*", "ü" * 22 + "." + "B" * 43,
    "A" * 10_240, ["A" * 22, "B" * 43],
]


def test_malformed_ids_never_reach_redis(kv: KV) -> None:
    sessions = kv.sessions("web")
    with count_commands(kv) as sent:
        for sid in MALFORMED:
            assert sessions.get(sid) is None, sid
            assert sessions.save(sid, {"x": 1}) is False, sid
            assert sessions.destroy(sid) is False, sid
            assert sessions.rotate(sid) is None, sid
    assert sent == []
    assert keys_under(kv) == []


def test_warm_operations_are_one_round_trip(kv: KV) -> None:
    sessions = kv.sessions("web")
    state: dict[str, Any] = {"sid": sessions.create({})}

    def rotate() -> None:
        state["sid"] = sessions.rotate(state["sid"])

    ops: list[Callable[[], Any]] = [
        lambda: sessions.get(state["sid"]),
        lambda: sessions.save(state["sid"], {"n": 1}),
        rotate,
        lambda: sessions.destroy(state["sid"]),
        lambda: state.update(sid=sessions.create({"n": 0})),
        lambda: sessions.get(VALID_SHAPE),
    ]
    for op in ops:
        op()  # warm: load the scripts
    for op in ops:
        with count_commands(kv) as sent:
            op()
        assert len(sent) == 1, sent


@pytest.mark.parametrize("bad", [None, [], "x", 5, [("a", 1)]])
def test_data_must_be_a_dict(kv: KV, bad: Any) -> None:
    sessions = kv.sessions("web")
    with pytest.raises(TypeError, match="dict"):
        sessions.create(bad)
    sid = sessions.create({"ok": 1})
    with pytest.raises(TypeError, match="dict"):
        sessions.save(sid, bad)
    assert sessions.get(sid) == {"ok": 1}


def test_non_json_data_is_refused_and_nothing_is_written(kv: KV) -> None:
    sessions = kv.sessions("web")
    with pytest.raises(TypeError, match=r"'web'.*JSON"):
        sessions.create({"x": object()})
    assert keys_under(kv) == []


def test_odd_data_round_trips(kv: KV) -> None:
    sessions = kv.sessions("web")
    data = {"": "", "{": "}", "a:b": "*", "\n": "ü", "big": "x" * 10_240, "none": None}
    assert sessions.get(sessions.create(data)) == data


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"ttl": 0}, "ttl"), ({"ttl": -1}, "ttl"), ({"ttl": float("inf")}, "ttl"),
        ({"ttl": float("nan")}, "ttl"), ({"ttl": "60"}, "ttl"),
        ({"max_lifetime": 0}, "max_lifetime"), ({"max_lifetime": -3}, "max_lifetime"),
        ({"max_lifetime": float("inf")}, "max_lifetime"),
    ],
)
def test_bad_options_are_refused(kv: KV, options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        kv.sessions("web", **options)
    assert keys_under(kv) == []


def test_bad_namespaces_are_refused(kv: KV) -> None:
    for bad in ["", "a{b", "a:b", "a\nb", "ü", "x" * 10_240, 7]:
        with pytest.raises(ValueError, match="namespace"):
            kv.sessions(bad)  # type: ignore[arg-type]
    assert keys_under(kv) == []


def test_works_with_a_decoding_client() -> None:
    kv = KV(client=fakeredis.FakeRedis(decode_responses=True), prefix="dec")
    sessions = kv.sessions("web", max_lifetime=60)
    sid = sessions.create({"user": 1})
    assert sessions.get(sid) == {"user": 1}
    rotated = sessions.rotate(sid)
    assert rotated is not None and sessions.get(rotated) == {"user": 1}


def test_defaults_and_repr(kv: KV) -> None:
    sessions = Sessions(kv.store, "web")
    assert (sessions.ttl, sessions.max_lifetime) == (3600.0, None)
    assert "web" in repr(sessions)
