"""The lifecycle holes of the first wave, each shown closed on real prefork workers.

Each test failed before the lifecycle engine (features as modules, one round trip per
phase): a chain or link whose tail is a duplicate hung, a long retry lost its claim, a
completed call's duplicate never resolved once its Celery result was gone, replace()
dropped the guarantee, a singleton's successor was silently dropped, a header carrying
only some fields lost an explicit key, and a run that lost its lease was never told.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery, chain

from celery_kv import KVTask
from celery_kv.celery.context import HEADER
from celery_kv.celery.install import installed
from celery_kv.primitives.lock import break_lock
from celery_kv.store.metrics import read_counts, totals
from tests.celery.conftest import Worker, assert_no_overlap, count, events
from tests.celery.test_enqueue import claim_of, idem_state
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_a_chain_or_link_whose_tail_is_a_completed_duplicate_resolves(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    idem, collect = client_app.tasks["t.idem_add"], client_app.tasks["t.collect"]
    assert idem.delay(tag, 2, 3).get(timeout=30) == 5
    tail = chain(collect.si(0, tag), idem.si(tag, 2, 3)).apply_async()
    assert tail.get(timeout=30) == 5
    linked = idem.si(tag, 2, 3)
    linked_id = linked.freeze().id
    collect.apply_async((1, tag), link=linked)
    assert client_app.AsyncResult(linked_id).get(timeout=30) == 5
    assert count(fx, tag) == 1, "the tails replayed the stored result"


def test_a_chain_whose_tail_is_a_running_singleton_duplicate_resolves(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    single, collect = client_app.tasks["t.single"], client_app.tasks["t.collect"]
    first = single.apply_async((tag, 7, 1.0))
    wait_for(lambda: count(fx, tag) == 1, 20, "the first run to start")
    tail = chain(collect.si(0, tag), single.si(tag, 7, 1.0)).apply_async()
    assert first.get(timeout=30) == 7 and tail.get(timeout=30) == 7
    assert_no_overlap(events(fx, tag))


def test_a_retry_longer_than_the_queued_ttl_keeps_its_claim(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.single_long_retry"]  # queued_ttl=2, retry countdown 6 s
    first = task.apply_async((tag,))
    wait_for(lambda: count(fx, tag) == 1, 20, "the first run (it retries in 6 s)")
    info = wait_for(lambda: (i := claim_of(client_app, task.name, tag)) is not None
                    and i.owner == first.id and i, 20, "the claim handed back to the task id")
    assert info.ttl is not None and info.ttl > 4.0, "countdown + queued_ttl, not queued_ttl"
    assert task.apply_async((tag,)).id == first.id, "a duplicate during the countdown"
    assert first.get(timeout=30) == 1
    assert count(fx, tag) == 2


def test_a_duplicate_of_a_completed_call_resolves_without_its_celery_result(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.idem_quiet"]  # ignore_result=True: no Celery result is kept
    task.delay(tag, 21)
    wait_for(lambda: idem_state(client_app, task.name, tag, 21).status == "completed", 20,
             "the first call to complete")
    duplicate = task.delay(tag, 21)
    assert duplicate.get(timeout=5) == 42
    assert count(fx, tag) == 1


def test_replace_hands_the_claim_to_the_replacement_and_keeps_its_result(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.idem_replace"]
    first = task.delay(tag, 5)
    assert first.get(timeout=30) == 105
    record = wait_for(lambda: (r := idem_state(client_app, task.name, tag, 5)).status
                      == "completed" and r, 20, "the replacement's result to be stored")
    assert record.result == 105
    assert task.delay(tag, 5).get(timeout=30) == 105
    assert count(fx, tag) == 1, "the replaced body ran once"


def test_apply_honours_a_per_call_idempotency_key(client_app: Celery, fx: Any,
                                                  tag: str) -> None:
    task = client_app.tasks["t.idem_add"]
    key = f"apply-{tag}"
    assert task.apply((tag, 1, 1), idempotency_key=key).get() == 2
    assert task.apply((tag, 1, 1), idempotency_key=key).get() == 2
    assert count(fx, tag) == 1
    assert idem_state(client_app, task.name, tag, 1, 1, key=key).status == "completed"
    failed = task.apply((tag, 9, 9), idempotency_key=key)
    assert failed.failed() and type(failed.result).__name__ == "IdempotencyKeyReused"


def test_a_running_singleton_can_enqueue_its_successor(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    first = client_app.tasks["t.poller"].apply_async((tag, 1, 3))
    assert first.get(timeout=30) == 1
    wait_for(lambda: count(fx, tag) == 3, 30, "every successor to run")
    successors = fx.lrange(f"fx:{tag}:successors", 0, -1)
    assert len(successors) == 2 and len(set(successors) | {first.id}) == 3
    assert [client_app.AsyncResult(i).get(timeout=30) for i in successors] == [2, 3]
    runs = sorted(events(fx, tag), key=lambda e: e["start"])
    assert [e["n"] for e in runs] == [1, 2, 3]
    assert_no_overlap(runs)
    fences = [e["fence"] for e in runs]
    assert fences == sorted(fences) and len(set(fences)) == 3, "each run a higher fence"
    wait_for(lambda: claim_of(client_app, "t.poller", tag, 3) is None, 10, "the key freed")


def test_header_fields_merge_one_by_one(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.idem_single"]  # singleton and idempotent
    key = f"merge-{tag}"
    assert task.apply_async((tag, 3), idempotency_key=key).get(timeout=30) == 3
    sent = client_app.send_task(task.name, (tag, 3), headers={HEADER: {"idempotency_key": key}})
    assert sent.get(timeout=30) == 3
    assert count(fx, tag) == 1, "the explicit key in a partial header was kept"


def test_a_run_that_loses_its_lease_is_told(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.lose"]  # lock_ttl=1: renewed every ~0.33 s
    result = task.delay(tag)
    wait_for(lambda: count(fx, tag) == 1, 20, "the run to start")
    store = installed(client_app).kv.store
    assert break_lock(store, (task.name, task.kv_keys((tag,)).singleton))
    assert result.get(timeout=30) == {"lost": True, "checkpoint": "LockLost"}


def test_a_claim_retried_after_a_lost_reply_is_published(
    client_app: Celery, monkeypatch: pytest.MonkeyPatch, tag: str
) -> None:
    """Redis ran the claim but the reply was lost (a stall past the socket timeout): the
    retried claim is this call's own, so the message is still published (rule 13)."""
    kv = installed(client_app).kv
    client: Any = kv.store.client
    original = client.execute_command
    lost: list[Any] = []

    def lose_first_reply(*args: Any, **kwargs: Any) -> Any:
        reply = original(*args, **kwargs)
        if args[0] == "EVALSHA" and not lost:
            lost.append(args)
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return reply

    published: list[str] = []
    monkeypatch.setattr(client, "execute_command", lose_first_reply)
    monkeypatch.setattr(client_app.amqp, "send_task_message",
                        lambda *a, **k: published.append(a[2].headers["id"]))
    result = client_app.tasks["t.single"].apply_async((tag, 1))
    assert lost, "the claim's reply was lost once"
    assert published == [result.id]
    info = claim_of(client_app, "t.single", tag, 1)
    assert info is not None and info.owner == result.id


def test_a_phase_is_one_round_trip(client_app: Celery, monkeypatch: pytest.MonkeyPatch,
                                   tag: str) -> None:
    """Every feature on: enqueue claim, enqueue confirm, execution start, final outcome."""

    @client_app.task(name=f"t.everything.{tag}", shared=False, base=KVTask, singleton=True,
                     idempotent=True, global_rate_limit=["100/s", "1000/m"],
                     rate_limit_key="{tenant}", concurrency_limit=2, cache_ttl=60)
    def everything(tenant: str, x: int) -> int:
        return x

    monkeypatch.setattr(client_app.amqp, "send_task_message", lambda *a, **k: None)
    warm = everything.apply_async((f"{tag}-warm", 1))  # loads the phases' scripts
    everything.apply((f"{tag}-warm", 1), task_id=warm.id)
    client: Any = installed(client_app).kv.store.client
    sent: list[str] = []
    original = client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counting)
    result = everything.apply_async((tag, 1))
    assert sent == ["EVALSHA", "EVALSHA"], "claim, confirm"
    sent.clear()
    assert everything.apply((tag, 1), task_id=result.id).get() == 1
    assert sent == ["EVALSHA", "EVALSHA"], "start, final outcome"
    # ... and those same scripts counted what they decided (kv_metrics is on by default)
    counted = totals(read_counts(installed(client_app).kv.store, 2)[1])
    admitted = {f: n for (task, f, event, _), n in counted.items()
                if task == everything.name and event == "admitted"}
    assert admitted == dict.fromkeys(
        ["singleton", "idempotency", "rate_limit", "concurrency", "cache"], 2)


def test_a_redelivered_message_of_a_running_singleton_never_runs_it_again(
    celery_env: Any, fx: Any, tag: str
) -> None:
    """acks_late and a Redis broker whose visibility timeout (2 s) is shorter than the task
    (8 s): the broker delivers the message again while it runs, and again later. The body
    runs once; the copies wait for it, then are acknowledged without running (rule 12)."""
    import dataclasses

    broker = celery_env.broker.rsplit("/", 1)[0] + "/7"  # a queue no other worker reads
    env = dataclasses.replace(celery_env, broker=broker, conf={
        "broker_transport_options": {"visibility_timeout": 2, "unacked_restore_interval": 1,
                                     "unacked_restore_throttle": 1}})
    worker = Worker(env)
    try:
        app = env.app("ckv-redelivery")
        result = app.tasks["t.single_late"].apply_async((tag, 8.0))
        assert result.get(timeout=60) == 1
        wait_for(lambda: "already finished" in worker.log_text(), 60,
                 "a redelivered copy to be acknowledged without running")
        assert count(fx, tag) == 1, "the body ran once"
    finally:
        worker.stop()
