"""Lock and semaphore safety across real OS processes, against the session's redis-server.

Invariants, not examples: lock holders never overlap (a non-atomic counter
loses no update, and server-time intervals ordered by fence are disjoint),
fences strictly increase in holding order, and a semaphore never has more than
``limit`` holders inside (while the limit is actually reached).
"""

from __future__ import annotations

import itertools
import multiprocessing
from typing import Any

import pytest

from celery_kv import KV

from . import _lock_workers

pytestmark = pytest.mark.slow

PROCESSES = 8
CTX = multiprocessing.get_context("spawn")


def run_workers(target: Any, args: tuple[Any, ...]) -> list[Any]:
    """Start PROCESSES processes on ``target(*args, barrier, queue)``; return their results."""
    barrier = CTX.Barrier(PROCESSES)
    out = CTX.Queue()
    procs = [CTX.Process(target=target, args=(*args, barrier, out)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    try:
        results = [out.get(timeout=90) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    errors = [detail for status, detail in results if status != "ok"]
    assert not errors, errors
    return [detail for _, detail in results]


def test_lock_holders_never_overlap_and_fences_increase(redis_url: str, prefix: str) -> None:
    rounds = 20
    kv = KV.from_url(redis_url, prefix=prefix)
    counter = kv.store.keys.key("test", "counter")
    results = run_workers(_lock_workers.lock_worker, (redis_url, prefix, counter, rounds))
    records = sorted(r for per_process in results for r in per_process)
    total = PROCESSES * rounds

    assert len(records) == total
    assert int(kv.client.get(counter)) == total  # no lost update: no two holders at once
    fences = [fence for fence, *_ in records]
    assert len(set(fences)) == total
    for (_, _, end, _), (_, start, _, _) in itertools.pairwise(records):
        assert end <= start, "critical sections ordered by fence overlap"
    by_start = sorted(records, key=lambda r: r[1])
    assert [r[0] for r in by_start] == fences  # fences strictly increase in holding order
    assert all(released for *_, released in records), "a holder lost its lock"


@pytest.mark.parametrize("limit", [3])
def test_semaphore_never_exceeds_its_limit(redis_url: str, prefix: str, limit: int) -> None:
    results = run_workers(_lock_workers.semaphore_worker, (redis_url, prefix, limit, 8))
    most = max(results)
    assert most <= limit, f"{most} holders inside a semaphore of {limit}"
    assert most == limit, "the limit was never reached: the test could not have failed"
    kv = KV.from_url(redis_url, prefix=prefix)
    assert kv.semaphore("invariant", limit=limit).holders() == 0
