"""Fair concurrency slots on real workers: parked waiters, weighted round robin across keys,
FIFO within a key, the limits never exceeded, SIGKILLed holders and grant publishers.

Tasks: tests/celery/fair_apps.py. One worker of 6 processes serves the module (4 slots
run while the others park); the SIGKILL tests add a victim worker on a queue of its own.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_kv import ConcurrencyWaitersFull
from celery_kv.celery.features.concurrency import pool_state, set_weight

from .conftest import Env, Worker, events
from .conftest import wait_for as _wait_for

VICTIM_QUEUE = "fair_victim"


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    return _wait_for(condition, timeout, what, interval=0.05)


@pytest.fixture(scope="module")
def wide_worker(celery_env: Env) -> Iterator[Worker]:
    started = Worker(celery_env, concurrency=6)
    try:
        yield started
    finally:
        started.stop()


def starts(fx: Any, tag: str) -> list[str]:
    return list(fx.lrange(f"fx:{tag}:starts", 0, -1))


def runs(fx: Any, tag: str) -> dict[str, int]:
    return {k: int(v) for k, v in fx.hgetall(f"fx:{tag}:runs").items()}


def peak(intervals: list[dict[str, Any]]) -> int:
    points = sorted([(e["start"], 1) for e in intervals] + [(e["end"], -1) for e in intervals])
    running = top = 0
    for _, step in points:
        running += step
        top = max(top, running)
    return top


def waiting(app: Celery, task: str, key: str) -> int:
    return pool_state(app, task).get(key, {}).get("waiting", 0)


def test_a_flood_of_one_tenant_does_not_hold_back_another(
    wide_worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.fair_ab"]  # 4 per key, 4 in total
    flood = [task.apply_async((tag, "a", i, 0.01)) for i in range(500)]
    # the flood's messages have all reached the worker: they wait in Redis, not the broker
    wait_for(lambda: waiting(client_app, "t.fair_ab", f"{tag}:a") + len(starts(fx, tag))
             >= 496, 60, "tenant a's backlog to be parked")
    before = len(starts(fx, tag))
    quiet = [task.apply_async((tag, "b", i, 0.01)) for i in range(5)]
    for result in quiet:
        result.get(timeout=30)
    journal = starts(fx, tag)
    last_b = max(n for n, entry in enumerate(journal) if entry.startswith("b:"))
    a_meanwhile = sum(entry.startswith("a:") for entry in journal[before:last_b])
    print(f"tenant a started {a_meanwhile} runs while b's 5 started")
    assert a_meanwhile < 20, f"tenant a started {a_meanwhile} runs before b's 5 were done"
    for result in flood:
        result.get(timeout=60)
    assert runs(fx, tag) == {f"{t}:{i}": 1 for t, n in (("a", 500), ("b", 5))
                             for i in range(n)}, "every call ran exactly once"
    intervals = events(fx, tag)
    assert peak(intervals) <= 4


def test_weights_split_the_slots(
    wide_worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.fair_w"]  # 4 per key, 4 in total
    set_weight(client_app, "t.fair_w", f"{tag}:a", 3)
    results = []
    for i in range(120):
        results.append(task.apply_async((tag, "a", i, 0.1)))
        if i < 60:
            results.append(task.apply_async((tag, "b", i, 0.1)))
    for result in results:
        result.get(timeout=60)
    journal = starts(fx, tag)
    last_a = max(n for n, entry in enumerate(journal) if entry.startswith("a:"))
    window = Counter(entry[0] for entry in journal[8:last_a + 1])  # both have work here
    print(f"weights 3:1, starts while both wait: {dict(window)}")
    assert 2.7 <= window["a"] / window["b"] <= 3.3, window
    assert peak(events(fx, tag)) <= 4


def test_never_over_the_limit_per_key_nor_in_total(
    wide_worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.fair_cap"]  # 2 per key, 3 in total
    results = [task.apply_async((tag, tenant, i, 0.1)) for i in range(10) for tenant in "xyz"]
    for result in results:
        result.get(timeout=60)
    intervals = events(fx, tag)
    assert len(intervals) == 30
    assert peak(intervals) == 3, "the total is reached, never passed"
    for tenant in "xyz":
        assert peak([e for e in intervals if e["key"] == tenant]) <= 2


def test_within_one_key_runs_start_in_enqueue_order(
    wide_worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.fair_fifo"]  # 1 per key
    results = [task.apply_async((tag, "k", 0, 2.0))]  # holds the slot while all park
    wait_for(lambda: starts(fx, tag), 10, "the first run to hold the slot")
    for i in range(1, 12):
        results.append(task.apply_async((tag, "k", i, 0.01)))
        # one message at a time reaches the worker: its processes park in this order
        wait_for(lambda i=i: waiting(client_app, "t.fair_fifo", f"{tag}:k") >= i, 10,
                 f"call {i} to be parked")
    for result in results:
        result.get(timeout=30)
    assert starts(fx, tag) == [f"k:{i}" for i in range(12)]


def test_past_max_waiting_the_call_fails_naming_task_key_and_limit(
    wide_worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.fair_full"]  # 1 per key, at most 2 waiting
    holder = task.apply_async((tag, "k", 0, 1.5))
    wait_for(lambda: starts(fx, tag), 10, "the holder to start")
    parked = [task.apply_async((tag, "k", i)) for i in (1, 2)]
    wait_for(lambda: waiting(client_app, "t.fair_full", f"{tag}:k") == 2, 10,
             "two waiters")
    refused = task.apply_async((tag, "k", 3))
    with pytest.raises(ConcurrencyWaitersFull) as caught:
        refused.get(timeout=10)  # rebuilt from the result backend's JSON
    message = str(caught.value)
    assert "t.fair_full" in message and f"{tag}:k" in message and "2" in message
    assert [r.get(timeout=10) for r in (holder, *parked)] == [0, 1, 2]


def victim(env: Env) -> Worker:
    return Worker(dataclasses.replace(env, conf={**env.conf, "ckv_fair_stall": True}),
                  concurrency=2, queues=VICTIM_QUEUE)


def kill(worker: Worker) -> None:
    os.killpg(worker.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)
    worker.stop()


@pytest.mark.parametrize("moment", ["holding a slot", "about to publish a grant"])
def test_a_sigkilled_worker_loses_no_waiter_and_runs_none_twice(
    wide_worker: Worker, celery_env: Env, client_app: Celery, fx: Any, tag: str, moment: str
) -> None:
    task = client_app.tasks["t.fair_kill"]  # 1 per key, lease 2 s
    doomed = victim(celery_env)
    try:
        fx.delete("fx:fair:stalled")
        holding = moment == "holding a slot"
        task.apply_async((tag, "k", 0, 60.0 if holding else 1.5), queue=VICTIM_QUEUE)
        wait_for(lambda: starts(fx, tag), 15, "the victim to hold the slot")
        waiters = [task.apply_async((tag, "k", i)) for i in range(1, 6)]
        wait_for(lambda: waiting(client_app, "t.fair_kill", f"{tag}:k") == 5, 15,
                 "the waiters to be parked")
        if not holding:
            wait_for(lambda: fx.get("fx:fair:stalled"), 15,
                     "the victim to be about to publish the first grant")
        kill(doomed)
        began = time.monotonic()
        assert [r.get(timeout=30) for r in waiters] == [1, 2, 3, 4, 5]
        assert time.monotonic() - began < 20
    finally:
        doomed.stop()
    assert {k: v for k, v in runs(fx, tag).items() if k != "k:0"} == \
        {f"k:{i}": 1 for i in range(1, 6)}, "every waiter ran, once"
    assert waiting(client_app, "t.fair_kill", f"{tag}:k") == 0
