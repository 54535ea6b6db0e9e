"""Lock contract tests: every backend (fakeredis, redis, cluster) through the ``kv`` fixture."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from celery_kv import KV, LockNotAcquired
from celery_kv.primitives.lock import Lock, break_lock, describe, iter_locks

from .conftest import count_commands, keys_under, wait_for


def pttl(kv: KV, key: str) -> int:
    return int(kv.client.pttl(key))


# -- acquire, release, extend, owned ---------------------------------------------


def test_acquire_release_owned(kv: KV) -> None:
    lock = kv.lock("invoice:42", ttl=10)
    assert lock.fence is None and not lock.owned()
    assert lock.acquire() is True
    assert lock.owned() and isinstance(lock.fence, int)
    assert lock.holder == lock.token
    assert 0 < pttl(kv, lock.key) <= 10_000
    assert lock.release() is True
    assert not lock.owned() and lock.fence is None
    assert lock.release() is False  # no longer ours
    assert lock.key not in keys_under(kv)


def test_contended_acquire_reports_holder_and_ttl(kv: KV) -> None:
    first = kv.lock("x", ttl=10)
    second = kv.lock("x", ttl=10)
    assert first.acquire()
    assert second.acquire() is False
    assert second.holder == first.token
    assert second.holder_ttl is not None and 8.0 < second.holder_ttl <= 10.0
    assert second.fence is None and not second.owned()


def test_release_by_non_owner_leaves_the_lock(kv: KV) -> None:
    owner = kv.lock("x", ttl=10)
    other = kv.lock("x", ttl=10)
    assert owner.acquire()
    assert other.release() is False
    assert owner.owned()
    assert describe(kv.store, "x") is not None


def test_extend_sets_an_absolute_ttl(kv: KV) -> None:
    lock = kv.lock("x", ttl=10)
    assert lock.acquire()
    assert lock.extend(2.0) is True
    assert 1000 < pttl(kv, lock.key) <= 2000  # set to 2 s, not 10 + 2
    assert lock.extend(30.0) is True
    assert 20_000 < pttl(kv, lock.key) <= 30_000
    assert lock.extend() is True  # default: the lock's ttl
    assert 8000 < pttl(kv, lock.key) <= 10_000


def test_extend_by_non_owner_fails_and_changes_nothing(kv: KV) -> None:
    owner = kv.lock("x", ttl=10)
    other = kv.lock("x", ttl=10)
    assert owner.acquire()
    assert other.extend(60) is False
    assert pttl(kv, owner.key) <= 10_000
    released = kv.lock("y", ttl=10)
    assert released.acquire() and released.release()
    assert released.extend() is False


def test_reentry_by_the_same_token_keeps_the_fence_and_refreshes_the_ttl(kv: KV) -> None:
    first = kv.lock("x", ttl=10, token="task-1")
    assert first.acquire()
    assert first.extend(1.0)
    again = kv.lock("x", ttl=10, token="task-1")  # a Celery retry: same task id
    assert again.acquire() is True
    assert again.fence == first.fence
    assert pttl(kv, first.key) > 8000


def test_fences_increase_across_holders(kv: KV) -> None:
    fences = []
    for _ in range(5):
        lock = kv.lock("x", ttl=10)
        assert lock.acquire()
        fences.append(lock.fence)
        assert lock.release()
    assert all(isinstance(f, int) for f in fences)
    assert fences == sorted(set(fences))  # strictly increasing


def test_fence_counter_has_a_long_ttl_refreshed_on_acquire(kv: KV) -> None:
    lock = kv.lock("x", ttl=10, fence_ttl=100)
    assert lock.acquire() and lock.release()
    assert 90_000 < pttl(kv, lock.fence_key) <= 100_000
    kv.client.pexpire(lock.fence_key, 5000)
    assert lock.acquire()
    assert 90_000 < pttl(kv, lock.fence_key) <= 100_000


def test_fences_keep_increasing_after_the_counter_expires(kv: KV) -> None:
    lock = kv.lock("x", ttl=10)
    assert lock.acquire()
    old = lock.fence
    assert old is not None and lock.release()
    kv.client.delete(lock.fence_key)  # as if fence_ttl ran out
    other = kv.lock("x", ttl=10)
    assert other.acquire()
    assert other.fence is not None and other.fence > old


def test_fence_starts_from_server_time_in_microseconds(kv: KV) -> None:
    lock = kv.lock("x", ttl=10)
    before = float(kv.store.run("server_time", []))
    assert lock.acquire() and lock.fence is not None
    after = float(kv.store.run("server_time", []))
    assert before * 1e6 - 1 <= lock.fence <= after * 1e6 + 1


def test_lock_expires_after_its_ttl(kv: KV) -> None:
    holder = kv.lock("x", ttl=0.2)
    assert holder.acquire()
    nxt = kv.lock("x", ttl=10)
    assert wait_for(nxt.acquire)
    assert not holder.owned()
    assert holder.release() is False


# -- blocking ----------------------------------------------------------------------


def test_blocking_acquire_gives_up_after_the_timeout(kv: KV) -> None:
    holder = kv.lock("x", ttl=10)
    assert holder.acquire()
    waiter = kv.lock("x", ttl=10)
    started = time.monotonic()
    assert waiter.acquire(blocking=True, timeout=0.3) is False
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 3.0
    assert waiter.holder == holder.token


def test_blocking_acquire_succeeds_when_the_holder_releases(kv: KV) -> None:
    holder = kv.lock("x", ttl=30)
    assert holder.acquire()
    old = holder.fence
    assert old is not None
    releaser = threading.Timer(0.2, holder.release)
    releaser.start()
    waiter = kv.lock("x", ttl=10)
    started = time.monotonic()
    try:
        assert waiter.acquire(blocking=True, timeout=10) is True
    finally:
        releaser.join()
    assert time.monotonic() - started < 5.0  # not the holder's 30 s lease
    assert waiter.fence is not None and waiter.fence > old


def test_blocking_acquire_without_timeout_waits_for_expiry(kv: KV) -> None:
    holder = kv.lock("x", ttl=0.3)
    assert holder.acquire()
    waiter = kv.lock("x", ttl=10)
    assert waiter.acquire(blocking=True) is True
    assert waiter.owned()


def test_timeout_needs_blocking(kv: KV) -> None:
    with pytest.raises(ValueError, match="blocking"):
        kv.lock("x").acquire(blocking=False, timeout=1)


# -- renewal and loss --------------------------------------------------------------


def test_heartbeat_keeps_the_lock_past_its_ttl(kv: KV) -> None:
    # ttl 0.5 (renewed every ~0.17 s) leaves margin for a loaded 2-core machine.
    lock = kv.lock("x", ttl=0.5, auto_renew=True)
    assert lock.acquire()
    try:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:  # owned at every check for over 2 ttls
            assert lock.owned()
            time.sleep(0.05)
        assert not lock.lost
    finally:
        assert lock.release() is True


def test_start_renewal_later(kv: KV) -> None:
    lock = kv.lock("x", ttl=0.5)
    assert lock.acquire()
    lock.start_renewal()
    try:
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            assert lock.owned()
            time.sleep(0.05)
    finally:
        lock.stop_renewal()
    assert wait_for(lambda: not lock.owned())  # no renewal: it runs out
    assert not lock.lost


def test_lost_lock_is_detected_and_reported(kv: KV) -> None:
    seen: list[Lock] = []
    lock = kv.lock("x", ttl=0.3, auto_renew=True, on_lost=seen.append)
    assert lock.acquire()
    kv.client.delete(lock.key)  # behind the lock's back
    assert wait_for(lambda: lock.lost)
    assert wait_for(lambda: seen == [lock])
    assert lock.release() is False


def test_release_stops_the_heartbeat(kv: KV) -> None:
    seen: list[Lock] = []
    lock = kv.lock("x", ttl=0.2, auto_renew=True, on_lost=seen.append)
    assert lock.acquire() and lock.release()
    nxt = kv.lock("x", ttl=0.2)
    assert nxt.acquire()
    assert wait_for(lambda: not nxt.owned())  # nobody renews it for us
    assert not lock.lost and seen == []


def test_reacquire_after_loss_renews_again(kv: KV) -> None:
    lock = kv.lock("x", ttl=0.5, auto_renew=True)
    assert lock.acquire()
    kv.client.delete(lock.key)
    assert wait_for(lambda: lock.lost)
    assert lock.acquire() and not lock.lost
    try:
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            assert lock.owned()
            time.sleep(0.05)
    finally:
        lock.release()


# -- context manager ---------------------------------------------------------------


def test_context_manager_acquires_and_releases(kv: KV) -> None:
    with kv.lock("x", ttl=10, auto_renew=True) as lock:
        assert lock.owned() and lock.fence is not None
    assert not lock.owned()
    assert describe(kv.store, "x") is None


def test_context_manager_releases_on_error(kv: KV) -> None:
    lock = kv.lock("x", ttl=10)
    with pytest.raises(RuntimeError), lock:
        raise RuntimeError("boom")
    assert not lock.owned()


def test_context_manager_raises_when_held(kv: KV) -> None:
    holder = kv.lock("invoice:7", ttl=10, token="task-abc")
    assert holder.acquire()
    with pytest.raises(LockNotAcquired) as info, kv.lock(
        "invoice:7", ttl=10, blocking_timeout=0.1
    ):
        pytest.fail("entered a held lock")
    assert info.value.key == "invoice:7"
    assert info.value.holder == "task-abc"
    assert "task-abc" in str(info.value)
    assert type(info.value)(*info.value.args).holder == "task-abc"  # JSON round trip
    assert holder.owned()


# -- operators: describe, iter_locks, break_lock -----------------------------------


def test_describe_and_iter_locks(kv: KV) -> None:
    a = kv.lock("a", ttl=10, token="task-a")
    b = kv.lock(("tenant", 7), ttl=20, token="task-b")
    assert a.acquire() and b.acquire()
    info = describe(kv.store, "a")
    assert info is not None
    assert (info.owner, info.fence, info.key, info.name) == ("task-a", a.fence, a.key, "a")
    assert info.ttl is not None and 8 < info.ttl <= 10
    listed = {i.key: i for i in iter_locks(kv.store)}
    assert set(listed) == {a.key, b.key}  # fence counters are not locks
    assert listed[b.key].owner == "task-b" and listed[b.key].fence == b.fence
    assert a.release()
    assert describe(kv.store, "a") is None
    assert [i.key for i in iter_locks(kv.store)] == [b.key]


def test_break_lock_keeps_fences_increasing(kv: KV) -> None:
    stuck = kv.lock("x", ttl=30)
    assert stuck.acquire()
    old = stuck.fence
    assert old is not None
    assert break_lock(kv.store, "x") is True
    assert break_lock(kv.store, "x") is False
    assert not stuck.owned()
    nxt = kv.lock("x", ttl=10)
    assert nxt.acquire() and nxt.fence is not None and nxt.fence > old


# -- one round trip per operation --------------------------------------------------


def test_each_warm_operation_is_one_command(kv: KV) -> None:
    lock = kv.lock("x", ttl=10)
    other = kv.lock("x", ttl=10)
    # warm the script cache once per script
    assert lock.acquire() and lock.extend() and lock.owned() and lock.release()
    assert lock.acquire()
    operations: list[Callable[[], Any]] = [
        lock.acquire, lock.extend, lock.owned, other.acquire, other.release, lock.release,
    ]
    for operation in operations:
        with count_commands(kv) as sent:
            operation()
        assert len(sent) == 1, (operation, sent)
        assert str(sent[0][0]).upper() == "EVALSHA"


# -- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, -math.inf, "abc", None, True, 1e12])
def test_bad_ttl_is_refused_and_writes_nothing(kv: KV, bad: Any) -> None:
    with pytest.raises(ValueError) as info:
        kv.lock("invoice:42", ttl=bad)
    assert repr(bad) in str(info.value) and "invoice:42" in str(info.value)
    assert keys_under(kv) == []


@pytest.mark.parametrize(
    "options",
    [{"fence_ttl": 0}, {"fence_ttl": math.nan}, {"blocking_timeout": -1},
     {"blocking_timeout": math.inf}, {"token": ""}, {"token": 7}],
)
def test_bad_options_are_refused_and_write_nothing(kv: KV, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        kv.lock("x", **options)
    assert repr(next(iter(options.values()))) in str(info.value)
    assert keys_under(kv) == []


@pytest.mark.parametrize("bad", [0, -1, math.nan, "abc"])
def test_bad_extend_or_timeout_is_refused(kv: KV, bad: Any) -> None:
    lock = kv.lock("x", ttl=10)
    assert lock.acquire()
    with pytest.raises(ValueError, match="ttl"):
        lock.extend(bad)
    if bad != 0:
        with pytest.raises(ValueError, match="timeout"):
            lock.acquire(blocking=True, timeout=bad)
    assert 9000 < pttl(kv, lock.key) <= 10_000


@pytest.mark.parametrize("bad", [1.5, None, ["a"], ("a", 1.5), True])
def test_bad_name_types_are_refused(kv: KV, bad: Any) -> None:
    with pytest.raises(TypeError):
        kv.lock(bad)
    assert keys_under(kv) == []


def test_long_names_are_shortened_in_errors() -> None:
    from celery_kv.testing import fake_kv

    with pytest.raises(ValueError) as info:
        fake_kv().lock("n" * 10_000, ttl=-1)
    assert len(str(info.value)) < 300


ODD_NAMES: list[Any] = [
    "é中文🔒", "{", "}", ":", "*", "\n", "a:b", ("a", "b"), "x" * 10_000, "x" * 9_999 + "y",
    b"a:b", 0, ("a",), "{a}:*\n",
]


def test_odd_names_work_and_do_not_collide(kv: KV) -> None:
    locks = [kv.lock(name, ttl=10) for name in ODD_NAMES]
    assert all(lock.acquire() for lock in locks)  # each its own lock
    assert len({lock.key for lock in locks}) == len(ODD_NAMES)
    for name, lock in zip(ODD_NAMES, locks, strict=True):
        info = describe(kv.store, name)
        assert info is not None and info.owner == lock.token
        assert lock.key.count("{") == 1 and lock.key.count("}") == 1
    assert all(lock.release() for lock in locks)
    assert all(k.endswith(":fence") for k in keys_under(kv))


def test_empty_name_works(kv: KV) -> None:
    # On Redis Cluster this needs KeySpace to give "" a non-empty hash tag: an
    # empty "{}" tag hashes each whole key, so the lock and its fence counter
    # would land in different slots.
    empty = kv.lock("", ttl=10)
    assert empty.acquire() and empty.owned()
    assert kv.lock(("",), ttl=10).acquire()  # a different lock
    assert empty.release()


def test_colon_name_and_tuple_name_are_independent(kv: KV) -> None:
    flat = kv.lock("a:b", ttl=10)
    parts = kv.lock(("a", "b"), ttl=10)
    assert flat.acquire() and parts.acquire()
    assert flat.release()
    assert parts.owned()


def test_takeover_hands_a_holding_to_a_new_token_keeping_the_fence(kv: KV) -> None:
    queued = kv.lock("handover", ttl=30, token="task-1")
    assert queued.acquire()
    running = kv.lock("handover", ttl=5, token="task-1#run")
    stranger = kv.lock("handover", ttl=5, token="task-2#run")
    assert not stranger.acquire(takeover="task-9")
    assert stranger.holder == "task-1"
    assert running.acquire(takeover="task-1")
    assert running.fence == queued.fence
    assert not queued.owned() and running.owned()
    # a second runner of the same task id cannot take it from the running one
    twin = kv.lock("handover", ttl=5, token="task-1#run2")
    assert not twin.acquire(takeover="task-1")
    assert twin.holder == "task-1#run"
    # and the running holding is handed back to the bare id (a retry)
    assert queued.acquire(takeover="task-1#run")
    assert queued.owned() and not running.owned()


def test_reentered_tells_a_fresh_acquire_from_a_second_one(kv: KV) -> None:
    lock = kv.lock("again", ttl=5, token="task-1")
    assert lock.acquire() and not lock.reentered
    assert lock.acquire() and lock.reentered
    handed = kv.lock("again", ttl=5, token="task-1#run")
    assert handed.acquire(takeover="task-1") and not handed.reentered
