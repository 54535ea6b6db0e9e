"""Singleton tasks on real workers: one queued-or-running instance, freed at every final outcome."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from celery_kv import DuplicateTask, LockNotAcquired
from celery_kv.celery.install import installed
from celery_kv.celery.keys import is_run_of
from celery_kv.primitives.lock import LockInfo, describe
from tests.celery.conftest import (
    Env,
    Worker,
    assert_no_overlap,
    count,
    enqueue_from_processes,
    events,
    wait_for,
)

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def lock_of(app: Celery, name: str, *args: Any) -> LockInfo | None:
    task = app.tasks[name]
    keys = task.kv_keys(args)
    return describe(installed(app).kv.store, (task.name, keys.singleton))


def wait_free(app: Celery, name: str, *args: Any, timeout: float = 10.0) -> float:
    """Seconds until the task's singleton key is free."""
    start = time.monotonic()
    wait_for(lambda: lock_of(app, name, *args) is None, timeout, f"{name}{args} to be free")
    return time.monotonic() - start


def test_concurrent_enqueues_run_once_and_duplicates_get_the_holder(
    worker: Worker, celery_env: Env, client_app: Celery, fx: Any, tag: str
) -> None:
    args = [tag, 7, 0.5]
    ids = enqueue_from_processes(celery_env, "t.single", args, processes=4, each=3)
    assert len(ids) == 12
    assert len(set(ids)) == 1, "every duplicate must get the holder's task id"
    result = AsyncResult(ids[0], app=client_app)
    assert result.get(timeout=30) == 7
    wait_free(client_app, "t.single", *args)
    assert count(fx, tag) == 1
    # the key is free again: a new enqueue is a new task
    again = client_app.tasks["t.single"].apply_async(tuple(args))
    assert again.id != ids[0]
    assert again.get(timeout=30) == 7
    assert count(fx, tag) == 2
    assert_no_overlap(events(fx, tag))


def test_duplicate_raises_with_on_duplicate_raise(
    worker: Worker, client_app: Celery, tag: str
) -> None:
    task = client_app.tasks["t.single_raise"]
    first = task.apply_async((tag, 1.0))
    with pytest.raises(DuplicateTask) as caught:
        task.apply_async((tag, 1.0))
    assert caught.value.holder == first.id
    assert caught.value.task_name == "t.single_raise"
    assert first.id in str(caught.value)
    first.get(timeout=30)
    wait_free(client_app, "t.single_raise", tag, 1.0)


def test_send_task_bypass_is_held_to_the_rule_at_execution(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    args = (tag, 3, 0.6)
    first = client_app.tasks["t.single"].apply_async(args)
    bypass = [client_app.send_task("t.single", args) for _ in range(3)]
    # the same task id delivered twice (visibility timeout): held off while the first runs,
    # then acknowledged without running, since that task id has finished (rule 12)
    copy = client_app.send_task("t.single", args, task_id=first.id)
    assert first.get(timeout=30) == 3
    for result in bypass:
        assert result.get(timeout=30) == 3
    wait_for(lambda: len(events(fx, tag)) == 4, 30, "every other delivery to run in turn")
    wait_free(client_app, "t.single", *args)
    intervals = events(fx, tag)
    assert sum(e["id"] == copy.id for e in intervals) == 1
    assert_no_overlap(intervals)
    fences = [e["fence"] for e in sorted(intervals, key=lambda e: e["start"])]
    assert fences == sorted(fences) and len(set(fences)) == 4, "fences only go up"
    wait_free(client_app, "t.single", *args)


@pytest.mark.parametrize(
    ("name", "args", "state"),
    [
        ("t.single_fail", (), "FAILURE"),
        ("t.single_retry_fail", (), "FAILURE"),
        ("t.single_reject", (), None),
        ("t.single_ignore", (), None),
    ],
)
def test_key_is_free_after_each_final_outcome(
    worker: Worker, client_app: Celery, fx: Any, tag: str, name: str, args: tuple[Any, ...],
    state: str | None,
) -> None:
    result = client_app.tasks[name].apply_async((tag, *args))
    wait_for(lambda: count(fx, tag) >= 1, 20, f"{name} to run")
    if state is not None:
        wait_for(lambda: result.state == state, 20, f"{name} to end {state}")
    wait_free(client_app, name, tag, *args)
    if name == "t.single_retry_fail":
        assert count(fx, tag) == 2  # the first run and its one retry


def test_retries_re_enter_and_the_key_is_kept_until_success(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.single_retry"]
    result = task.apply_async((tag, 2))
    wait_for(lambda: count(fx, tag) >= 1, 20, "the first run")
    # while it waits for its retry, the key still belongs to that task id
    duplicate = task.apply_async((tag, 2))
    assert duplicate.id == result.id
    assert result.get(timeout=30) == 2
    assert result.state == "SUCCESS"
    assert count(fx, tag) == 3
    wait_free(client_app, "t.single_retry", tag, 2)


def test_revoke_frees_the_key_queued_and_running(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.single_hold"]  # lock_ttl=30
    queued = task.apply_async((tag, 30.0), countdown=1.0)
    assert lock_of(client_app, "t.single_hold", tag, 30.0).owner == queued.id
    client_app.control.revoke(queued.id)
    wait_free(client_app, "t.single_hold", tag, 30.0)
    assert count(fx, tag) == 0, "a revoked queued task never runs"

    running = task.apply_async((tag, 30.0))
    wait_for(lambda: count(fx, tag) == 1, 20, "the task to start")
    info = lock_of(client_app, "t.single_hold", tag, 30.0)
    assert info is not None and is_run_of(info.owner, running.id)
    client_app.control.revoke(running.id, terminate=True)
    elapsed = wait_free(client_app, "t.single_hold", tag, 30.0, timeout=20)
    assert elapsed < 10, "the worker's revoke hook frees it, not the 30 s lease"
    assert events(fx, tag) == []


def test_a_long_run_keeps_its_lock_through_heartbeats(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.single_wait"]  # lock_ttl=2
    result = task.apply_async((tag, 30.0))
    wait_for(lambda: count(fx, tag) == 1, 20, "the task to start")
    first = lock_of(client_app, "t.single_wait", tag, 30.0)
    time.sleep(5.0)  # 2.5 leases: only renewals keep it
    later = lock_of(client_app, "t.single_wait", tag, 30.0)
    assert first is not None and later is not None
    assert later.owner == first.owner and later.fence == first.fence
    assert task.apply_async((tag, 30.0)).id == result.id
    fx.set(f"fx:{tag}:go", 1)
    fences = result.get(timeout=30)
    assert fences[0] == fences[1] == first.fence
    wait_free(client_app, "t.single_wait", tag, 30.0)


def test_running_mode_duplicates_queue_but_never_overlap(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.running_retry"]
    results = [task.apply_async((tag, i, 0.3)) for i in range(4)]
    assert len({r.id for r in results}) == 4, "running mode does not dedupe the queue"
    assert [r.get(timeout=30) for r in results] == [0, 1, 2, 3]
    intervals = events(fx, tag)
    assert len(intervals) == 4
    assert_no_overlap(intervals)


def test_running_mode_skip_and_raise(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    skip = client_app.tasks["t.running_skip"]
    first = skip.apply_async((tag, 1, 3.0))
    wait_for(lambda: count(fx, tag) == 1, 20, "the first run")
    skipped = skip.apply_async((tag, 2, 0.0))
    assert skipped.get(timeout=20) is None
    assert first.get(timeout=20) == 1
    assert count(fx, tag) == 1

    other = tag + "-r"
    raising = client_app.tasks["t.running_raise"]
    first = raising.apply_async((other, 1, 3.0))
    wait_for(lambda: count(fx, other) == 1, 20, "the first run")
    refused = raising.apply_async((other, 2, 0.0))
    with pytest.raises(LockNotAcquired) as caught:
        refused.get(timeout=20)
    assert caught.value.holder == first.id
    assert first.get(timeout=20) == 1


def test_sigkill_frees_the_key_within_lock_ttl_and_redelivery_runs_once(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.single_kill"]  # lock_ttl=2, acks_late, reject_on_worker_lost
    result = task.apply_async((tag,))
    pid = int(wait_for(lambda: fx.get(f"fx:{tag}:pid"), 20, "the task to start"))
    held = lock_of(client_app, "t.single_kill", tag)
    assert held is not None and is_run_of(held.owner, result.id)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    fx.set(f"fx:{tag}:go", 1)  # the redelivered run returns at once

    def dead_run_gone() -> bool:
        info = lock_of(client_app, "t.single_kill", tag)
        return info is None or info.owner != held.owner

    wait_for(dead_run_gone, 15, "the dead run's lease to end", interval=0.005)
    freed = time.monotonic() - killed
    assert result.get(timeout=30) == 1
    done = time.monotonic() - killed
    assert count(fx, tag, "starts") == 2
    assert count(fx, tag) == 1, "the redelivered task ran exactly once"
    wait_free(client_app, "t.single_kill", tag)
    print(f"\nSIGKILL: key free after {freed:.2f}s (lock_ttl 2s); redelivered task done "
          f"after {done:.2f}s")
    assert freed < 2.0 + 1.5


def test_singleton_and_rate_limit_combine(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.combo"]  # running singleton + 3/s sliding log, max_retries=0
    results = [task.apply_async((tag, i)) for i in range(6)]
    assert sorted(r.get(timeout=60) for r in results) == list(range(6))
    runs = events(fx, tag)
    assert len(runs) == 6
    assert_no_overlap(runs)
    times = sorted(e["at"] for e in runs)
    for first, fourth in zip(times, times[3:], strict=False):
        assert fourth - first >= 1.0 - 1e-6
