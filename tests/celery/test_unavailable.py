"""kv_on_unavailable on real workers: coordination Redis stopped, broker and backend still up."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_kv import CoordinationUnavailable
from celery_kv.testing import RedisServer
from tests.celery.conftest import Env, Worker, count
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]


@pytest.fixture(scope="module")
def down_env(celery_env: Env, kv_server: RedisServer) -> Env:
    base = celery_env.broker.rsplit("/", 1)[0]
    return dataclasses.replace(
        celery_env, broker=f"{base}/6", kv=f"redis://127.0.0.1:{kv_server.port}/0",
        conf={"kv_retry_deadline": 0.3, "kv_unavailable_max_delay": 4.0},
    )


@pytest.fixture(scope="module")
def down_worker(down_env: Env) -> Iterator[Worker]:
    started = Worker(down_env)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def down_app(down_env: Env) -> Celery:
    return down_env.app("ckv-down")


@pytest.fixture
def stopped(kv_server: RedisServer) -> Iterator[RedisServer]:
    kv_server.stop()
    try:
        yield kv_server
    finally:
        if kv_server.process.poll() is not None:
            kv_server.restart()


def test_policies_at_enqueue(down_worker: Worker, down_app: Celery, stopped: RedisServer,
                             fx: Any, tag: str) -> None:
    with pytest.raises(CoordinationUnavailable):
        down_app.tasks["t.down_raise"].apply_async((tag,))
    ran = down_app.tasks["t.down_run"].apply_async((tag,))  # published uncoordinated
    assert ran.get(timeout=20) == "ran"  # and run uncoordinated by the worker (policy run)
    cached = down_app.tasks["t.cached"].delay(tag + "-c", 1)  # cache defaults to "run"
    assert cached.get(timeout=20) == {"x": 1, "n": 1}


def test_retry_reschedules_until_redis_is_back(
    down_worker: Worker, down_app: Celery, stopped: RedisServer, fx: Any, tag: str
) -> None:
    result = down_app.tasks["t.down_retry"].apply_async((tag,))  # published, checked later
    wait_for(lambda: result.state == "RETRY", 20, "the task to be rescheduled")
    assert count(fx, tag) == 0
    stopped.restart()
    assert result.get(timeout=20) == "ran"
    assert count(fx, tag) == 1


def test_retry_gives_up_after_the_max_delay_and_raise_fails_at_once(
    down_worker: Worker, down_app: Celery, kv_server: RedisServer, fx: Any, tag: str
) -> None:
    raising = down_app.tasks["t.down_raise"].apply_async((tag + "-r",), countdown=1.5)
    waiting = down_app.tasks["t.down_retry"].apply_async((tag,), countdown=0.5)
    kv_server.stop()
    try:
        with pytest.raises(CoordinationUnavailable):
            raising.get(timeout=20)
        with pytest.raises(CoordinationUnavailable):
            waiting.get(timeout=30)  # kv_unavailable_max_delay = 4 s
    finally:
        kv_server.restart()
    assert count(fx, tag) == 0 and count(fx, tag + "-r") == 0


def test_an_idle_worker_stops_at_once_while_its_coordination_redis_is_down(
        down_env: Env, kv_server: RedisServer) -> None:
    """Warm shutdown is not held by the maintenance thread retrying an unreachable Redis
    (each of its calls retries for kv_retry_deadline, 5 s by default): joined for at most
    SHUTDOWN_GRACE, an idle worker exits by itself on SIGTERM, before the SIGKILL that
    Worker.stop sends 8 s later."""
    idle = Worker(dataclasses.replace(down_env, conf={}))  # the default retry deadline
    try:
        kv_server.stop()
        # SIGTERM as a pass begins retrying: its calls would take ~10 s to give up
        wait_for(lambda: "Retrying celery_kv.store" in idle.log_text(), 20,
                 "the maintenance thread to meet the outage")
    finally:
        idle.stop()
        kv_server.restart()
    assert idle.warm_exit, idle.log_text()[-3000:]
