"""``celery kv why TASK_ID`` on the shared prefork worker: it names the cause and the holder.

Each test makes the worker hold a task back for one reason (a singleton key held by a
running task, every concurrency slot of its key taken, a rate-limit slot reserved ahead, a
debounce burst still gathering triggers), polls the command until the task is seen there
(it may be in flight between two deferrals), checks the verdict and its keys, and then lets
the task finish.
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner

from celery_kv.celery.cli import kv
from celery_kv.celery.features.concurrency import publish
from celery_kv.primitives.fair_pool import FairPool, key_id
from celery_kv.store import Step
from tests.celery.conftest import Worker, count
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker]


def why(app: Celery, task_id: str, *options: str) -> Any:
    """The command's --json answer (through the `kv` group, as `celery -A app kv why`);
    a failure's one line as ``{"cause": None, "error": line}``."""
    result = CliRunner().invoke(kv, ["why", task_id, "--json", *options],
                                obj=SimpleNamespace(app=app), catch_exceptions=False)
    if result.exit_code != 0:
        return {"cause": None, "error": result.output.strip()}
    return json.loads(result.stdout)


def seen(app: Celery, task_id: str, cause: str, timeout: float = 5.0, *,
         naming: str = "") -> Any:
    """Poll until the command gives ``cause`` (its verdict ``naming`` that) for the task:
    it may be in flight, or between two writes of one deferral."""
    answers: list[Any] = []

    def check() -> Any:
        answers.append(why(app, task_id))
        last = answers[-1]
        return last if last["cause"] == cause and naming in last["verdict"] else None

    try:
        return wait_for(check, timeout, f"`kv why` to say {cause}", interval=0.05)
    except AssertionError:
        raise AssertionError(f"never {cause}; last answers: {answers[-3:]}") from None


def test_blocked_by_a_singleton_names_the_holder_and_its_fence(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.running_retry"]  # singleton_mode="running", key "{tag}"
    holder = task.apply_async((tag, 1, 1.5))
    wait_for(lambda: count(fx, tag) == 1, 5, "the holder to run")
    blocked = task.apply_async((tag, 2, 0.0))

    answer = seen(client_app, blocked.id, "singleton")
    assert answer["holder"] == holder.id and answer["task_name"] == "t.running_retry"
    assert answer["verdict"].startswith(f"blocked by singleton key '{tag}': held by "
                                        f"{holder.id} (running, ")
    lock, = (r for r in answer["keys"] if r["feature"] == "singleton")
    assert lock["holder"] == holder.id and lock["state"] == "running" and not lock["ours"]
    assert isinstance(lock["fence"], int) and f"fence {lock['fence']}" in answer["verdict"]
    assert holder.get(timeout=10) == 1 and blocked.get(timeout=10) == 2


def test_waiting_for_a_concurrency_slot_names_the_holders_and_the_place_in_line(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.conc"]  # concurrency_limit=2 per "{tag}"
    pool = FairPool(task.kv.store, "t.conc")
    other = f"{uuid.uuid4()}#run:elsewhere"  # a run on another worker holds one slot

    def step(script: str, mode: str) -> list[Any]:
        args = pool.args(token=other, kid=key_id(tag), lease_ms=20_000, limit=2,
                         queued_ms=60_000, grant_ms=20_000, mode=mode)
        return list(task.kv.store.run_phase("test", [Step(script, pool.keys, args)])
                    .replies[0])

    assert step("task_concurrency_start", "start")[0] in (b"ok", "ok")
    running = task.apply_async((tag, 1, 1.5))
    wait_for(lambda: count(fx, tag) == 1, 5, "the second slot's run to start")
    waiting = task.apply_async((tag, 2, 0.0))
    try:
        answer = seen(client_app, waiting.id, "concurrency")
        assert answer["verdict"].startswith(f"waiting for a concurrency slot of '{tag}': "
                                            "2/2 held by ")
        assert running.id in answer["verdict"] and other.split("#")[0] in answer["verdict"]
        assert answer["verdict"].endswith("position 1 of 1")
        holders = {r["holder"] for r in answer["keys"] if r["state"] == "running"}
        assert holders == {running.id, other.split("#")[0]}
        mine, = (r for r in answer["keys"] if r["ours"])
        assert mine["state"] == "waiting 1 of 1"
    finally:
        publish(client_app, step("task_concurrency_release", "grant")[1:])
    assert waiting.get(timeout=10) == 2 and running.get(timeout=10) == 1


def test_rate_limited_shows_the_reserved_slot(
    worker: Worker, client_app: Celery, tag: str
) -> None:
    task = client_app.tasks["t.rl_tenant"]  # 4/s GCRA per tenant: 12 calls span ~2 s
    results = [task.apply_async((tag, tag, i)) for i in range(12)]
    answer = seen(client_app, results[-1].id, "rate_limit", naming=f"'{tag}'")
    assert answer["verdict"].startswith(f"rate limited on '{tag}': reserved slot in ")
    reservation, = (r for r in answer["keys"] if r["ours"])
    assert reservation["state"] == "reservation" and 0 < reservation["ttl"] <= 3
    assert any(r["state"].startswith("reserved: slot in") for r in answer["keys"])
    for result in results:
        result.get(timeout=10)


def test_debounced_shows_the_burst_due_time_and_triggers(
    worker: Worker, client_app: Celery, tag: str
) -> None:
    task = client_app.tasks["t.debounce"]  # debounce=1.0 per "{tag}"
    first = task.apply_async((tag, 0))
    answer = why(client_app, first.id, "--task", "t.debounce")
    if answer["cause"] != "debounce":  # the burst fired already: start another
        first = task.apply_async((tag, 1))
        answer = why(client_app, first.id, "--task", "t.debounce")
    assert answer["cause"] == "debounce", answer
    assert answer["verdict"].startswith(f"debounced: burst '{tag}' fires in ")
    assert answer["verdict"].endswith("1 trigger absorbed")
    burst, = answer["keys"]
    assert burst["holder"] == first.id and 0 < burst["ttl"] <= 1.0
    assert first.get(timeout=10) in (0, 1)
    assert why(client_app, first.id)["verdict"] == "finished: SUCCESS"
