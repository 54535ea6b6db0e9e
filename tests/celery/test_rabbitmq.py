"""RabbitMQ as the broker, Redis only for coordination (and results): dedupe end to end."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.celery.conftest import Env, Worker, assert_no_overlap, count, events

pytestmark = [pytest.mark.worker, pytest.mark.slow]

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
QUEUE = "ckv-" + uuid.uuid4().hex[:8]


def rabbitmq_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def amqp_env(celery_env: Env) -> Env:
    if not rabbitmq_up():  # scripts/ensure-rabbitmq starts it; a failure here is real
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (run scripts/ensure-rabbitmq)")
    return dataclasses.replace(
        celery_env, broker=AMQP,
        conf={"task_default_queue": QUEUE, "task_queues": None},
    )


@pytest.fixture(scope="module")
def amqp_worker(amqp_env: Env) -> Iterator[Worker]:
    started = Worker(amqp_env, queues=QUEUE)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def amqp_app(amqp_env: Env) -> Celery:
    return amqp_env.app("ckv-amqp")


def test_singleton_dedupe_with_rabbitmq(amqp_worker: Worker, amqp_app: Celery, fx: Any,
                                        tag: str) -> None:
    task = amqp_app.tasks["t.single"]
    results = [task.apply_async((tag, 1, 0.5)) for _ in range(5)]
    assert len({r.id for r in results}) == 1
    assert results[0].get(timeout=30) == 1
    bypass = amqp_app.send_task("t.single", (tag, 1, 0.5))  # no claim: checked at execution
    assert bypass.get(timeout=30) == 1
    assert count(fx, tag) == 2
    assert_no_overlap(events(fx, tag))


def test_idempotent_dedupe_with_rabbitmq(amqp_worker: Worker, amqp_app: Celery, fx: Any,
                                         tag: str) -> None:
    task = amqp_app.tasks["t.idem_add"]
    first = task.apply_async((tag, 2, 3))
    assert task.apply_async((tag, 2, 3)).id == first.id
    keyed = task.apply_async((tag, 2, 3), idempotency_key=f"rmq-{tag}")
    assert task.apply_async((tag, 2, 3), idempotency_key=f"rmq-{tag}").id == keyed.id
    assert first.get(timeout=30) == 5 and keyed.get(timeout=30) == 5
    again = amqp_app.send_task("t.idem_add", (tag, 2, 3))  # no claim: replayed at execution
    assert again.get(timeout=30) == 5
    assert count(fx, tag) == 2, "one run per idempotency key"
