"""Process bodies for tests/test_lock_invariants.py (importable, so 'spawn' can run them).

Each worker connects on its own, waits at a barrier so all contend at once, and
puts its records on a queue. Timestamps come from the server (TIME), never
from the worker's clock.
"""

from __future__ import annotations

import time
from typing import Any

from celery_kv import KV


def server_us(kv: KV) -> int:
    seconds, micros = kv.client.time()
    return int(seconds) * 1_000_000 + int(micros)


def lock_worker(
    url: str, prefix: str, counter: str, rounds: int, barrier: Any, out: Any
) -> None:
    """Hold the lock ``rounds`` times; inside, a deliberately non-atomic GET + SET."""
    kv = KV.from_url(url, prefix=prefix)
    lock = kv.lock("invariant", ttl=10)
    records = []
    try:
        barrier.wait(timeout=60)
        for _ in range(rounds):
            if not lock.acquire(blocking=True, timeout=60):
                raise AssertionError("blocking acquire timed out")
            start = server_us(kv)
            value = int(kv.client.get(counter) or 0)
            time.sleep(0.001)  # widen the race window: a second holder would lose an update
            kv.client.set(counter, value + 1, ex=300)
            end = server_us(kv)
            fence = lock.fence
            records.append((fence, start, end, lock.release()))
        out.put(("ok", records))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def semaphore_worker(
    url: str, prefix: str, limit: int, rounds: int, barrier: Any, out: Any
) -> None:
    """Hold a slot ``rounds`` times, counting holders inside with INCR/DECR."""
    kv = KV.from_url(url, prefix=prefix)
    sem = kv.semaphore("invariant", limit=limit, ttl=10)
    inside = kv.store.keys.key("test", "inside")
    most = 0
    try:
        barrier.wait(timeout=60)
        for _ in range(rounds):
            if not sem.acquire(blocking=True, timeout=60):
                raise AssertionError("blocking acquire timed out")
            most = max(most, _enter(kv, inside))
            # Stay until the others fill the slots (or briefly), so reaching the
            # limit is observed, not left to scheduling luck.
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:
                seen = int(kv.client.get(inside) or 0)
                most = max(most, seen)
                if seen >= limit:
                    break
                time.sleep(0.002)
            kv.client.decr(inside)
            if not sem.release():
                raise AssertionError("lost the semaphore lease")
        out.put(("ok", most))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def _enter(kv: KV, inside: str) -> int:
    pipe = kv.client.pipeline(transaction=True)
    pipe.incr(inside)
    pipe.expire(inside, 300)
    value, _ = pipe.execute()
    return int(value)
