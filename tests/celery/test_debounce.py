"""Debounce and keep-latest on real prefork workers and a real redis-server.

Times are Redis server time (the clock the bursts run on): triggers are stamped with
``TIME`` just before ``apply_async``, bodies stamp their own start.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain

from celery_kv import LockNotAcquired
from celery_kv.celery.context import Context
from tests.celery.apps import now
from tests.celery.conftest import Env, Worker, assert_no_overlap, count, events
from tests.celery.test_rabbitmq import AMQP, rabbitmq_up
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker]


def burst_key(app: Celery, task_name: str, tag: str) -> str:
    task = app.tasks[task_name]
    ctx = Context(task, "", (tag, 0), {}, {})
    ctx.fill_header()
    return str(task.kv.store.keys.key("burst", (task_name, ctx.header["debounce_key"])))


def burst(app: Celery, task_name: str, tag: str) -> dict[str, str]:
    client = app.tasks[task_name].kv.client
    raw = client.hgetall(burst_key(app, task_name, tag))
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in raw.items()}


def test_a_burst_of_50_triggers_runs_once_with_the_last_arguments(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.debounce"]  # debounce=1.0
    results, sent = [], []
    for x in range(50):  # 50 triggers over about 3 s, gaps of 60 ms < debounce
        sent.append(now(fx))
        results.append(task.apply_async((tag, x)))
        time.sleep(0.06)
    assert len({r.id for r in results}) == 1, "every caller of one burst gets one task id"
    assert [r.get(timeout=20) for r in results] == [49] * 50
    runs = events(fx, tag)
    assert len(runs) == 1 and runs[0]["x"] == 49 and runs[0]["triggers"] == 50
    delay = runs[0]["start"] - sent[-1]
    print(f"\ndebounce=1.0: one run {delay:.3f} s after the last of 50 triggers")
    assert 1.0 <= delay <= 1.5
    wait_for(lambda: not burst(client_app, "t.debounce", tag), 5, "the burst record to go")


def test_the_maximum_wait_bounds_a_burst_that_never_pauses(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.debounce_max"]  # debounce=1, debounce_max_wait=3
    sent: list[tuple[float, Any]] = []
    for x in range(50):  # a trigger every 0.2 s for 10 s: never a 1 s pause
        sent.append((now(fx), task.apply_async((tag, x))))
        time.sleep(0.2)
    values = [r.get(timeout=20) for _, r in sent]
    runs = sorted(events(fx, tag), key=lambda e: e["start"])
    assert_no_overlap(runs)
    starts = [sent[0][0]] + [run["start"] for run in runs]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    print(f"\nmax wait 3 s: {len(runs)} runs for 50 triggers, gaps "
          f"{', '.join(f'{g:.2f}' for g in gaps)} s")
    assert max(gaps[:-1]) <= 3.5, "a run at least every debounce_max_wait (+0.5 s)"
    by_id = {run["id"]: run for run in runs}
    for x, ((at, result), value) in enumerate(zip(sent, values, strict=True)):
        run = by_id[result.id]
        assert value == run["x"] >= x, "a trigger's run has its arguments or newer ones"
        assert run["start"] >= at, "the run that covers a trigger started after it"
    assert sum(run["triggers"] for run in runs) == 50, "every trigger is covered once"
    assert runs[-1]["x"] == 49


def test_leading_edge_runs_the_first_trigger_at_once_and_absorbs_the_rest(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.debounce_lead"]  # debounce=1.0, edge leading
    first_at = now(fx)
    results = [task.apply_async((tag, x)) for x in range(5)]
    assert len({r.id for r in results}) == 1
    assert [r.get(timeout=10) for r in results] == [0] * 5
    runs = events(fx, tag)
    assert len(runs) == 1 and runs[0]["x"] == 0
    assert runs[0]["start"] - first_at < 0.5, "the leading edge does not wait"
    wait_for(lambda: not burst(client_app, "t.debounce_lead", tag), 5,
             "the window to close")
    assert task.apply_async((tag, 7)).get(timeout=10) == 7, "a new window after a pause"
    assert [e["x"] for e in events(fx, tag)] == [0, 7]


def test_keep_latest_runs_once_after_the_current_run_with_the_latest_arguments(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.latest"]  # singleton_mode="latest"
    first = task.apply_async((tag, 0, 1.0))
    wait_for(lambda: fx.get(f"fx:{tag}:pid"), 10, "the first run to start")
    during = [task.apply_async((tag, x, 0.2)) for x in range(1, 6)]
    assert len({r.id for r in during}) == 1 and during[0].id != first.id
    assert first.get(timeout=10) == 0
    assert [r.get(timeout=10) for r in during] == [5] * 5
    runs = events(fx, tag)
    assert [r["x"] for r in runs] == [0, 5]
    assert_no_overlap(runs)
    assert runs[1]["fence"] > runs[0]["fence"]


def test_keep_latest_from_many_processes_loses_no_trigger_and_never_overlaps(
    worker: Worker, client_app: Celery, celery_env: Env, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.latest"]
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        batches = pool.starmap(_trigger_in_sequence,
                               [(celery_env, tag, p, 12) for p in range(3)])
    sent = [item for batch in batches for item in batch]
    stamp = {x: at for x, at, _ in sent}
    for x, at, task_id in sent:
        value = task.AsyncResult(task_id).get(timeout=30)
        run = next(r for r in events(fx, tag) if r["id"] == task_id)
        assert value == run["x"] and run["start"] >= at, "its run started after the trigger"
        # its arguments are its own or a later trigger's (stamps are taken just before
        # apply_async, so two processes' stamps may be a few ms out of Redis's order)
        assert stamp[value] >= at - 0.05, f"trigger {x} was handed the older {value}"
    runs = events(fx, tag)
    assert_no_overlap(runs)
    last_of_each = {p: max(x for x, _, _ in sent if x // 100 == p) for p in range(3)}
    ran = {r["x"] for r in runs}
    final = max(runs, key=lambda r: r["start"])
    assert final["x"] in last_of_each.values()
    print(f"\nkeep-latest: {len(sent)} triggers from 3 processes, {len(runs)} runs")
    assert len(runs) < len(sent)
    assert ran <= {x for x, _, _ in sent}


def _trigger_in_sequence(env: Env, tag: str, process: int, n: int) -> list[tuple[int, float,
                                                                                  str]]:
    app = env.app("ckv-producer")
    task = app.tasks["t.latest"]
    from tests.celery.apps import effects

    fx = effects(env.fx)
    out = []
    for i in range(n):
        x = process * 100 + i
        at = now(fx)
        out.append((x, at, task.apply_async((tag, x, 0.05)).id))
        time.sleep(0.03)
    return out


def test_callers_from_a_chain_a_link_send_task_and_apply_all_resolve(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.debounce"]  # debounce=1.0
    plain = task.apply_async((tag, 1))
    sent = client_app.send_task("t.debounce", (tag, 2))  # joins when a worker receives it
    wait_for(lambda: burst(client_app, "t.debounce", tag).get("pn") == "2", 5,
             "the send_task trigger to join the burst")
    in_chain = chain(task.s(tag, 3), client_app.tasks["t.collect"].s(tag)).apply_async()
    linked = task.apply_async((tag, 4), link=client_app.tasks["t.collect"].s(tag))
    last = task.apply_async((tag, 5))
    assert last.id == plain.id
    assert plain.get(timeout=20) == 5
    assert in_chain.get(timeout=20) == 5, "the chain goes on with the burst's result"
    assert linked.get(timeout=20) == 5 and sent.get(timeout=20) == 5
    runs = events(fx, tag)
    assert [r["x"] for r in runs] == [5], "one run for the whole burst"
    collected = f"fx:{tag}:collected"  # a link's callback may run after linked.get() returns
    wait_for(lambda: fx.llen(collected) >= 2, 10, "the chain's and the link's callbacks")
    assert sorted(json.loads(v) for v in fx.lrange(collected, 0, -1)) == [5, 5]
    # apply() runs at once, eagerly, when the key is not running
    assert task.apply((tag, 6)).get() == 6
    assert [r["x"] for r in events(fx, tag)] == [5, 6]


def test_apply_refuses_while_the_key_runs(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.latest"]
    running = task.apply_async((tag, 1, 1.5))
    wait_for(lambda: fx.get(f"fx:{tag}:pid"), 10, "the run to start")
    with pytest.raises(LockNotAcquired):
        task.apply((tag, 2, 0.0)).get()
    assert running.get(timeout=10) == 1
    assert count(fx, tag) == 1


def test_arguments_over_the_limit_are_refused_and_leave_nothing(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.debounce"]
    client = task.kv.client
    before = set(client.scan_iter(match=f"{task.kv.prefix}:burst:*"))
    with pytest.raises(ValueError, match=r"t\.debounce.*at most 524,288") as exc:
        task.apply_async((tag, "x" * (10 * 1024 * 1024)))
    assert tag in str(exc.value)
    with pytest.raises(TypeError, match=r"t\.debounce"):
        task.apply_async((tag, object()))
    assert set(client.scan_iter(match=f"{task.kv.prefix}:burst:*")) == before
    assert not burst(client_app, "t.debounce", tag)


def test_hostile_keys_do_not_collide(worker: Worker, client_app: Celery, fx: Any,
                                     tag: str) -> None:
    task = client_app.tasks["t.debounce_lead"]
    a = task.apply_async((f"{tag}:a:b", 1))
    b = task.apply_async((f"{tag}:a", 2))
    c = task.apply_async(({"__type__": "datetime", "v": tag}, 3))
    assert len({a.id, b.id, c.id}) == 3
    assert (a.get(timeout=10), b.get(timeout=10), c.get(timeout=10)) == (1, 2, 3)


# -- faults ------------------------------------------------------------------------------------


def test_a_run_killed_mid_body_fires_again_once_its_lease_ends(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    """acks_late + reject_on_worker_lost: the killed child's message comes back at once and
    waits for the dead run's lease. Once it ends, whichever fires first runs: the dead
    burst again (same arguments), or the next burst, whose newer arguments then cover the
    dead one's triggers (its message follows that run). No trigger is lost either way."""
    task = client_app.tasks["t.debounce_kill"]  # debounce=1.5, lock_ttl=2
    results = [task.apply_async((tag, x)) for x in (1, 2, 3)]
    started = wait_for(lambda: fx.lrange(f"fx:{tag}:starts", 0, -1), 15, "the burst to fire")
    pid = json.loads(started[0])["pid"]
    lease_end = int(burst(client_app, "t.debounce_kill", tag)["rdl"]) / 1000.0
    during = task.apply_async((tag, 4))  # a trigger while it runs: the next burst
    assert during.id != results[0].id
    os.kill(pid, signal.SIGKILL)
    fx.set(f"fx:{tag}:go", 1)
    got = {r.get(timeout=30) for r in results}
    assert len(got) == 1 and got <= {3, 4}, "the dead burst's callers: its run, or a newer"
    assert during.get(timeout=30) == 4
    starts = [json.loads(s) for s in fx.lrange(f"fx:{tag}:starts", 0, -1)]
    assert starts[0]["x"] == 3
    assert all(s["at"] >= lease_end - 0.05 for s in starts[1:]), "nothing before the lease end"
    runs = events(fx, tag)
    assert sorted(r["x"] for r in runs) == ([3, 4] if got == {3} else [4])
    assert_no_overlap(runs)
    print(f"\nSIGKILL mid-body: the dead burst's callers got {got.pop()}; runs after the "
          f"lease: {[s['x'] for s in starts[1:]]}")


@pytest.fixture
def amqp_env(celery_env: Env) -> Env:
    if not rabbitmq_up():  # scripts/ensure-rabbitmq starts it; a failure here is real
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (run scripts/ensure-rabbitmq)")
    queue = f"ckv-burst-{os.getpid()}-{time.monotonic_ns()}"
    # the timer as a broker ETA message (kv_delay_store=False): the path this test holds to
    # a SIGKILL; the delay store's own is in tests/celery/test_delay_store.py
    return dataclasses.replace(celery_env, broker=AMQP,
                               conf={"task_default_queue": queue, "task_queues": None,
                                     "kv_delay_store": False})


@pytest.fixture
def killed_first(amqp_env: Env) -> Iterator[list[Worker]]:
    workers: list[Worker] = []
    try:
        yield workers
    finally:
        for started in workers:
            started.stop()


def test_a_worker_killed_between_arm_and_fire_loses_no_trigger(
    amqp_env: Env, killed_first: list[Worker], fx: Any, tag: str
) -> None:
    """The burst's timer is its message: RabbitMQ hands the unacked ETA message of a worker
    that died to the next worker, which fires the burst with the latest arguments."""
    queue = amqp_env.conf["task_default_queue"]
    first = Worker(amqp_env, queues=queue)
    killed_first.append(first)
    app = amqp_env.app("ckv-amqp-burst")
    task = app.tasks["t.debounce_kill"]  # debounce=1.5
    fx.set(f"fx:{tag}:go", 1)
    results = [task.apply_async((tag, x)) for x in (1, 2, 3)]
    inspect = app.control.inspect([f"{first.node}@{os.uname().nodename}"], timeout=1.0)

    def held_by_first() -> bool:
        scheduled = inspect.scheduled() or {}
        return any(entry["request"]["id"] == results[0].id
                   for entries in scheduled.values() for entry in entries)

    wait_for(held_by_first, 10, "the first worker to hold the burst's timer")
    os.killpg(first.pid, signal.SIGKILL)
    killed_first.append(Worker(amqp_env, queues=queue))
    assert {r.get(timeout=30) for r in results} == {3}
    assert [r["x"] for r in events(fx, tag)] == [3], "the burst ran once, latest arguments"


# -- definitions -------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "named"), [
    ({"debounce": 0}, "debounce=0"),
    ({"debounce": -1}, "debounce=-1"),
    ({"debounce": 2.0, "debounce_max_wait": 1.0}, "debounce_max_wait=1.0"),
    ({"debounce": 1.0, "debounce_edge": "middle"}, "debounce_edge='middle'"),
    ({"debounce_max_wait": 3.0}, "debounce_max_wait=3.0"),
    ({"debounce": 1.0, "singleton": True}, "debounce=1.0"),
    ({"debounce": 1.0, "idempotent": True}, "idempotent=True"),
    ({"debounce": 1.0, "cache_ttl": 60}, "cache_ttl=60"),
    ({"singleton": True, "singleton_mode": "latest", "idempotent": True}, "idempotent=True"),
    ({"singleton": True, "singleton_mode": "newest"}, "singleton_mode='newest'"),
    ({"singleton": True, "singleton_mode": "latest", "on_duplicate": "raise"},
     "on_duplicate='raise'"),
    ({"singleton": True, "singleton_mode": "latest", "on_locked": "skip"}, "on_locked='skip'"),
])
def test_bad_options_fail_at_definition_and_name_the_value(
    celery_env: Env, options: dict[str, Any], named: str
) -> None:
    from celery_kv import KVTask

    app = celery_env.app("ckv-bad-debounce")
    with pytest.raises((ValueError, TypeError)) as caught:
        @app.task(base=KVTask, shared=False, name="t.bad_debounce", **options)
        def bad(tag: str, x: int) -> int:
            return x
    assert named in str(caught.value) and "t.bad_debounce" in str(caught.value)
    assert "t.bad_debounce" not in app.tasks
