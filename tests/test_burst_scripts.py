"""The burst scripts' branches that a worker run seldom reaches, one script call at a time.

Each test drives ``task_burst_*.lua`` through ``Store.run_phase`` on a real redis-server,
the way the enqueue and execution guards call them, and reads the burst hash back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_kv.primitives._arguments import text
from celery_kv.store import Step, Store
from celery_kv.testing import RedisServer

CLAIM, QUEUED, LEASE = 10_000, 3_600_000, 30_000


@pytest.fixture
def store(redis_srv: RedisServer) -> Iterator[Store]:
    client = redis.Redis.from_url(redis_srv.url)
    made = Store(client, prefix="bt" + uuid.uuid4().hex[:8])
    yield made
    for key in client.scan_iter(match=f"{made.prefix}:*"):
        client.unlink(key)


def keys(store: Store) -> tuple[str, str]:
    burst = store.keys.key("burst", ("t.burst", "k"))
    return burst, burst + ":fence"


def reply(store: Store, script: str, keys: tuple[str, ...], args: tuple[Any, ...]) -> list[Any]:
    answer = store.run_phase("test", [Step(script, keys, args)])
    return [text(v) if isinstance(v, bytes) else v for v in answer.replies[-1]]


def arm(store: Store, task_id: str, nonce: str, x: int, wait: int = 5_000,
        edge: str = "trailing") -> list[Any]:
    return reply(store, "task_burst_arm", keys(store)[:1], (
        task_id, nonce, wait, 0, edge, json.dumps([["tag", x], {}]), CLAIM, 0, QUEUED))


def fire(store: Store, task_id: str, token: str, msg: str = "", follows: str = "",
         x: int = 0, wait: int = 5_000) -> list[Any]:
    return reply(store, "task_burst_fire", keys(store), (
        token, task_id, LEASE, QUEUED, msg, follows, json.dumps([["tag", x], {}]), wait, 0,
        "trailing", QUEUED, QUEUED, "", CLAIM))


def fields(store: Store) -> dict[str, str]:
    raw = store.client.hgetall(keys(store)[0])
    return {text(k): text(v) for k, v in raw.items()}


def test_a_retried_call_is_counted_once(store: Store) -> None:
    first = arm(store, "A", "n1", 1)
    assert first[0] == "ok" and first[2] == "A"
    assert arm(store, "A", "n1", 1)[:3:2] == ["ok", "A"], "a retried start answers the same"
    absorbed = arm(store, "B", "n2", 2)
    again = arm(store, "B", "n2", 2)
    assert absorbed[0] == again[0] == "deny" and absorbed[1] == again[1] == "A"
    assert absorbed[3] == again[3] == 2
    assert fields(store)["pn"] == "2"


def test_a_pending_burst_whose_message_is_lost_is_adopted_under_its_own_id(
    store: Store
) -> None:
    arm(store, "A", "n1", 1)  # never confirmed: the producer died before its publish
    store.client.hset(keys(store)[0], "pexp", 0)  # the claim lease ran out
    adopted = arm(store, "B", "n2", 2)
    assert adopted[0] == "ok" and adopted[2] == "A" and adopted[3] == "n2"
    assert adopted[4] == "adopted"
    assert fire(store, "A", "A#run:1", msg="n1")[:2] == ["deny", "stale"], \
        "a message of the old nonce that turns up is stale"
    store.client.hset(keys(store)[0], "pdue", 0)
    fired = fire(store, "A", "A#run:2", msg="n2")
    assert fired[0] == "ok" and json.loads(fired[2]) == [["tag", 2], {}]


def test_an_early_message_waits_and_a_busy_key_waits_for_its_run(store: Store) -> None:
    arm(store, "A", "n1", 1)
    early = fire(store, "A", "A#run:1", msg="n1")
    assert early[:2] == ["deny", "early"] and 0 < early[2] <= 5_000
    store.client.hset(keys(store)[0], "pdue", 0)
    assert fire(store, "A", "A#run:1", msg="n1")[0] == "ok"
    arm(store, "B", "n2", 2, wait=0)  # the next burst, due at once
    busy = fire(store, "B", "B#run:1", msg="n2")
    assert busy[:2] == ["deny", "busy"] and busy[3] == "A"
    assert fire(store, "A", "A#run:9", msg="n1")[:2] == ["deny", "self"]
    reply(store, "task_burst_finish", keys(store)[:1], ("A#run:1", "A", "", QUEUED))
    assert fire(store, "B", "B#run:1", msg="n2")[0] == "ok"


def test_a_follower_waits_then_hears_the_run_is_over(store: Store) -> None:
    arm(store, "A", "n1", 1, wait=0)
    assert fire(store, "F", "F#run:1", follows="A")[:2] == ["deny", "follow"]
    assert fire(store, "A", "A#run:1", msg="n1")[0] == "ok"
    assert fire(store, "F", "F#run:1", follows="A")[:2] == ["deny", "follow"]
    reply(store, "task_burst_finish", keys(store)[:1], ("A#run:1", "A", "", QUEUED))
    assert fire(store, "F", "F#run:1", follows="A")[:2] == ["deny", "followed"]
    assert store.client.exists(keys(store)[0]) == 0, "an idle burst leaves no hash"


def test_a_message_without_a_header_joins_at_the_worker(store: Store) -> None:
    arm(store, "A", "n1", 1)
    joined = fire(store, "S", "S#run:1", x=7)  # send_task: no nonce, no follow
    assert joined[:2] == ["deny", "follow"] and joined[3] == "A"
    assert json.loads(fields(store)["pargs"]) == [["tag", 7], {}]
    assert fields(store)["pn"] == "2"


def test_every_key_has_a_ttl(store: Store) -> None:
    arm(store, "A", "n1", 1, wait=0)
    fire(store, "A", "A#run:1", msg="n1")
    for key in keys(store):
        assert store.client.pttl(key) > 0, key
