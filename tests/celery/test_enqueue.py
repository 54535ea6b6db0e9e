"""The enqueue claim, in the test process (no worker consumes this broker database)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
from celery import Celery

from celery_kv import IdempotencyKeyReused
from celery_kv.celery import enqueue
from celery_kv.celery.install import installed
from celery_kv.primitives.lock import LockInfo, describe
from tests.celery.conftest import Env
from tests.conftest import wait_for


@pytest.fixture(scope="module")
def producer(celery_env: Env) -> Celery:
    """An app whose broker database no worker reads, so what it publishes stays queued."""
    env = dataclasses.replace(celery_env, broker=celery_env.broker.rsplit("/", 1)[0] + "/5",
                              conf={"kv_enqueue_claim_ttl": 1.0})
    return env.app("ckv-producer")


def claim_of(app: Celery, name: str, *args: Any) -> LockInfo | None:
    task = app.tasks[name]
    return describe(installed(app).kv.store, (task.name, task.kv_keys(args).singleton))


def idem_state(app: Celery, name: str, *args: Any, key: str | None = None) -> Any:
    task = app.tasks[name]
    idem = installed(app).kv.idempotency(task.kv_namespace)
    return idem.state(str(task.kv_keys(args, idempotency_key=key).idempotency))


def failing_publish(app: Celery, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        seen.append(args)
        raise RuntimeError("broker down")

    monkeypatch.setattr(app.amqp, "send_task_message", refuse)
    return seen


def test_a_publish_that_raises_removes_the_claim(
    producer: Celery, monkeypatch: pytest.MonkeyPatch, tag: str
) -> None:
    seen = failing_publish(producer, monkeypatch)
    with pytest.raises(RuntimeError, match="broker down"):
        producer.tasks["t.single"].apply_async((tag, 1))
    with pytest.raises(RuntimeError, match="broker down"):
        producer.tasks["t.idem_add"].apply_async((tag, 1, 2))
    assert len(seen) == 2
    assert claim_of(producer, "t.single", tag, 1) is None
    assert idem_state(producer, "t.idem_add", tag, 1, 2).status == "absent"
    monkeypatch.undo()
    first = producer.tasks["t.single"].apply_async((tag, 1))
    info = claim_of(producer, "t.single", tag, 1)
    assert info is not None and info.owner == first.id


def test_the_claim_is_short_until_the_publish_returns(
    producer: Celery, monkeypatch: pytest.MonkeyPatch, tag: str
) -> None:
    original = producer.amqp.send_task_message
    during: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        during.append((claim_of(producer, "t.single", tag, 2),
                       idem_state(producer, "t.idem_add", tag, 2, 2)))
        return original(*args, **kwargs)

    monkeypatch.setattr(producer.amqp, "send_task_message", spy)
    single = producer.tasks["t.single"].apply_async((tag, 2))
    idem = producer.tasks["t.idem_add"].apply_async((tag, 2, 2))
    (lock_during, _), (_, idem_during) = during
    assert lock_during.owner == single.id and 0 < lock_during.ttl <= 1.0
    assert idem_during.owner == idem.id and 0 < idem_during.lease_left <= 1.0
    lock_after = claim_of(producer, "t.single", tag, 2)
    idem_after = idem_state(producer, "t.idem_add", tag, 2, 2)
    assert lock_after.owner == single.id and lock_after.ttl > 3000
    assert idem_after.owner == idem.id and idem_after.lease_left > 3000


def test_a_producer_that_dies_before_confirming_blocks_the_key_briefly(
    producer: Celery, monkeypatch: pytest.MonkeyPatch, tag: str
) -> None:
    monkeypatch.setattr(enqueue, "confirm", lambda *_: None)  # "crashed" after publish
    producer.tasks["t.single"].apply_async((tag, 3))
    start = time.monotonic()
    wait_for(lambda: claim_of(producer, "t.single", tag, 3) is None, 5, "the claim to expire")
    assert time.monotonic() - start <= 1.2  # kv_enqueue_claim_ttl = 1 s, not the queued TTL


def test_duplicate_enqueues_by_arguments_and_by_key_return_the_first(
    producer: Celery, tag: str
) -> None:
    task = producer.tasks["t.idem_add"]
    first = task.apply_async((tag, 1, 1))
    assert task.apply_async((tag, 1, 1)).id == first.id
    assert task.apply_async(kwargs={"tag": tag, "a": 1, "b": 1}).id == first.id
    keyed = task.apply_async((tag, 5, 5), idempotency_key=f"order-{tag}")
    assert keyed.id != first.id
    assert task.apply_async((tag, 5, 5), idempotency_key=f"order-{tag}").id == keyed.id
    with pytest.raises(IdempotencyKeyReused) as caught:
        task.apply_async((tag, 6, 6), idempotency_key=f"order-{tag}")
    assert caught.value.task_name == "t.idem_add" and f"order-{tag}" in str(caught.value)


def test_a_delayed_message_keeps_its_claim_past_its_eta(producer: Celery, tag: str) -> None:
    from datetime import datetime, timedelta, timezone

    later = producer.tasks["t.single"].apply_async((tag, 4), countdown=600)
    info = claim_of(producer, "t.single", tag, 4)
    assert info is not None and info.owner == later.id and info.ttl > 3600 + 590
    eta = datetime.now(timezone.utc) + timedelta(hours=2)
    at_eta = producer.tasks["t.idem_add"].apply_async((tag, 4, 4), eta=eta)
    state = idem_state(producer, "t.idem_add", tag, 4, 4)
    assert state.owner == at_eta.id and state.lease_left > 3600 + 7190


def test_the_same_task_id_sent_twice_is_published_once(
    producer: Celery, monkeypatch: pytest.MonkeyPatch, tag: str
) -> None:
    original = producer.amqp.send_task_message
    published: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        published.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(producer.amqp, "send_task_message", spy)
    task = producer.tasks["t.single"]
    first = task.apply_async((tag, 7), task_id=f"fixed-{tag}")
    again = task.apply_async((tag, 7), task_id=f"fixed-{tag}")
    assert first.id == again.id == f"fixed-{tag}"
    assert len(published) == 1
    info = claim_of(producer, "t.single", tag, 7)
    assert info is not None and info.owner == first.id and info.ttl > 3000  # still queued TTL
