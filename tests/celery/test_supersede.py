"""Singleton ``on_duplicate="replace"`` and ``"supersede"``: a newer call wins over the holder.

The Lua branches run on every backend (``kv``); the lifecycle runs on real prefork workers
and a real redis-server. Times are Redis server time: calls are stamped with ``TIME``
just before ``apply_async``, bodies stamp their own start.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery

from celery_kv import KV, KVTask, LockLost, SingletonTask, Superseded, install, signals
from celery_kv.store import Step
from celery_kv.testing import fake_kv
from tests.celery.apps import now
from tests.celery.conftest import Worker, count, events
from tests.celery.test_options import new_app
from tests.conftest import wait_for

LEASE, CLAIM, FENCE, TOMB = 30_000, 10_000, 60_000, 90_000


def text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def reply(kv: KV, step: Step) -> list[Any]:
    answer = kv.store.run_phase("test", [step])
    return [text(v) for v in answer.replies[0]]


class Lock:
    """One singleton lock's keys and its scripts, called one step at a time."""

    def __init__(self, kv: KV, record: str) -> None:
        self.kv = kv
        lock = kv.store.keys.key("lock", ("t", record))
        self.keys = (lock, lock + ":fence", lock + ":superseded")

    def claim(self, task_id: str, nonce: str, mode: str, running: str = "",
              pinned: bool = False) -> list[Any]:
        return reply(self.kv, Step("task_singleton_claim", self.keys, (
            task_id, nonce, CLAIM, FENCE, running, mode, TOMB, "1" if pinned else "")))

    def unclaim(self, task_id: str, nonce: str, mode: str) -> list[Any]:
        return reply(self.kv, Step("task_singleton_unclaim", self.keys,
                                   (task_id, nonce, CLAIM, FENCE, "", mode, TOMB)))

    def confirm(self, task_id: str) -> list[Any]:
        return reply(self.kv, Step("task_singleton_confirm", self.keys[:1], (task_id, LEASE)))

    def start(self, task_id: str, mode: str, message: str = "", run: str = "1") -> list[Any]:
        return reply(self.kv, Step("task_singleton_start", self.keys, (
            f"{task_id}#run:{run}", task_id, LEASE, FENCE, LEASE, "queued", mode, message)))

    def renew(self, task_id: str, mode: str) -> list[Any]:
        return reply(self.kv, Step("task_singleton_renew", (self.keys[0], self.keys[2]),
                                   (f"{task_id}#run:1", LEASE, task_id, mode)))

    def finish(self, task_id: str) -> list[Any]:
        return reply(self.kv, Step("task_singleton_finish", self.keys[:2],
                                   (f"{task_id}#run:1", task_id, LEASE, FENCE, "")))

    def record(self) -> dict[str, str]:
        raw = self.kv.client.hgetall(self.keys[0])
        return {text(k): text(v) for k, v in raw.items()}

    def tombstones(self) -> set[str]:
        return {text(m) for m in self.kv.client.smembers(self.keys[2])}


# -- the scripts, one branch at a time -----------------------------------------------------


def test_replace_keeps_the_queued_holder_and_takes_its_message(kv: KV) -> None:
    lock = Lock(kv, "replace")
    assert lock.claim("q", "n1", "replace")[0] == "ok"
    assert lock.confirm("q") == ["ok"]
    assert lock.claim("n", "n2", "replace") == ["ok", "", "replaced", "q"]
    assert lock.claim("n", "n2", "replace") == ["ok", "", "replaced", "q"], "retried: same"
    assert lock.record()["owner"] == "q" and lock.record()["nonce"] == "n2"
    assert lock.tombstones() == {"msg:n1", "replaced:q"}
    assert kv.client.pttl(lock.keys[2]) >= TOMB - 1000
    assert lock.start("q", "replace", "n1")[3] == "stale", "the older message"
    assert lock.start("q", "replace", "n2")[0] == "ok", "the newer message"
    assert lock.start("q", "replace", "n1")[3] == "stale", "stale while the newer one runs"
    assert lock.start("q", "replace", "", run="2")[3] == "stale", \
        "no nonce, once replaced: an older message (a send_task, or its retry)"
    assert lock.claim("m", "n3", "replace")[:2] == ["deny", "q#run:1"], "a run: a duplicate"
    lock.finish("q")
    assert lock.start("q", "replace", "n1")[3] == "stale", "stale once the key is free"


def test_a_message_without_a_nonce_is_stale_only_once_replaced(kv: KV) -> None:
    lock = Lock(kv, "replace-plain")
    lock.claim("q", "n1", "replace")
    assert lock.start("q", "replace", "")[0] == "ok", "never replaced: it runs"


def test_a_pinned_holder_is_never_replaced(kv: KV) -> None:
    """A holder whose id a caller or canvas holds (a link, a given id) keeps its message:
    replacing it would drop its callbacks. A newer call is a plain duplicate."""
    lock = Lock(kv, "replace-pinned")
    lock.claim("q", "n1", "replace", pinned=True)
    lock.confirm("q")
    assert lock.claim("n", "n2", "replace")[:2] == ["deny", "q"]
    assert lock.record()["nonce"] == "n1" and lock.tombstones() == set()


def test_an_undone_replace_gives_the_holder_its_message_back(kv: KV) -> None:
    lock = Lock(kv, "replace-undo")
    lock.claim("q", "n1", "replace")
    lock.confirm("q")
    lock.claim("n", "n2", "replace")
    assert lock.unclaim("n", "n2", "replace") == ["ok"]
    assert lock.record()["owner"] == "q" and lock.record()["nonce"] == "n1"
    assert "prev" not in lock.record() and lock.tombstones() == set()
    assert lock.start("q", "replace", "n1")[0] == "ok"


def test_supersede_takes_a_queued_holders_key_with_the_next_fence(kv: KV) -> None:
    lock = Lock(kv, "supersede-queued")
    first = lock.claim("q", "n1", "supersede")
    lock.confirm("q")
    took = lock.claim("n", "n2", "supersede")
    assert took[0] == "ok" and took[2:] == ["superseded", "q"]
    assert int(took[1]) > int(first[1])
    assert lock.claim("n", "n2", "supersede") == ["ok", "", "superseded", "q"], "retried"
    assert lock.tombstones() == {"id:q"}
    assert lock.start("q", "supersede")[3] == "superseded"
    assert lock.confirm("n") == ["ok"]
    assert not {"prev_owner", "prev_fence", "prev_nonce", "prev_until"} & set(lock.record())
    assert lock.start("n", "supersede") == ["ok", took[1]]


def test_an_undone_supersede_gives_the_key_back(kv: KV) -> None:
    lock = Lock(kv, "supersede-undo")
    first = lock.claim("x", "n1", "supersede")
    lock.confirm("x")
    lock.start("x", "supersede")
    held = lock.record()
    lock.claim("n", "n2", "supersede")
    assert lock.unclaim("n", "n2", "supersede") == ["ok"]
    assert lock.record() == held
    assert {k: held[k] for k in ("owner", "fence", "nonce")} == {
        "owner": "x#run:1", "fence": first[1], "nonce": "n1"}
    assert 0 < kv.client.pttl(lock.keys[0]) <= LEASE
    assert lock.tombstones() == set()
    assert lock.renew("x", "supersede") == ["ok"]


def test_a_superseded_run_is_told_at_its_heartbeat_and_frees_nothing(kv: KV) -> None:
    lock = Lock(kv, "supersede-run")
    lock.claim("x", "n1", "supersede")
    lock.start("x", "supersede")
    assert lock.renew("x", "supersede") == ["ok"]
    assert lock.claim("n", "n2", "supersede")[2:] == ["superseded", "x"]
    assert lock.renew("x", "supersede") == ["deny", "superseded", "n"]
    assert lock.renew("x", "") == ["deny"], "without the mode: a plain loss"
    assert lock.finish("x") == ["ok", 0]
    assert lock.record()["owner"] == "n"


def test_the_plain_modes_ignore_tombstones(kv: KV) -> None:
    lock = Lock(kv, "plain")
    lock.claim("q", "n1", "")
    assert lock.claim("n", "n2", "")[:2] == ["deny", "q"]
    kv.client.sadd(lock.keys[2], "id:q", "msg:n1")
    kv.client.pexpire(lock.keys[2], TOMB)
    assert lock.start("q", "", "n1")[0] == "ok"


def test_superseded_survives_the_json_round_trip() -> None:
    exc = Superseded("tenant-7", "new-id", "t.sync")
    again = Superseded(*json.loads(json.dumps(exc.args)))
    assert isinstance(again, LockLost)
    assert str(again) == str(exc)
    for part in ("t.sync", "tenant-7", "new-id", "superseded"):
        assert part in str(again)


# -- definition errors ---------------------------------------------------------------------


def body() -> None:
    """A task body for the definition checks."""


@pytest.fixture
def app() -> Celery:
    app = new_app()
    install(app, kv=fake_kv())
    return app


@pytest.mark.parametrize(("base", "options", "named"), [
    (KVTask, {"on_duplicate": "supersede"}, "on_duplicate='supersede' needs singleton=True"),
    (KVTask, {"on_duplicate": "replace"}, "on_duplicate='replace' needs singleton=True"),
    (SingletonTask, {"on_duplicate": "replace", "singleton_mode": "running"},
     "on_duplicate='replace' needs singleton_mode='queued'"),
    (SingletonTask, {"on_duplicate": "supersede", "singleton_mode": "latest"},
     "on_duplicate='supersede' needs singleton_mode='queued'"),
    (SingletonTask, {"supersede_terminate": True},
     "supersede_terminate=True needs on_duplicate='supersede'"),
    (SingletonTask, {"on_duplicate": "replace", "supersede_terminate": True},
     "supersede_terminate=True needs on_duplicate='supersede'"),
    (SingletonTask, {"on_duplicate": "supersede", "supersede_terminate": "yes"},
     "supersede_terminate='yes'"),
])
def test_bad_options_fail_at_definition(app: Celery, base: type[Any], options: dict[str, Any],
                                        named: str) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        app.task(base=base, name="t.x", shared=False, **options)(body)
    assert "task 't.x'" in str(caught.value) and named in str(caught.value)
    assert "t.x" not in app.tasks, "no half-defined task is left behind"


def test_good_options_define(app: Celery) -> None:
    task = app.task(base=SingletonTask, name="t.ok", shared=False, on_duplicate="supersede",
                    supersede_terminate=True)(body)
    assert task.supersede_terminate is True


# -- on real workers -----------------------------------------------------------------------


@pytest.mark.worker
def test_replace_runs_the_queued_task_once_with_the_newer_arguments_and_countdown(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.replace"]
    replaced: list[dict[str, Any]] = []

    def on_replaced(sender: Any, **named: Any) -> None:
        replaced.append(named)

    signals.task_replaced.connect(on_replaced, weak=False)
    try:
        older = task.apply_async((tag, 1), countdown=2)
        sent = now(fx)
        newer = task.apply_async((tag, 2, 2.5), countdown=0.5)  # still running at 2 s
    finally:
        signals.task_replaced.disconnect(on_replaced)
    assert newer.id == older.id, "the caller gets the queued holder's id"
    assert [r["task_id"] for r in replaced] == [older.id]
    wait_for(lambda: f"[{older.id}]: message dropped without running" in worker.log_text(),
             10, "the older message to be dropped")
    assert newer.get(timeout=10) == 2
    runs = events(fx, tag)
    assert [r["x"] for r in runs] == [2], "the older message never ran its body"
    delay = runs[0]["start"] - sent
    print(f"\nreplace: the newer countdown=0.5 ran {delay:.3f} s after its call")
    assert 0.4 <= delay <= 1.5
    assert count(fx, tag) == 1

    running = task.apply_async((tag, 3, 2.0))
    wait_for(lambda: count(fx, tag) == 2, 10, "the next run to start")
    assert task.apply_async((tag, 4)).id == running.id, "a run is a plain duplicate"
    assert running.get(timeout=10) == 3
    assert [r["x"] for r in events(fx, tag)] == [2, 3]
    assert task.AsyncResult(older.id).get(timeout=5) == 2, "the dropped message wrote nothing"


def starts(fx: Any, tag: str) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in events(fx, tag, "starts")}


@pytest.mark.worker
def test_supersede_tells_the_running_holder_which_ends_revoked(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.supersede"]  # lock_ttl=3: a heartbeat every second
    older = task.apply_async((tag, 1, 30.0))
    wait_for(lambda: older.id in starts(fx, tag), 10, "the older run to start")
    superseded: list[dict[str, Any]] = []

    def on_superseded(sender: Any, **named: Any) -> None:
        superseded.append(named)

    signals.task_superseded.connect(on_superseded, weak=False)
    try:
        called = now(fx)
        newer = task.apply_async((tag, 2, 0.2))
    finally:
        signals.task_superseded.disconnect(on_superseded)
    assert newer.id != older.id
    assert [(s["task_id"], s["superseded"]) for s in superseded] == [(newer.id, older.id)]
    wait_for(lambda: fx.get(f"fx:{tag}:seen:{older.id}"), 5, "the older run to be told")
    told = float(fx.get(f"fx:{tag}:seen:{older.id}") or 0) - called
    print(f"\nsupersede: the running holder was told {told:.3f} s after the newer call")
    assert told <= 1.0 + 0.5, "within one heartbeat interval (lock_ttl / 3) and slack"
    wait_for(lambda: older.state == "REVOKED", 10, "the older run to end REVOKED")
    assert newer.get(timeout=10) == 2
    by_id = starts(fx, tag)
    assert by_id[newer.id]["fence"] > by_id[older.id]["fence"]
    assert [e["x"] for e in events(fx, tag)] == [2], "the older body stopped at its checkpoint"
    assert f"[{older.id}]: lost its singleton lease" not in worker.log_text(), "not a loss"


@pytest.mark.worker
def test_a_superseded_queued_holder_never_runs_and_ends_revoked(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.supersede"]
    queued = task.apply_async((tag, 1, 0.2), countdown=1.5)
    newer = task.apply_async((tag, 2, 0.2))
    assert newer.id != queued.id
    assert newer.get(timeout=10) == 2
    wait_for(lambda: queued.state == "REVOKED", 10, "the queued holder to end REVOKED")
    assert list(starts(fx, tag)) == [newer.id], "the queued holder's body never ran"


@pytest.mark.worker
def test_supersede_terminate_ends_a_run_that_never_checks(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.supersede_terminate"]
    older = task.apply_async((tag, 1, 30.0))
    wait_for(lambda: older.id in starts(fx, tag), 10, "the older run to start")
    called = now(fx)
    newer = task.apply_async((tag, 2, 0.2))
    wait_for(lambda: older.state == "REVOKED", 10, "the older run to be terminated")
    ended = now(fx) - called
    print(f"\nsupersede_terminate: the older run was REVOKED {ended:.3f} s after the call")
    assert newer.get(timeout=10) == 2
    assert [e["x"] for e in events(fx, tag)] == [2], "the older body never finished"
    by_id = starts(fx, tag)
    assert by_id[newer.id]["fence"] > by_id[older.id]["fence"]
