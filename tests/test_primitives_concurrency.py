"""Cache single flight and idempotency under real OS processes, including SIGKILL.

Each test starts processes with the 'spawn' context against the session's real Redis and
checks invariants: an effect counted in Redis happens exactly once, every caller sees the
same value, and a killed holder's key comes back within its lease (measured on server
time, with generous margins for a busy 2-core machine).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celery_kv import KV, IdempotencyInProgress, IdempotencyOutcomeUnknown
from celery_kv.store import identity

from . import _primitive_workers as workers
from ._primitive_workers import server_time, wait_until

pytestmark = pytest.mark.slow

CTX = multiprocessing.get_context("spawn")
PROCESSES = 8


@pytest.fixture
def kv(redis_url: str) -> KV:
    return KV.from_url(redis_url, prefix="t" + uuid.uuid4().hex[:10])


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """Processes a test starts; any still alive at the end are killed by their own pid."""
    started: list[Any] = []
    yield started
    for proc in started:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)


def _start(procs: list[Any], target: Any, *args: Any) -> Any:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    procs.append(proc)
    return proc


def _collect(out: Any, n: int, timeout: float = 60.0) -> list[Any]:
    return [out.get(timeout=timeout) for _ in range(n)]


def _joined(procs: list[Any]) -> None:
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0, proc


def test_single_flight_computes_once_across_processes(
    kv: KV, redis_url: str, procs: list[Any]
) -> None:
    counter = kv.store.keys.key("test", "calls")
    barrier, out = CTX.Barrier(PROCESSES), CTX.Queue()
    for _ in range(PROCESSES):
        _start(procs, workers.cache_single_flight, redis_url, kv.prefix, "cold", counter,
               barrier, out)
    values = _collect(out, PROCESSES)
    _joined(procs)
    assert int(kv.store.client.get(counter)) == 1
    assert all(v == values[0] for v in values), values
    assert kv.cache("flight").get("cold") == values[0]


def test_idempotent_effect_happens_exactly_once(kv: KV, redis_url: str, procs: list[Any]) -> None:
    counter = kv.store.keys.key("test", "charges")
    barrier, out = CTX.Barrier(PROCESSES), CTX.Queue()
    for _ in range(PROCESSES):
        _start(procs, workers.idem_runner, redis_url, kv.prefix, "order-42", counter, barrier, out)
    reports = _collect(out, PROCESSES)
    _joined(procs)
    assert int(kv.store.client.get(counter)) == 1
    finals = [final for _first, final in reports]
    assert all(f == finals[0] for f in finals) and finals[0]["order"] == 42
    for kind, seen in (first for first, _final in reports):
        assert kind in ("result", "in_progress")
        if kind == "result":
            assert seen == finals[0]
    assert any(first[0] == "result" for first, _ in reports)
    idem = kv.idempotency("pay", ttl=60.0, lease=5.0)
    assert idem.run("order-42", lambda _order: pytest.fail("ran twice"), 42) == finals[0]


def test_a_sigkilled_runner_leaves_ran_result_unknown_after_its_lease(
    kv: KV, redis_url: str, procs: list[Any]
) -> None:
    """Its effect may have happened: after its lease the key says so, and no caller runs
    the effect again until the key is forgotten."""
    lease = 1.5
    counter, marker = kv.store.keys.key("test", "charges"), kv.store.keys.key("test", "started")
    idem = kv.idempotency("pay", ttl=60.0, lease=lease)
    runner = _start(procs, workers.idem_hang, redis_url, kv.prefix, "k", lease, counter, marker)
    started = float(wait_until(lambda: kv.store.client.get(marker), timeout=60))

    # Alive, the heartbeat keeps the claim for well past one lease.
    wait_until(lambda: server_time(kv) > started + 2 * lease, timeout=30)
    state = idem.state("k")
    assert state.status == "in_progress" and state.owner

    os.kill(runner.pid, signal.SIGKILL)
    runner.join(10)
    killed = server_time(kv)

    def refused() -> Any:
        try:
            idem.run("k", lambda: workers.effect(kv, counter) and "second")
        except IdempotencyInProgress as exc:
            assert exc.holder == state.owner
            return None
        except IdempotencyOutcomeUnknown as exc:
            assert exc.holder == state.owner
            return exc
        raise AssertionError("a caller ran the key again")

    wait_until(refused, timeout=30, every=0.05)
    assert server_time(kv) - killed <= lease + 3.0
    assert idem.state("k").status == "unknown"
    assert int(kv.store.client.get(counter)) == 1  # the killed run's effect only
    assert idem.forget("k")  # an operator who checked the effect
    assert idem.run("k", lambda: workers.effect(kv, counter) and "second") == "second"
    assert int(kv.store.client.get(counter)) == 2


def test_a_waiter_takes_over_from_a_sigkilled_computer(
    kv: KV, redis_url: str, procs: list[Any]
) -> None:
    lock_timeout, waiters_n = 4.0, 3
    counter, marker = kv.store.keys.key("test", "calls"), kv.store.keys.key("test", "started")
    waiters_key = kv.store.keys.key("cache", "flight", "waiters", identity("hot"))
    computer = _start(procs, workers.cache_hang, redis_url, kv.prefix, "hot", lock_timeout,
                      marker)
    started = float(wait_until(lambda: kv.store.client.get(marker), timeout=60))
    out = CTX.Queue()
    for _ in range(waiters_n):
        _start(procs, workers.cache_waiter, redis_url, kv.prefix, "hot", lock_timeout,
               counter, out)
    # All waiters are parked (or, on a very slow machine, the lease ran out first).
    wait_until(
        lambda: int(kv.store.client.get(waiters_key) or 0) >= waiters_n
        or kv.store.client.exists(counter),
        timeout=60,
    )

    os.kill(computer.pid, signal.SIGKILL)
    computer.join(10)
    values = _collect(out, waiters_n)
    _joined(procs[1:])

    assert int(kv.store.client.get(counter)) == 1  # exactly one waiter took over
    assert all(v == values[0] for v in values), values
    took_over = values[0]["at"]
    # Safety: nobody computed while the dead computer's lease was still valid ...
    assert took_over >= started + lock_timeout - 0.5
    # ... and liveness: a waiter took over soon after it ran out.
    assert took_over <= started + lock_timeout + 3.0
