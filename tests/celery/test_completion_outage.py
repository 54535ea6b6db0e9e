"""A body that ran keeps its outcome through an outage as it ends (issue 9, F2).

The worker reaches the coordination Redis through a proxy that the test cuts just as
the body ends, for longer than the record's lease (2 s) and than ``kv_retry_deadline``.
The worker keeps trying to store the outcome; once the cut ends the outcome is stored,
and a later duplicate replays it instead of running the body a second time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_kv.testing import RedisServer, start_server
from tests.celery.conftest import Env, Worker, count
from tests.celery.test_enqueue import idem_state
from tests.conftest import wait_for
from tests.proxy import CuttableProxy

pytestmark = [pytest.mark.worker, pytest.mark.slow]

CUT = 8.0  # longer than the lease (2 s) and kv_retry_deadline (0.5 s)


@pytest.fixture(scope="module")
def kv_server() -> Iterator[RedisServer]:
    """The coordination Redis of these tests alone: they cut it off and fill it up."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


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


def test_an_outcome_that_could_not_be_stored_lands_after_the_outage(
    cut_env: Env, cut_worker: Worker, proxy: CuttableProxy, fx: redis.Redis, tag: str
) -> None:
    # The test process talks to Redis directly; only the worker goes through the proxy.
    app: Celery = dataclasses.replace(cut_env, kv=cut_env.kv.replace(
        f":{proxy.port}/", f":{proxy.target_port}/")).app("ckv-cut")
    task: Any = app.tasks["t.idem_gate"]
    first = task.delay(tag, 21)
    wait_for(lambda: count(fx, tag) == 1, 20, "the body to start")
    proxy.cut()
    try:
        fx.set(f"fx:{tag}:go", 1)  # the body ends now, with Redis out of the worker's reach
        wait_for(lambda: idem_state(app, task.name, tag, 21).status == "absent", 10,
                 "the record's lease to lapse while the worker is cut off")
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
    assert "stored the outcome under idempotency key" in cut_worker.log_text()


def test_a_failed_runs_claim_is_released_at_its_failure_even_when_redis_is_full(
    cut_env: Env, cut_worker: Worker, proxy: CuttableProxy, kv_server: RedisServer,
    fx: redis.Redis, tag: str
) -> None:
    """F3: under ``noeviction`` with memory full, a final failure still frees the key (the
    release deletes, which Redis allows when full), so the same call runs again at once."""
    app: Celery = dataclasses.replace(cut_env, kv=cut_env.kv.replace(
        f":{proxy.port}/", f":{proxy.target_port}/")).app("ckv-cut")
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
    cut_env: Env, cut_worker: Worker, proxy: CuttableProxy, kv_server: RedisServer,
    fx: redis.Redis, tag: str
) -> None:
    """Full under ``noeviction`` as the body ends: the heartbeat still renews the lease
    (PEXPIRE needs no memory) and the outcome is retried until memory frees."""
    app: Celery = dataclasses.replace(cut_env, kv=cut_env.kv.replace(
        f":{proxy.port}/", f":{proxy.target_port}/")).app("ckv-cut")
    task: Any = app.tasks["t.idem_gate"]
    first = task.delay(tag, 8)
    wait_for(lambda: count(fx, tag) == 1, 20, "the body to start")
    admin = redis.Redis(port=kv_server.port)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    retrying = "its outcome is not stored yet"
    before = cut_worker.log_text().count(retrying)
    try:
        fx.set(f"fx:{tag}:go", 1)  # the body ends now; its outcome cannot be written
        wait_for(lambda: cut_worker.log_text().count(retrying) > before, 20,
                 "the worker to retry the outcome")
        time.sleep(3 * 2.0)  # the fault: full for three leases
        assert idem_state(app, task.name, tag, 8).status == "in_progress", \
            "the heartbeat kept the lease while Redis was full"
    finally:
        admin.config_set("maxmemory", 0)
    assert first.get(timeout=60) == 16
    assert task.delay(tag, 8).get(timeout=30) == 16
    assert count(fx, tag) == 1
