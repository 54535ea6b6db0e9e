"""A body that ran keeps its outcome through an outage as it ends (issue 9, F2).

The worker reaches the coordination Redis through a proxy that the test cuts just as
the body ends, for longer than the record's lease (2 s) and than ``kv_retry_deadline``.
While the lease is lapsed the key says "ran, result unknown" (a duplicate is refused, not
run); the worker keeps trying to store the outcome, and once the cut ends it is stored, so
a later duplicate replays it instead of running the body a second time.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_kv import CoordinationFull, IdempotencyOutcomeUnknown
from celery_kv.celery.install import installed
from celery_kv.celery.keys import task_id_of
from celery_kv.testing import RedisServer
from tests.celery.conftest import Env, Worker, count
from tests.celery.test_enqueue import idem_state
from tests.conftest import wait_for
from tests.proxy import CuttableProxy

pytestmark = [pytest.mark.worker, pytest.mark.slow]

CUT = 8.0  # longer than the lease (2 s) and kv_retry_deadline (0.5 s)


@pytest.fixture(scope="module")
def proxy(kv_server: RedisServer) -> Iterator[CuttableProxy]:
    cuttable = CuttableProxy(kv_server.port)
    try:
        yield cuttable
    finally:
        cuttable.close()


@pytest.fixture(scope="module")
def cut_env(celery_env: Env, proxy: CuttableProxy) -> Env:
    base = celery_env.broker.rsplit("/", 1)[0]
    return dataclasses.replace(
        celery_env, broker=f"{base}/8", kv=f"redis://127.0.0.1:{proxy.port}/0",
        prefix=celery_env.prefix + "cut")


@pytest.fixture(scope="module")
def cut_worker(cut_env: Env) -> Iterator[Worker]:
    started = Worker(cut_env)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def app(cut_env: Env, kv_server: RedisServer) -> Celery:
    """The test process's app: it reaches Redis directly; only the worker is cut off."""
    return dataclasses.replace(cut_env, kv=kv_server.url).app("ckv-cut")


def test_an_outcome_that_could_not_be_stored_lands_after_the_outage(
    app: Celery, cut_worker: Worker, proxy: CuttableProxy, fx: redis.Redis, tag: str
) -> None:
    task: Any = app.tasks["t.idem_gate"]
    first = task.delay(tag, 21)
    wait_for(lambda: count(fx, tag) == 1, 20, "the body to start")
    proxy.cut()
    try:
        fx.set(f"fx:{tag}:go", 1)  # the body ends now, with Redis out of the worker's reach
        wait_for(lambda: idem_state(app, task.name, tag, 21).status == "unknown", 10,
                 "the record's lease to lapse while the worker is cut off")
        # meanwhile the key says "ran, result unknown", not "free": a duplicate refuses
        with pytest.raises(IdempotencyOutcomeUnknown, match="ran, result unknown") as info:
            task.delay(tag, 21)
        assert info.value.holder == first.id
        time.sleep(CUT)  # the fault itself: the outage lasts this long
    finally:
        proxy.restore()
    assert first.get(timeout=60) == 42
    state = wait_for(lambda: (s := idem_state(app, task.name, tag, 21)).status == "completed"
                     and s, 30, "the outcome to be stored once the worker reaches Redis")
    assert state.result == 42
    duplicate = task.delay(tag, 21)
    assert duplicate.get(timeout=30) == 42
    assert count(fx, tag) == 1, "the body ran once: the duplicate replayed its outcome"


def test_a_failed_runs_claim_is_released_at_its_failure_even_when_redis_is_full(
    app: Celery, cut_worker: Worker, proxy: CuttableProxy, kv_server: RedisServer,
    fx: redis.Redis, tag: str
) -> None:
    """F3: under ``noeviction`` with memory full, a final failure still frees the key (the
    release deletes, which Redis allows when full), so the same call runs again at once."""
    task: Any = app.tasks["t.idem_gate"]
    first = task.delay(tag, 5, True)
    wait_for(lambda: count(fx, tag) == 1, 20, "the body to start")
    admin = redis.Redis(port=kv_server.port)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)  # every write that needs memory is now refused
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            admin.set(f"probe:{tag}", "x")
        fx.set(f"fx:{tag}:go", 1)  # the body fails now
        with pytest.raises(RuntimeError, match="failed after its gate"):
            first.get(timeout=30)
        assert idem_state(app, task.name, tag, 5, True).status == "absent", \
            "the failed run's claim was released at its failure"
    finally:
        admin.config_set("maxmemory", 0)
    second = task.delay(tag, 5, True)
    assert second.id != first.id, "the key was free: a new call, not the failed one's id"
    with pytest.raises(RuntimeError, match="failed after its gate"):
        second.get(timeout=30)
    assert count(fx, tag) == 2


def test_an_outcome_refused_by_a_full_redis_lands_once_memory_frees(
    app: Celery, cut_worker: Worker, proxy: CuttableProxy, kv_server: RedisServer,
    fx: redis.Redis, tag: str
) -> None:
    """Full under ``noeviction`` as the body ends: the outcome is retried until memory
    frees. Meanwhile the lease cannot be renewed and lapses: the key says "ran, result
    unknown", and a duplicate is refused rather than run."""
    task: Any = app.tasks["t.idem_gate"]
    first = task.delay(tag, 8)
    wait_for(lambda: count(fx, tag) == 1, 20, "the body to start")
    admin = redis.Redis(port=kv_server.port)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    retrying = "the outcome of a body that ran: not stored yet"
    before = cut_worker.log_text().count(retrying)
    try:
        fx.set(f"fx:{tag}:go", 1)  # the body ends now; its outcome cannot be written
        wait_for(lambda: cut_worker.log_text().count(retrying) > before, 20,
                 "the worker to retry the outcome")
        wait_for(lambda: idem_state(app, task.name, tag, 8).status == "unknown", 20,
                 "the lease to lapse while Redis is full")
        with pytest.raises(IdempotencyOutcomeUnknown):
            task.delay(tag, 8)
    finally:
        admin.config_set("maxmemory", 0)
    assert first.get(timeout=60) == 16
    wait_for(lambda: idem_state(app, task.name, tag, 8).status == "completed", 30,
             "the outcome to land once memory frees")
    assert task.delay(tag, 8).get(timeout=30) == 16
    assert count(fx, tag) == 1


def test_a_killed_run_leaves_ran_result_unknown_and_no_duplicate_runs_it(
    app: Celery, cut_env: Env, proxy: CuttableProxy, fx: redis.Redis, tag: str
) -> None:
    """SIGKILL mid-body (no acks_late: the message is gone). Its effects may have
    happened, so once the lease lapses the key says so: a duplicate is refused, naming
    the run, until an operator forgets the key; then the next call runs."""
    task: Any = app.tasks["t.idem_gate"]
    doomed = Worker(cut_env, queues="doomed")
    try:
        first = task.apply_async((tag, 4), queue="doomed")
        wait_for(lambda: count(fx, tag) == 1, 20, "the body to start")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.process.wait(timeout=10)
    finally:
        doomed.stop()
    state = wait_for(lambda: (s := idem_state(app, task.name, tag, 4)).status == "unknown"
                     and s, 10, "the killed run's lease to lapse")
    assert task_id_of(state.owner) == first.id
    with pytest.raises(IdempotencyOutcomeUnknown, match="ran, result unknown") as info:
        task.delay(tag, 4)
    assert info.value.holder == first.id
    assert count(fx, tag) == 1
    idem = installed(app).kv.idempotency(task.kv_namespace)
    assert idem.forget(str(task.kv_keys((tag, 4)).idempotency))
    fx.set(f"fx:{tag}:go", 1)
    assert task.delay(tag, 4).get(timeout=30) == 8
    assert count(fx, tag) == 2


def test_a_full_redis_refuses_new_calls_clearly_and_queued_work_waits_for_memory(
    app: Celery, cut_worker: Worker, proxy: CuttableProxy, kv_server: RedisServer,
    fx: redis.Redis, tag: str
) -> None:
    """Under ``noeviction`` with memory full: a new call gets ``CoordinationFull`` naming
    the task and its key, and leaves nothing behind; a call queued before waits, as in an
    outage, and runs once memory frees."""
    task: Any = app.tasks["t.idem_gate"]
    fx.set(f"fx:{tag}:go", 1)
    admin = redis.Redis(port=kv_server.port)
    keys_before = admin.dbsize()
    queued = task.apply_async((tag, 10), countdown=1.0)  # claimed now, starts when full
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    try:
        with pytest.raises(CoordinationFull, match=r"t\.idem_gate") as info:
            task.delay(tag, 9)
        assert "idempotency key" in str(info.value) and "noeviction" in str(info.value)
        assert admin.dbsize() == keys_before + 1, "the refused call left nothing behind"
        wait_for(lambda: "Redis is full" in cut_worker.log_text(), 20,
                 "the queued call to find Redis full at its start")
        assert count(fx, tag) == 0
    finally:
        admin.config_set("maxmemory", 0)
    assert queued.get(timeout=60) == 20
    assert count(fx, tag) == 1
