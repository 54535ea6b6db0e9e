"""Process bodies for the cache / idempotency concurrency tests, and a polling helper.

Each function runs in its own OS process (multiprocessing 'spawn'), builds its own KV from
the session's Redis URL, and reports what it saw through a queue. Effects that must happen
exactly once are counted in Redis, so the parent can check them as invariants.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery_kv import KV, IdempotencyInProgress


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    """Poll ``condition`` until it is truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(every)


def server_time(kv: KV) -> float:
    return float(kv.store.run("server_time", []))


def effect(kv: KV, counter: str) -> int:
    """One observable side effect: an INCR (with a TTL) of ``counter``."""
    client = kv.store.client
    count = int(client.incr(counter))
    client.expire(counter, 300)
    return count


def cache_single_flight(
    url: str, prefix: str, key: str, counter: str, barrier: Any, out: Any
) -> None:
    kv = KV.from_url(url, prefix=prefix)
    cache = kv.cache("flight", ttl=60.0)

    def compute() -> dict[str, Any]:
        effect(kv, counter)
        time.sleep(0.5)  # the slow origin that single flight protects
        return {"pid": os.getpid(), "token": uuid.uuid4().hex}

    barrier.wait(timeout=60)
    out.put(cache.get_or_set(key, compute))


def cache_hang(url: str, prefix: str, key: str, lock_timeout: float, marker: str) -> None:
    """Take the compute lease, say so, then hang until killed."""
    kv = KV.from_url(url, prefix=prefix)
    cache = kv.cache("flight", ttl=60.0, lock_timeout=lock_timeout)

    def compute() -> None:
        kv.store.client.set(marker, repr(server_time(kv)), ex=300)
        time.sleep(3600)

    cache.get_or_set(key, compute)


def cache_waiter(
    url: str, prefix: str, key: str, lock_timeout: float, counter: str, out: Any
) -> None:
    kv = KV.from_url(url, prefix=prefix)
    cache = kv.cache("flight", ttl=60.0, lock_timeout=lock_timeout)

    def compute() -> dict[str, Any]:
        effect(kv, counter)
        return {"pid": os.getpid(), "at": server_time(kv)}

    out.put(cache.get_or_set(key, compute))


def idem_runner(
    url: str, prefix: str, key: str, counter: str, barrier: Any, out: Any
) -> None:
    """Run the key once at the barrier, then poll until the stored result is served."""
    kv = KV.from_url(url, prefix=prefix)
    idem = kv.idempotency("pay", ttl=60.0, lease=5.0)

    def charge(order: int) -> dict[str, Any]:
        effect(kv, counter)
        time.sleep(0.5)
        return {"order": order, "pid": os.getpid()}

    barrier.wait(timeout=60)
    try:
        first: tuple[str, Any] = ("result", idem.run(key, charge, 42))
    except IdempotencyInProgress as exc:
        first = ("in_progress", exc.holder)

    def replay() -> Any:
        try:
            return ("ok", idem.run(key, charge, 42))
        except IdempotencyInProgress:
            return None

    final = wait_until(replay, timeout=30, every=0.05)[1]
    out.put((first, final))


def idem_hang(url: str, prefix: str, key: str, lease: float, counter: str, marker: str) -> None:
    """Claim the key, count the effect, say so, then hang (heartbeat running) until killed."""
    kv = KV.from_url(url, prefix=prefix)
    idem = kv.idempotency("pay", ttl=60.0, lease=lease)

    def charge() -> None:
        effect(kv, counter)
        kv.store.client.set(marker, repr(server_time(kv)), ex=300)
        time.sleep(3600)

    idem.run(key, charge)
