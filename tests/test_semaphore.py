"""Semaphore contract tests: every backend (fakeredis, redis, cluster) through ``kv``."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from celery_kv import KV, LockNotAcquired
from celery_kv.primitives.semaphore import Semaphore

from .conftest import count_commands, keys_under, wait_for
from .test_lock import ODD_NAMES, pttl


def server_ms(kv: KV) -> float:
    return float(kv.store.run("server_time", [])) * 1000.0


def lease_end(kv: KV, sem: Semaphore) -> float:
    score = kv.client.zscore(sem.key, sem.token)
    assert score is not None
    return float(score)


def test_up_to_limit_holders(kv: KV) -> None:
    sems = [kv.semaphore("partner-api", limit=2, ttl=10) for _ in range(3)]
    assert sems[0].acquire() and sems[1].acquire()
    assert sems[2].acquire() is False
    assert sems[0].holders() == 2
    assert sems[0].release() is True
    assert sems[2].acquire() is True
    assert sems[0].holders() == 2
    assert [s.owned() for s in sems] == [False, True, True]


def test_reentry_refreshes_the_lease_without_a_second_slot(kv: KV) -> None:
    first = kv.semaphore("s", limit=1, ttl=10, token="task-1")
    assert first.acquire() and first.extend(1.0)
    again = kv.semaphore("s", limit=1, ttl=10, token="task-1")
    assert again.acquire() is True  # at the limit, but it is the same holder
    assert again.holders() == 1
    assert lease_end(kv, first) - server_ms(kv) > 8000


def test_release_by_non_holder_is_false(kv: KV) -> None:
    holder = kv.semaphore("s", limit=2, ttl=10)
    other = kv.semaphore("s", limit=2, ttl=10)
    assert holder.acquire()
    assert other.release() is False
    assert holder.owned() and holder.holders() == 1
    assert holder.release() is True
    assert holder.release() is False
    assert keys_under(kv) == []  # the last release leaves nothing behind


def test_extend_sets_an_absolute_lease_and_is_owner_checked(kv: KV) -> None:
    sem = kv.semaphore("s", limit=2, ttl=10)
    other = kv.semaphore("s", limit=2, ttl=10)
    assert sem.acquire()
    assert sem.extend(2.0) is True
    assert 1000 < lease_end(kv, sem) - server_ms(kv) <= 2000
    assert 1000 < pttl(kv, sem.key) <= 2000  # the key lives as long as its latest lease
    assert sem.extend(30.0) is True
    assert 20_000 < pttl(kv, sem.key) <= 30_000
    assert other.extend(60.0) is False
    assert other.holders() == 1


def test_key_expires_with_its_latest_lease(kv: KV) -> None:
    long = kv.semaphore("s", limit=3, ttl=20)
    short = kv.semaphore("s", limit=3, ttl=2)
    assert long.acquire() and short.acquire()
    assert 18_000 < pttl(kv, long.key) <= 20_000
    assert long.release()
    assert 0 < pttl(kv, short.key) <= 2000


def test_expired_lease_frees_its_slot(kv: KV) -> None:
    crashed = kv.semaphore("s", limit=1, ttl=0.2)
    assert crashed.acquire()
    nxt = kv.semaphore("s", limit=1, ttl=10)
    assert wait_for(nxt.acquire)
    assert not crashed.owned()
    assert crashed.release() is False and crashed.extend() is False


def test_crashed_holder_slot_returns_while_others_keep_the_key_busy(kv: KV) -> None:
    busy = kv.semaphore("s", limit=2, ttl=1.0, auto_renew=True)  # renews every ~0.33 s
    crashed = kv.semaphore("s", limit=2, ttl=0.6)  # never renews, never releases
    assert busy.acquire() and crashed.acquire()
    try:
        waiter = kv.semaphore("s", limit=2, ttl=10)
        assert waiter.acquire() is False
        started = server_ms(kv)
        assert waiter.acquire(blocking=True, timeout=10) is True
        assert server_ms(kv) - started < 5000  # the crashed lease, not the key's life
        assert busy.owned() and waiter.owned() and not crashed.owned()
        assert waiter.holders() == 2
    finally:
        busy.release()


def test_blocking_acquire_times_out_then_succeeds_on_release(kv: KV) -> None:
    holder = kv.semaphore("s", limit=1, ttl=30)
    assert holder.acquire()
    waiter = kv.semaphore("s", limit=1, ttl=10)
    started = time.monotonic()
    assert waiter.acquire(blocking=True, timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 3.0
    releaser = threading.Timer(0.2, holder.release)
    releaser.start()
    started = time.monotonic()
    try:
        assert waiter.acquire(blocking=True, timeout=10) is True
    finally:
        releaser.join()
    assert time.monotonic() - started < 5.0


def test_heartbeat_keeps_the_slot_past_its_ttl(kv: KV) -> None:
    sem = kv.semaphore("s", limit=1, ttl=0.5, auto_renew=True)
    assert sem.acquire()
    try:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            assert sem.owned()
            time.sleep(0.05)
        assert not sem.lost
    finally:
        assert sem.release()


def test_lost_slot_is_detected_and_reported(kv: KV) -> None:
    seen: list[Semaphore] = []
    sem = kv.semaphore("s", limit=1, ttl=0.3, auto_renew=True, on_lost=seen.append)
    assert sem.acquire()
    kv.client.delete(sem.key)
    assert wait_for(lambda: sem.lost)
    assert wait_for(lambda: seen == [sem])


def test_context_manager(kv: KV) -> None:
    with kv.semaphore("s", limit=1, ttl=10) as sem:
        assert sem.owned()
        with pytest.raises(LockNotAcquired) as info, kv.semaphore(
            "s", limit=1, ttl=10, blocking_timeout=0.1
        ):
            pytest.fail("entered a full semaphore")
        assert info.value.key == "s"
    assert not sem.owned() and keys_under(kv) == []


def test_each_warm_operation_is_one_command(kv: KV) -> None:
    sem = kv.semaphore("s", limit=1, ttl=10)
    other = kv.semaphore("s", limit=1, ttl=10)
    assert sem.acquire() and sem.extend() and sem.owned() and sem.holders() == 1
    assert sem.release() and sem.acquire()
    operations: list[Callable[[], Any]] = [
        sem.acquire, sem.extend, sem.owned, sem.holders, other.acquire, other.release,
        sem.release,
    ]
    for operation in operations:
        with count_commands(kv) as sent:
            operation()
        assert len(sent) == 1, (operation, sent)
        assert str(sent[0][0]).upper() == "EVALSHA"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, False, "2", None])
def test_bad_limit_is_refused_and_writes_nothing(kv: KV, bad: Any) -> None:
    with pytest.raises(ValueError) as info:
        kv.semaphore("partner-api", limit=bad)
    assert repr(bad) in str(info.value) and "partner-api" in str(info.value)
    assert keys_under(kv) == []


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "abc", None])
def test_bad_ttl_is_refused_and_writes_nothing(kv: KV, bad: Any) -> None:
    with pytest.raises(ValueError) as info:
        kv.semaphore("partner-api", limit=2, ttl=bad)
    assert repr(bad) in str(info.value) and "partner-api" in str(info.value)
    assert keys_under(kv) == []


def test_bad_blocking_timeout_is_refused(kv: KV) -> None:
    with pytest.raises(ValueError, match="-1"):
        kv.semaphore("s", limit=1, blocking_timeout=-1)
    with pytest.raises(TypeError):
        kv.semaphore(1.5, limit=1)  # type: ignore[arg-type]
    assert keys_under(kv) == []


def test_odd_names_work_and_do_not_collide(kv: KV) -> None:
    names = [*ODD_NAMES, ""]
    sems = [kv.semaphore(name, limit=1, ttl=10) for name in names]
    assert all(sem.acquire() for sem in sems)  # limit 1 each: none shares a key
    assert len({sem.key for sem in sems}) == len(names)
    assert all(sem.holders() == 1 for sem in sems)
    assert all(sem.release() for sem in sems)
    assert keys_under(kv) == []


def test_takeover_hands_a_slot_to_a_new_token(kv: KV) -> None:
    first = kv.semaphore("handover", limit=1, ttl=30, token="task-1")
    assert first.acquire()
    assert not kv.semaphore("handover", limit=1, ttl=30, token="other").acquire()
    runner = kv.semaphore("handover", limit=1, ttl=30, token="task-1#run")
    assert runner.acquire(takeover="task-1")
    assert runner.owned() and not first.owned()
    assert runner.holders() == 1
