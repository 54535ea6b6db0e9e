"""The delay store's contract (``celery_kv.store.delays``) on every backend.

Deferred messages wait in a ZSET scored by due time (server ms) with their bodies in a
hash; ``claim`` / ``ack`` publish them in two phases, and ``consume`` lets one delivery
of an entry run when a crash published it twice.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

import pytest

from celery_kv import KV
from celery_kv.store.delays import DEFAULT_GRACE, DelayStore
from tests.conftest import count_commands, keys_under, wait_for

HOSTILE: list[Any] = [
    {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"},  # a user dict, not a marker
    {"__type__~": 1, "__type__": "bytes", "x": ["__type__"]},
    "a:b",
    ["a", "b"],
    {"a:b": 1, "{x}": "*\n"},
    "ünïcødé ✓ 日本語 \U0001f600",
    "",
    [None, True, 0, 0.5, -1, "0", [], {}],
    datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
    decimal.Decimal("1.10"),
    "x" * 10_000,
]


@pytest.fixture
def store(kv: KV) -> DelayStore:
    return DelayStore(kv.store)


def due_ids(store: DelayStore, token: str, n: int = 100, lease: float = 30.0) -> list[str]:
    return [e.entry_id for e in store.claim(token, n, lease).entries]


def test_add_claim_ack_consume(store: DelayStore, kv: KV) -> None:
    assert store.add("e1", 0, {"task": "t", "args": [1]})
    claimed = store.claim("w1", 10, 30.0)
    assert [(e.entry_id, e.body) for e in claimed.entries] == [("e1", {"task": "t", "args": [1]})]
    assert claimed.next_due_in is not None and 29.0 < claimed.next_due_in <= 30.0  # its lease
    assert store.claim("w2", 10, 30.0).entries == []  # claimed: nobody else takes it
    assert store.ack(["e1"], "w1") == 1
    assert store.count() == 0
    assert store.claim("w2", 10, 30.0).next_due_in is None
    assert store.consume("e1", "w1") == "ok"
    assert store.consume("e1", "w1") == "ok"  # a redelivery of the copy that ran
    assert store.consume("e1", "w2") == "duplicate"  # another copy
    assert store.add("e1", 0, {"again": True}) is False  # an id that ran is never re-added
    assert store.count() == 0


def test_entries_come_out_in_due_order(store: DelayStore) -> None:
    for name, delay in (("c", 0.06), ("a", 0.02), ("b", 0.04), ("later", 60.0)):
        assert store.add(name, delay, name)
    first = store.claim("w", 10, 30.0)
    assert first.entries == []
    assert first.next_due_in is not None and 0 <= first.next_due_in <= 0.02
    wait_for(lambda: store.pending()[1][2].due_in <= 0, 2, "c to fall due", 0.005)
    claimed = store.claim("w", 10, 30.0)
    assert [e.entry_id for e in claimed.entries] == ["a", "b", "c"]
    assert claimed.next_due_in is not None and claimed.next_due_in > 29.0  # the claims' lease


def test_claim_takes_at_most_n(store: DelayStore) -> None:
    for i in range(5):
        store.add(f"e{i}", 0, i)
    assert len(due_ids(store, "w1", 3)) == 3
    assert len(due_ids(store, "w2", 3)) == 2
    assert due_ids(store, "w3", 3) == []


def test_add_is_idempotent_per_entry(store: DelayStore) -> None:
    assert store.add("e", 30, "first")
    assert not store.add("e", 0, "second")  # waiting: unchanged, still due in 30 s
    total, [entry] = store.pending()
    assert (total, entry.raw, entry.due_in > 29) == (1, '"first"', True)
    store.remove("e")
    assert store.add("e", 0, "x")
    due_ids(store, "w")
    store.ack(["e"], "w")
    assert not store.add("e", 0, "y")  # published (its sent marker): not twice


def test_a_lapsed_claim_is_claimed_again(store: DelayStore) -> None:
    """A poller that died between claim and ack loses nothing: after its lease the entry
    is due again, another poller claims it, and the dead one's late ack changes nothing."""
    store.add("e", 0, "body")
    assert due_ids(store, "dead", lease=0.05) == ["e"]
    assert due_ids(store, "alive") == []
    taken = wait_for(lambda: due_ids(store, "alive"), 2, "the lease to lapse", 0.01)
    assert taken == ["e"]
    assert store.ack(["e"], "dead") == 0  # not its claim any more
    assert store.count() == 1
    assert store.ack(["e"], "alive") == 1
    assert store.count() == 0


def test_a_crash_between_publish_and_ack_runs_once(store: DelayStore) -> None:
    """Poller A publishes copy A and dies before its ack; B re-publishes after the lease.
    Whichever copy's delivery comes first runs, the other is a duplicate."""
    store.add("e", 0, "body")
    assert due_ids(store, "A", lease=0.05) == ["e"]  # copy A is published; no ack
    wait_for(lambda: due_ids(store, "B", lease=0.05), 2, "B to claim the lapsed entry")
    assert store.ack(["e"], "B") == 1  # copy B published and acked
    assert store.consume("e", "B") == "ok"
    assert store.consume("e", "A") == "duplicate"
    assert store.consume("e", "B") == "ok"  # copy B redelivered by the broker: it runs


def test_a_copy_that_runs_before_the_ack_takes_the_entry(store: DelayStore) -> None:
    """Copy A ran before A's ack (or A died): the entry is gone, nobody publishes it again."""
    store.add("e", 0, "body")
    assert due_ids(store, "A", lease=0.05) == ["e"]
    assert store.consume("e", "A") == "ok"
    assert store.ack(["e"], "A") == 0
    assert store.count() == 0
    assert due_ids(store, "B") == []


def test_unknown_entries_run_rather_than_be_lost(store: DelayStore) -> None:
    assert store.consume("never-added", "c1") == "unknown"
    assert store.consume("never-added", "c2") == "duplicate"  # but only once


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_bodies_round_trip_exactly(store: DelayStore, value: Any) -> None:
    entry = "id:{x}*\n" + uuid.uuid4().hex  # ids are encoded in marker keys
    assert store.add(entry, 0, {"v": value, "k": [value]})
    (claimed,) = store.claim("w", 1, 30.0).entries
    assert claimed.entry_id == entry
    body = claimed.body
    assert body == {"v": value, "k": [value]}
    assert type(body["v"]) is type(value)
    assert store.ack([entry], "w") == 1
    assert store.consume(entry, "w") == "ok"


def test_every_key_has_a_ttl(store: DelayStore, kv: KV) -> None:
    client: Any = kv.store.client
    store.add("a", 0, 1)
    store.add("b", 3600, 2)
    due_ids(store, "w")
    store.ack(["a"], "w")
    store.add("c", 0, 3)
    due_ids(store, "w")  # c claimed, never acked
    store.consume("a", "w")
    store.consume("zz", "w")
    found = keys_under(kv)
    assert len(found) == 5, found  # due, bodies, claims, used:a, used:zz
    for key in found:
        ttl = client.pttl(key)
        assert 0 < ttl <= (3600 + DEFAULT_GRACE) * 1000 + 1000, (key, ttl)
    # the collections outlive the latest due entry by the grace
    assert client.pttl(store.due_key) > (3600 + DEFAULT_GRACE - 60) * 1000


def test_markers_expire(kv: KV) -> None:
    store = DelayStore(kv.store, marker_ttl=0.05)
    store.add("e", 0, 1)
    due_ids(store, "w")
    store.ack(["e"], "w")
    assert keys_under(kv) == [store.sent_key("e")]
    wait_for(lambda: not keys_under(kv), 2, "the sent marker to expire")


def test_remove_count_pending(store: DelayStore) -> None:
    store.add("a", 10, {"n": 1})
    store.add("b", 20, {"n": 2})
    assert store.count() == 2
    total, entries = store.pending(limit=1)
    assert total == 2 and [e.entry_id for e in entries] == ["a"]
    assert entries[0].claimed_by is None and 9 < entries[0].due_in <= 10
    assert store.remove("a") and not store.remove("a")
    assert store.count() == 1


@pytest.mark.parametrize("bad", [-1, float("nan"), True, "1"])
def test_bad_delays_are_refused(store: DelayStore, kv: KV, bad: Any) -> None:
    with pytest.raises(ValueError, match=r"delay .* of entry 'e'"):
        store.add("e", bad, 1)
    assert keys_under(kv) == []


@pytest.mark.parametrize("bad", ["", None, 7, "x" * 201])
def test_bad_entry_ids_are_refused(store: DelayStore, kv: KV, bad: Any) -> None:
    with pytest.raises(ValueError, match="entry id"):
        store.add(bad, 1, 1)
    assert keys_under(kv) == []


def test_a_body_that_is_not_json_is_refused(store: DelayStore, kv: KV) -> None:
    with pytest.raises(TypeError, match=r"delay store entry 'e'.*JSON"):
        store.add("e", 1, {"x": object()})
    assert keys_under(kv) == []


def test_each_operation_is_one_round_trip(store: DelayStore, kv: KV) -> None:
    store.add("warm", 0, 0)  # load the scripts
    due_ids(store, "w")
    store.ack(["warm"], "w")
    store.consume("warm", "w")
    with count_commands(kv) as sent:
        store.add("e", 0, 1)
        due_ids(store, "w")
        store.ack(["e"], "w")
        store.consume("e", "w")
    assert [c[0] for c in sent] == ["EVALSHA"] * 4
