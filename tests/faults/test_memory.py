"""A full coordination Redis: ``maxmemory`` under ``noeviction``, and eviction under
``allkeys-lru``. Another application's keys (``filler:*``, outside the prefix) fill it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from celery_kv import CoordinationFull
from celery_kv.celery.delays import delay_store_for
from celery_kv.celery.install import installed
from celery_kv.celery.keys import short_key
from celery_kv.testing import RedisServer
from tests.celery.apps import now
from tests.celery.conftest import Env
from tests.faults.harness import BASE_CONF, Scenario, check_ledger, plan
from tests.faults.tasks import register

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.timeout(300)]

FULL = 5.0  # seconds the memory stays full: longer than a lease (3 s)
CHUNK = "x" * 16384


def fill(client: redis.Redis, until_refused: bool) -> int:
    """Write filler keys until Redis refuses one (noeviction), or 16 of them."""
    written = 0
    pipe_size = 16
    while True:
        pipe = client.pipeline(transaction=False)
        for _ in range(pipe_size):
            pipe.set(f"filler:{uuid.uuid4().hex}", CHUNK)
        try:
            pipe.execute()
        except redis.exceptions.OutOfMemoryError:
            return written
        written += pipe_size
        if not until_refused:
            return written


def free(client: redis.Redis) -> None:
    for batch in iter(lambda: list(client.scan_iter(match="filler:*", count=1000))[:1000], []):
        client.unlink(*batch)


def clear_error(text: str) -> bool:
    return bool(re.search(r"OOM|maxmemory|memory", text))


def test_maxmemory_full_under_noeviction(scenario: Callable[..., Scenario],
                                         coordination: RedisServer) -> None:
    """A new call gets a clear error (``CoordinationFull``, naming the memory); a task
    already queued waits and runs once memory frees, so none fails; no claim of a failed
    task outlives its failure; everything recovers once memory frees (the README, "A
    full Redis")."""
    client = redis.Redis.from_url(coordination.url, decode_responses=True)
    client.config_set("maxmemory-policy", "noeviction")
    s = scenario("maxmemory noeviction", coordination.url, client)
    with s.producing(plan(s.tag)):
        s.wait_moment()
        s.fault_at()
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 2**20)
        written = fill(client, until_refused=True)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("filler:probe", CHUNK)
        deadline = time.monotonic() + FULL
        while time.monotonic() < deadline:  # full for longer than a lease: what frees
            written += fill(client, until_refused=True)  # is taken again at once
            time.sleep(0.02)
        s.poll()
        failed_while_full = [x.result.id for x in s.sent if x.state == "FAILURE"]
        held_while_full = "\n".join(s.contents().values())
        free(client)
    s.figures.notes.append(f"{written} filler keys of 16 KB filled it")
    s.settle()
    s.send_again()
    f = s.measure()
    failed_ids = [x.result.id for x in s.sent if x.state == "FAILURE"]
    after = "\n".join(s.contents().values())
    assert [i for i in failed_while_full if i in held_while_full] == [], \
        "a failed task's claim outlived its failure (memory still full)"
    assert [i for i in failed_ids if i in after] == [], \
        "a failed task's claim outlived its failure"
    unclear = [r for r in f.refusals + f.failures if not clear_error(r)]
    assert not unclear, f"errors that do not say Redis is full: {unclear}"
    assert f.refused, "new calls were refused while Redis was full"
    assert all(isinstance(x.error, CoordinationFull) for x in s.sent if x.error), f.detail()
    assert f.failed == 0, f.detail()
    assert f.lost == 0, f.detail()
    assert f.ran_twice == f.wrong == 0, f.detail()
    assert not f.violations, f.detail()
    again = [x for x in s.sent if x.phase == "again"]
    assert again and all(x.state == "SUCCESS" for x in again), "full recovery"


@pytest.fixture
def evictions(coordination: RedisServer) -> Iterator[list[str]]:
    """Keys evicted from the coordination Redis (keyspace notifications)."""
    client = redis.Redis.from_url(coordination.url, decode_responses=True)
    client.config_set("notify-keyspace-events", "Ee")
    found: list[str] = []
    pubsub = client.pubsub()
    pubsub.subscribe(**{"__keyevent@0__:evicted": lambda m: found.append(m["data"])})
    thread = pubsub.run_in_thread(sleep_time=0.01, daemon=True)
    yield found
    thread.stop()
    thread.join(timeout=5)
    pubsub.close()


def doctor(url: str, prefix: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "celery", "kv", "doctor", "--url", url,
                           "--prefix", prefix, "--json"], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_allkeys_lru_eviction(scenario: Callable[..., Scenario], coordination: RedisServer,
                              evictions: list[str]) -> None:
    """``celery kv doctor`` warns; the damage is what the README's "breaks when" column
    says of eviction: an idempotent call runs twice only if its record was evicted,
    singleton runs overlap or a limit is exceeded only if such keys were evicted, a
    debounced or keep-latest call is answered by an older run (or runs of its key
    overlap) only if its burst was evicted; no result is wrong and nothing is lost but
    deferrals waiting in the delay store and parked waiters, if their keys were evicted."""
    client = redis.Redis.from_url(coordination.url, decode_responses=True)
    client.config_set("maxmemory-policy", "allkeys-lru")
    s = scenario("allkeys-lru eviction", coordination.url, client)
    report = doctor(coordination.url, s.env.prefix)
    policy = next(c for c in report["checks"] if c["name"].startswith("maxmemory-policy"))
    assert policy["status"] == "WARNING" and "allkeys-lru" in policy["detail"], policy
    with s.producing(plan(s.tag)):
        s.wait_moment()
        s.fault_at()
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 2**20)
        deadline = time.monotonic() + FULL
        written = 0
        while time.monotonic() < deadline:  # keep the pressure on for the whole fault
            written += fill(client, until_refused=False)
            time.sleep(0.02)
    client.config_set("maxmemory", 0)
    s.settle(may_be_lost=lambda: s.stored_before(now(s.ledger)))
    s.send_again()
    f = s.measure(exact=False, forgets=True)
    ours = [k for k in evictions if k.startswith(f"{s.env.prefix}:")]
    kinds = sorted({k.split(":")[1] for k in ours})
    f.notes.append(f"evicted {len(evictions)} keys, {len(ours)} of them celery-kv's "
                   f"(kinds: {', '.join(kinds)}); {written} filler keys written")
    kv = installed(s.app).kv
    records = {}
    for x in s.sent:
        if x.call.unit and "idempotency_key" in x.call.options:
            policy_ = s.app.tasks[x.call.task]._kv_policy
            records[x.call.unit] = kv.store.keys.key(
                "idem", (policy_.namespace, short_key(x.call.options["idempotency_key"])))
    twice = [u.split(" x")[0] for u in f.twice]
    unexplained = [u for u in twice if records.get(u) not in ours]

    def burst(task: str, group: object) -> str:
        return kv.store.keys.key("burst", (task, str(group)))

    forgotten = [f"{x.call.task}{x.call.args[1:]} {x.result.id}" for x in s.forgotten
                 if burst(x.call.task, x.call.args[1]) not in ours]
    assert ours, "the fault evicted coordination keys"
    assert not unexplained, f"ran twice though its record was not evicted: {unexplained}"
    assert not forgotten, f"answered by an older run though no burst was evicted: {forgotten}"
    # deferrals waiting in the delay store, and parked concurrency waiters, are lost with
    # their keys, if those were evicted
    store = delay_store_for(s.app)
    evicted_store = ({store.due_key, store.bodies_key} & set(ours)
                     or any(k.split(":")[1] == "conc" for k in ours))
    stored = s.stored_before(now(s.ledger)) if evicted_store else set()
    lost = [d for d in f.lost_detail if not any(i in d for i in stored)]
    assert not lost, f"lost, though not in an evicted delay store: {lost}\n{f.detail()}"
    assert f.wrong == 0, f.detail()
    assert f.failed == f.refused == f.no_ttl == 0, f.detail()
    breaks = {"burst": "burst", "overlap": "lock", "running at once": "sem", "admitted": "rl"}
    for violation in check_ledger(s.runs()):
        kind = next(k for word, k in breaks.items() if word in violation)
        assert kind in kinds, f"{violation}, though no {kind} key was evicted"


def test_a_call_refused_by_a_full_redis_names_the_task_and_the_key(
    infra: RedisServer, coordination: RedisServer
) -> None:
    """The caller's error says Redis is full and which task and key it refused; nothing
    is published and nothing left in Redis. (No workers: the refusal happens in
    ``apply_async``.)"""
    env = Env(broker=infra.url.replace("/0", "/1"), backend=infra.url.replace("/0", "/2"),
              kv=coordination.url, fx=infra.url.replace("/0", "/4"), prefix="full",
              conf=BASE_CONF)
    app = env.app("fault-full")
    register(app, env.fx)
    client = redis.Redis.from_url(coordination.url)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        with pytest.raises(Exception) as refused:
            app.tasks["f.idem"].apply_async(("t", 1), idempotency_key="order-full")
    finally:
        client.config_set("maxmemory", 0)
    broker = redis.Redis.from_url(env.broker)
    assert broker.llen("celery") == 0, "a refused call publishes nothing"
    assert list(client.scan_iter(match="full:*")) == [], "a refused call leaves no key"
    message = str(refused.value)
    assert clear_error(message), message
    assert "f.idem" in message and "order-full" in message, message
