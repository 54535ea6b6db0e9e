"""Rate-limit reservations, overrides and throttles on real workers: two ``celery worker``
processes (prefork, -c 2 each) on a queue of their own.

Each deferral is a broker countdown today (or H1's delay store): either way a task that
must wait is deferred once, to its own reserved slot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_kv import RateLimitExceeded
from celery_kv.celery import limits
from tests.celery.conftest import Env, Worker, events, workers_on
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]

QUEUE = "rlr2"


@pytest.fixture(scope="module")
def two_workers(celery_env: Env) -> Iterator[list[Worker]]:
    """Two worker processes, prefork -c 2 each, consuming their own queue."""
    with workers_on(celery_env, QUEUE) as workers:
        yield workers


def server_now(fx: redis.Redis) -> float:
    sec, usec = fx.time()
    return float(sec) + usec / 1e6


def first_limit(task: Any) -> Any:
    return limits.task_limit(task)


def test_a_backlog_of_200_at_20_per_second_is_deferred_once_each_in_order(
    two_workers: list[Worker], client_app: Celery, fx: redis.Redis, tag: str
) -> None:
    task = client_app.tasks["t.rlr_backlog"]  # 20/s per tag, GCRA, burst 20
    results = [task.apply_async((tag, i), queue=QUEUE) for i in range(200)]
    assert [r.get(timeout=90) for r in results] == list(range(200))
    ran = events(fx, tag)
    assert sorted(e["i"] for e in ran) == list(range(200)), "every task ran once"
    starts = sorted(e["start"] for e in ran)
    span = starts[-1] - starts[0]
    # ideal: 20 at once, then 180 at 20/s = 9 s (10 s for 200 at 20/s); within 1.1x
    assert span <= 11.0, f"200 tasks took {span:.2f}s from the first start"
    assert max(e["denials"] for e in ran) <= 1, "a task was deferred more than once"
    assert sum(e["denials"] for e in ran) >= 170, "the burst of 20 ran at once, the rest waited"
    assert all(e["retries"] == 0 for e in ran), "no max_retries used"
    # the limit held, every run counted at its slot: n runs span >= (n - 20) / 20 s
    # GCRA bound over the slots: k runs within I seconds number at most 20 + 20 * I
    lowest = None
    for k, at in enumerate(sorted(e["at"] for e in ran)):
        g = k * 0.05 - at
        lowest = g if lowest is None else min(lowest, g)
        assert g - lowest <= 19 * 0.05 + 1e-6, f"over burst + rate at run {k}"
    # start order follows enqueue order: slots are taken in the order the start phases
    # ran, which only the 4 processes' prefetch (4 x 2 each per worker) can reorder
    by_slot = [e["i"] for e in sorted(ran, key=lambda e: (e["at"], e["i"]))]
    displacement = max(abs(rank - i) for rank, i in enumerate(by_slot))
    assert displacement <= 24, f"slot order strays {displacement} places from enqueue order"
    print(f"\nbacklog 200 @ 20/s: {span:.2f}s from first to last start, "
          f"{sum(e['denials'] for e in ran)} deferrals, order displacement {displacement}, "
          f"hosts {Counter(e['host'] for e in ran)}")


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window"])
def test_windows_reserve_slots_that_keep_every_window_within_its_limit(
    two_workers: list[Worker], client_app: Celery, fx: redis.Redis, tag: str, algorithm: str
) -> None:
    task = client_app.tasks[f"t.rlr_{algorithm}"]  # 4/s per tag
    results = [task.apply_async((tag, i), queue=QUEUE) for i in range(12)]
    assert sorted(r.get(timeout=30) for r in results) == list(range(12))
    ran = events(fx, tag)
    assert max(e["denials"] for e in ran) <= 1
    per_window = Counter(int(e["at"]) for e in ran)
    assert max(per_window.values()) <= 4, per_window
    for e in ran:
        assert e["start"] >= e["at"] - 0.005, "a run started before its slot"
    if algorithm == "fixed_window":  # a reserved slot is the start of its window
        assert all(round(e["at"] * 1e6) % 1_000_000 == 0 for e in ran if e["denials"])


def test_an_override_changes_one_tenants_rate_on_running_workers_within_a_second(
    two_workers: list[Worker], client_app: Celery, fx: redis.Redis, tag: str
) -> None:
    task = client_app.tasks["t.rlr_tenant"]  # 1/m per tenant; past 0.5 s of delay: fails
    pids = [w.pid for w in two_workers]
    vip, plain = f"{tag}-vip", f"{tag}-plain"
    for tenant in (vip, plain):
        assert task.apply_async((tag, tenant, 0), queue=QUEUE).get(timeout=20) == 0
        with pytest.raises(RateLimitExceeded):
            task.apply_async((tag, tenant, 1), queue=QUEUE).get(timeout=20)
    limits.set_override(task, vip, "100/s")
    set_at = server_now(fx)
    results = [task.apply_async((tag, vip, i), queue=QUEUE) for i in range(2, 12)]
    assert sorted(r.get(timeout=20) for r in results) == list(range(2, 12))
    late = max(e["start"] for e in events(fx, tag) if e["tenant"] == vip)
    assert late - set_at <= 1.0, f"the override took {late - set_at:.2f}s to apply"
    with pytest.raises(RateLimitExceeded):
        task.apply_async((tag, plain, 2), queue=QUEUE).get(timeout=20)
    assert [w.pid for w in two_workers] == pids and all(
        w.process.poll() is None for w in two_workers), "no worker restarted"
    assert limits.unset_override(task, vip)


def test_kv_throttle_holds_back_every_workers_next_admission(
    two_workers: list[Worker], client_app: Celery, fx: redis.Redis, tag: str
) -> None:
    task = client_app.tasks["t.rlr_429"]  # 100/s per tag; the first run throttles 1.5 s
    assert task.apply_async((tag, 0, "call"), queue=QUEUE).get(timeout=20) == 0
    (first,) = events(fx, tag)
    until = first["throttled_until"]
    assert until >= first["start"] + 1.5 - 0.01
    results = [task.apply_async((tag, i), queue=QUEUE) for i in range(1, 13)]
    assert sorted(r.get(timeout=20) for r in results) == list(range(1, 13))
    later = [e for e in events(fx, tag) if e["i"]]
    assert min(e["at"] for e in later) >= until - 1e-6
    assert min(e["start"] for e in later) >= until - 0.005
    print(f"\nthrottled runs on hosts {Counter(e['host'] for e in later)}")


def test_raising_throttled_defers_the_run_and_holds_back_the_others(
    two_workers: list[Worker], client_app: Celery, fx: redis.Redis, tag: str
) -> None:
    task = client_app.tasks["t.rlr_429"]
    raised = task.apply_async((tag, 0, "raise"), queue=QUEUE)
    wait_for(lambda: fx.get(f"fx:{tag}:raised_at"), 20, "the 429")
    raised_at = float(fx.get(f"fx:{tag}:raised_at") or 0)
    others = [task.apply_async((tag, i), queue=QUEUE) for i in range(1, 7)]
    assert raised.get(timeout=20) == 0
    assert sorted(r.get(timeout=20) for r in others) == list(range(1, 7))
    ran = {e["i"]: e for e in events(fx, tag)}
    assert ran[0]["retries"] == 0 and ran[0]["denials"] == 1, "deferred, not retried"
    assert ran[0]["start"] >= raised_at + 1.5 - 0.01
    # the throttle was set just before the raise: every admission after it waits it out
    assert min(e["at"] for e in ran.values()) >= raised_at + 1.5 - 0.01


def test_a_revoked_reservation_gives_its_slot_back(
    two_workers: list[Worker], client_app: Celery, fx: redis.Redis, tag: str
) -> None:
    """A revoked message is discarded when it is delivered, at its slot (from the delay
    store, or a worker's ETA timer): its unit is given back then, so the next task is
    admitted at once instead of one interval after the revoked slot."""
    task = client_app.tasks["t.rlr_slow"]  # 1/s per tag, GCRA burst 1
    limit = first_limit(task)
    state = limit.redis_key(tag)
    client = limit.store.client
    record = limit.store.keys.key("rl", limit.scope, "!r", "")[:-1]  # the records' prefix
    assert task.apply_async((tag, 0), queue=QUEUE).get(timeout=20) == 0
    admitted = int(client.get(state))
    held = task.apply_async((tag, 1), queue=QUEUE)
    wait_for(lambda: int(client.get(state) or 0) > admitted, 10, "the reservation")
    reserved = int(client.get(state))  # its slot + one interval
    slot = reserved - 1_000_000
    assert client.keys(record + "*"), "the reservation is recorded under its task id"
    client_app.control.revoke(held.id)
    wait_for(lambda: int(client.get(state) or 0) <= slot, 10, "the slot to be given back")
    assert not client.keys(record + "*"), "the record went with it"
    assert task.apply_async((tag, 2), queue=QUEUE).get(timeout=20) == 2
    ran = {e["i"]: e for e in events(fx, tag)}
    assert set(ran) == {0, 2}, "the revoked task never ran"
    assert slot / 1e6 - 0.005 <= ran[2]["at"] < reserved / 1e6 - 0.2, (
        "admitted at once, not one interval after the revoked slot")
