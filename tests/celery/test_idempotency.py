"""Idempotent tasks on real workers: one body run per key across duplicate deliveries."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery, chain, chord

from celery_kv import IdempotencyKeyReused
from celery_kv.celery.context import HEADER
from celery_kv.celery.install import installed
from tests.celery.conftest import Env, Worker, count, enqueue_from_processes, events
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def state(app: Celery, *args: Any, key: str | None = None) -> Any:
    task = app.tasks[args[0]]
    idem = installed(app).kv.idempotency(task.kv_namespace)
    return idem.state(str(task.kv_keys(args[1:], idempotency_key=key).idempotency))


def test_duplicate_enqueues_return_the_first_and_run_once(
    worker: Worker, celery_env: Env, client_app: Celery, fx: Any, tag: str
) -> None:
    ids = enqueue_from_processes(celery_env, "t.idem_add", [tag, 1, 2, 0.3], processes=3, each=3)
    assert len(set(ids)) == 1
    task = client_app.tasks["t.idem_add"]
    assert task.AsyncResult(ids[0]).get(timeout=30) == 3
    assert task.apply_async((tag, 1, 2, 0.3)).id == ids[0], "completed: still the first"
    keyed = [task.apply_async((tag, 7, 7), idempotency_key=f"order-{tag}") for _ in range(3)]
    assert len({r.id for r in keyed}) == 1
    assert keyed[0].get(timeout=30) == 14
    assert count(fx, tag) == 2


def test_duplicate_and_redelivered_executions_replay(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.idem_add"]
    first = task.apply_async((tag, 2, 2, 1.0))
    wait_for(lambda: count(fx, tag) == 1, 20, "the first run to start")
    # the same task id delivered again while it runs (visibility timeout, acks_late)
    again = client_app.send_task("t.idem_add", (tag, 2, 2, 1.0), task_id=first.id)
    # and deliveries that skipped apply_async (another service, beat)
    others = [client_app.send_task("t.idem_add", (tag, 2, 2, 1.0)) for _ in range(2)]
    assert first.get(timeout=30) == 4
    assert [r.get(timeout=30) for r in others] == [4, 4]
    wait_for(lambda: again.state == "SUCCESS", 20, "the redelivered copy to finish")
    assert count(fx, tag) == 1, "the body ran once across four deliveries"
    assert state(client_app, "t.idem_add", tag, 2, 2, 1.0).status == "completed"


def test_an_explicit_key_reused_with_other_arguments_fails(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.idem_add"]
    key = f"pay-{tag}"
    assert task.apply_async((tag, 1, 1), idempotency_key=key).get(timeout=30) == 2
    with pytest.raises(IdempotencyKeyReused):
        task.apply_async((tag, 9, 9), idempotency_key=key)
    # a message from elsewhere that carries the key with other arguments fails at execution
    forged = {"idempotency_key": key,
              "idempotency_fingerprint": task.kv_keys((tag, 9, 9)).fingerprint}
    result = client_app.send_task("t.idem_add", (tag, 9, 9), headers={HEADER: forged})
    with pytest.raises(IdempotencyKeyReused) as caught:
        result.get(timeout=30)
    assert caught.value.task_name == "t.idem_add" and key in str(caught.value)
    assert count(fx, tag) == 1


def test_non_json_result_fails_clearly_and_a_duplicate_does_not_run_it_again(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    """The body ran (its effects happened) but its result cannot be stored: the record keeps
    the error, so a duplicate replays it instead of repeating the effects."""
    task = client_app.tasks["t.idem_bad"]
    result = task.delay(tag)
    with pytest.raises(TypeError) as caught:
        result.get(timeout=30)
    key = task.kv_keys((tag,)).idempotency
    assert "t.idem_bad" in str(caught.value) and str(key) in str(caught.value)
    assert state(client_app, "t.idem_bad", tag).status == "completed"
    duplicate = task.delay(tag)
    assert duplicate.id == result.id
    with pytest.raises(TypeError, match="JSON"):
        duplicate.get(timeout=30)
    sent = client_app.send_task("t.idem_bad", (tag,))  # skips apply_async: replayed at execution
    with pytest.raises(TypeError, match="JSON"):
        sent.get(timeout=30)
    assert count(fx, tag) == 1


def test_chain_with_a_deduplicated_head_gets_the_replayed_value(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    head, collect = client_app.tasks["t.idem_add"], client_app.tasks["t.collect"]
    first = chain(head.s(tag, 20, 1, 0.8), collect.s(tag)).apply_async()
    wait_for(lambda: count(fx, tag) == 1, 20, "the head to start")
    second = chain(head.s(tag, 20, 1, 0.8), collect.s(tag)).apply_async()  # while in progress
    assert first.get(timeout=30) == 21 and second.get(timeout=30) == 21
    third = chain(head.s(tag, 20, 1, 0.8), collect.s(tag)).apply_async()  # after completion
    assert third.get(timeout=30) == 21
    assert count(fx, tag) == 1
    assert events(fx, tag, "collected") == [21, 21, 21]


def test_retries_keep_the_claim_and_the_result_is_stored_once(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.idem_retry"]
    result = task.apply_async((tag, 2))
    wait_for(lambda: count(fx, tag) >= 1, 20, "the first run")
    assert task.apply_async((tag, 2)).id == result.id, "the claim stays with the retrying task"
    assert result.get(timeout=30) == 2
    assert count(fx, tag) == 3
    assert task.apply_async((tag, 2)).id == result.id, "completed: replayed, not run again"
    again = client_app.send_task("t.idem_retry", (tag, 2))
    assert again.get(timeout=30) == 2
    assert count(fx, tag) == 3


def test_a_chord_of_idempotent_duplicates_completes(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    add, total = client_app.tasks["t.idem_add"], client_app.tasks["t.total"]
    header = [add.s(tag, 1, 1, 0.3) for _ in range(3)]
    assert chord(header, total.s(tag)).apply_async().get(timeout=60) == 6
    assert count(fx, tag) == 1
    assert events(fx, tag, "collected") == [[2, 2, 2]]


def test_revoking_a_queued_task_frees_its_claim(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.idem_add"]
    queued = task.apply_async((tag, 3, 3), countdown=1.0)
    assert state(client_app, "t.idem_add", tag, 3, 3).owner == queued.id
    client_app.control.revoke(queued.id)
    wait_for(lambda: state(client_app, "t.idem_add", tag, 3, 3).status == "absent", 20,
             "the claim to be released")
    assert count(fx, tag) == 0
    again = task.apply_async((tag, 3, 3))
    assert again.id != queued.id and again.get(timeout=30) == 6
