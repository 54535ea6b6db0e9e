"""Deferrals through the delay store (``kv_delay_store``), in process and on real workers.

In process (a memory broker whose messages are captured, a fakeredis KV): which publishes
go to the store, what a stored message holds, and what the maintenance poller publishes.
On real ``celery worker`` subprocesses, with the Redis broker's ``visibility_timeout`` at
5 s: deferrals of 30 s run exactly once, and no deferred task is lost or run twice when a
worker is SIGKILLed between claim and ack, when the coordination Redis restarts (with
persistence) or when its connection is cut.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import Ignore

from celery_kv import CoordinationUnavailable, KVTask, install
from celery_kv.celery import maintenance
from celery_kv.celery.delays import COPY, ENTRY, delay_store_for
from celery_kv.celery.features.base import Feature
from celery_kv.store.delays import DelayStore
from celery_kv.testing import RedisServer, fake_kv, start_server
from tests.celery.conftest import Env, Worker, count, events
from tests.celery.delay_apps import STALL, STALLED, make_delay_app
from tests.conftest import wait_for
from tests.proxy import CuttableProxy

# -- in process -------------------------------------------------------------------------


class Captured:
    def __init__(self, app: Celery) -> None:
        self.sent: list[dict[str, Any]] = []
        app.amqp.send_task_message = self._capture

    def _capture(self, producer: Any, name: str, message: Any, **options: Any) -> None:
        headers = dict(message.headers)
        headers.update(options.get("headers") or {})
        self.sent.append({"name": name, "headers": headers, "body": message.body,
                          "options": options})


def make_app(**conf: Any) -> tuple[Celery, Any, Captured]:
    app = Celery("delay-unit", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], **conf)
    kv = fake_kv("du" + uuid.uuid4().hex[:6])
    install(app, kv)

    @app.task(base=KVTask, shared=False, name="u.all", delay_store="all")
    def all_(x: Any) -> Any:
        return x

    @app.task(base=KVTask, shared=False, name="u.default")
    def default(x: Any) -> Any:
        return x

    @app.task(base=KVTask, shared=False, name="u.off", delay_store=False)
    def off(x: Any) -> Any:
        return x

    return app, kv, Captured(app)


def test_all_stores_a_countdown_and_the_poller_publishes_it_as_it_was() -> None:
    app, _kv, captured = make_app()
    value = {"__type__": "x", "a:b": ["a", "b"], "u": "ünï ✓"}
    result = app.tasks["u.all"].apply_async((value,), countdown=0.05, queue="q1", priority=3,
                                            headers={"mine": "kept"},
                                            link=app.tasks["u.off"].s(), expires=60)
    assert captured.sent == []
    store = delay_store_for(app)
    total, [entry] = store.pending()
    assert total == 1 and entry.due_in <= 0.05
    poller = maintenance.Poller(app, "unit")
    wait_for(lambda: poller.poll_once() is not None and captured.sent, 2, "the publish")
    [msg] = captured.sent
    assert msg["name"] == "u.all" and msg["headers"]["id"] == result.id
    assert msg["body"][0] == [value]  # the user's value exactly
    assert msg["options"]["priority"] == 3 and msg["options"]["queue"].name == "q1"
    assert msg["headers"]["mine"] == "kept"
    assert [c["task"] for c in msg["body"][2]["callbacks"]] == ["u.off"]
    assert msg["headers"]["expires"] is not None  # 60 s from the call, not from the publish
    header = msg["headers"]["celery_kv"]
    assert header[ENTRY] == entry.entry_id and header[COPY].startswith("unit:")
    assert msg["headers"].get("eta") is None
    assert store.count() == 0


def echo(x: Any) -> Any:
    return x


def test_apps_on_other_brokers_never_publish_each_others_deferrals() -> None:
    """Two apps share the coordination Redis and prefix but not the broker: a poller only
    claims what its own app deferred (the store's namespace is a digest of the broker URL,
    unless kv_delay_namespace names one)."""
    kv = fake_kv("du" + uuid.uuid4().hex[:6])
    apps = []
    for broker in ("memory://one", "memory://two"):
        app = Celery("delay-ns", broker=broker, backend="cache+memory://", set_as_current=False)
        app.conf.update(task_serializer="json", accept_content=["json"])
        install(app, kv)
        app.task(base=KVTask, shared=False, name="u.all", delay_store="all")(echo)
        apps.append((app, Captured(app)))
    (one, sent_one), (two, sent_two) = apps
    assert delay_store_for(one).due_key != delay_store_for(two).due_key
    one.tasks["u.all"].apply_async((1,), countdown=0.01)
    wait_for(lambda: delay_store_for(one).pending()[1][0].due_in <= 0, 2, "the entry due")
    maintenance.Poller(two, "other").poll_once()
    assert sent_two.sent == [] and delay_store_for(one).count() == 1
    wait_for(lambda: maintenance.Poller(one, "own").poll_once() is not None and sent_one.sent, 2,
             "its own app's poller to publish it")
    assert len(sent_one.sent) == 1 and sent_two.sent == []
    shared = Celery("delay-ns", broker="memory://three", set_as_current=False)
    shared.conf.kv_delay_namespace = "payments"
    install(shared, kv)
    assert delay_store_for(shared).due_key.endswith("{payments}:due")
    with pytest.raises(ValueError, match="kv_delay_namespace=''"):
        bad = Celery("delay-ns", broker="memory://", set_as_current=False)
        bad.conf.kv_delay_namespace = ""
        install(bad, kv)


def test_what_goes_through_the_store() -> None:
    app, _kv, captured = make_app()
    store = delay_store_for(app)
    app.tasks["u.default"].apply_async((1,), countdown=5)  # not a deferral: broker countdown
    app.tasks["u.off"].apply_async((1,), countdown=5)
    app.tasks["u.all"].apply_async((1,))  # no delay: straight out
    assert len(captured.sent) == 3 and store.count() == 0
    assert captured.sent[0]["headers"]["eta"] is not None
    app.tasks["u.all"].apply_async((1,), eta=app.now())  # an ETA already past: straight out
    app.tasks["u.all"].apply_async((2,), countdown=30)
    assert len(captured.sent) == 4 and store.count() == 1


def test_a_fresh_publish_never_carries_an_old_entry() -> None:
    app, _kv, captured = make_app()
    old = {"celery_kv": {ENTRY: "old", COPY: "c", "attempt": 0}}
    app.tasks["u.off"].apply_async((1,), headers=old)
    assert ENTRY not in captured.sent[0]["headers"]["celery_kv"]
    assert COPY not in captured.sent[0]["headers"]["celery_kv"]


def test_eager_runs_are_unchanged() -> None:
    app, _kv, captured = make_app(task_always_eager=True)
    assert app.tasks["u.all"].apply_async((7,), countdown=30).get() == 7
    assert captured.sent == [] and delay_store_for(app).count() == 0


def test_an_unreachable_store_falls_back_to_a_broker_countdown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    app, _kv, captured = make_app()

    def down(*_: Any, **__: Any) -> bool:
        raise CoordinationUnavailable("delay_add", "connection refused")

    monkeypatch.setattr(DelayStore, "add", down)
    app.tasks["u.all"].apply_async((1,), countdown=30)
    [msg] = captured.sent
    assert msg["headers"]["eta"] is not None


@pytest.mark.parametrize("bad", ["yes", 1, 0, "ALL", [True]])
def test_bad_option_values_fail_at_definition(bad: Any) -> None:
    app, _, _ = make_app()
    with pytest.raises(ValueError, match=r"task 'u\.bad': option delay_store=.* must be"):
        @app.task(base=KVTask, shared=False, name="u.bad", delay_store=bad)
        def bad_task(x: Any) -> Any:
            return x
    assert "u.bad" not in app.tasks


@pytest.mark.parametrize(("setting", "value"), [("kv_delay_store", "sometimes"),
                                                ("kv_delay_poll_interval", 0),
                                                ("kv_delay_poll_interval", 61),
                                                ("kv_delay_lease", -1)])
def test_bad_settings_fail_at_install(setting: str, value: Any) -> None:
    app = Celery("delay-bad", broker="memory://", set_as_current=False)
    app.conf[setting] = value
    with pytest.raises(ValueError, match=setting):
        install(app, fake_kv())


def test_a_second_copy_ends_without_running() -> None:
    app, _kv, captured = make_app()
    app.tasks["u.all"].apply_async((1,), countdown=0.01)
    entry = delay_store_for(app).pending()[1][0].entry_id
    time.sleep(0.02)  # not a condition: the entry must simply be due
    poller = maintenance.Poller(app, "unit")
    poller.poll_once()
    [msg] = captured.sent
    header = msg["headers"]["celery_kv"]

    class Request:
        is_eager = False
        id = msg["headers"]["id"]
        headers = {"celery_kv": header}

    from celery_kv.celery.delays import consume

    task = app.tasks["u.all"]
    consume(task, Request())  # the first copy runs
    consume(task, Request())  # a broker redelivery of that copy runs too
    Request.headers = {"celery_kv": {**header, COPY: "another-poller"}}
    with pytest.raises(Ignore):
        consume(task, Request())
    assert entry == header[ENTRY]


def test_periodic_features_tick_once_per_poll() -> None:
    app, kv, _ = make_app()
    ticks: list[Any] = []

    class Ticking(Feature):
        name = "ticking"
        periodic = True

        def tick(self, kv: Any, app: Any) -> None:
            ticks.append((kv, app))

    class Broken(Ticking):
        def tick(self, kv: Any, app: Any) -> None:
            raise RuntimeError("a feature's tick that fails")

    ticking, broken = Ticking(), Broken()
    policy = app.tasks["u.all"]._kv_policy
    shared = type(policy)(**{**policy.__dict__, "features": (ticking, broken)})
    app.tasks["u.all"].__class__._kv_policy = shared
    app.tasks["u.off"].__class__._kv_policy = shared  # the same objects: ticked once
    maintenance.Poller(app, "unit").poll_once()
    assert ticks == [(kv, app)]


def test_the_bootstep_runs_in_start_worker() -> None:
    """``celery.contrib.testing.worker.start_worker`` runs the maintenance thread too."""
    from celery.contrib.testing.worker import start_worker

    app = Celery("delay-sw", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.update(kv_delay_poll_interval=0.05)
    kv = fake_kv("sw" + uuid.uuid4().hex[:6])
    install(app, kv)
    ran: list[Any] = []

    @app.task(base=KVTask, shared=False, name="u.record", delay_store="all")
    def record(x: Any) -> None:
        ran.append(x)

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        record.apply_async((1,), countdown=0.2)
        assert delay_store_for(app).count() == 1
        wait_for(lambda: ran, 10, "the deferred task to run")
    assert ran == [1] and delay_store_for(app).count() == 0


# -- real workers -----------------------------------------------------------------------

class DelayEnv(Env):
    def app(self, name: str = "ckv-delay-client") -> Celery:
        return make_delay_app(name, self.broker, self.backend, self.kv, self.prefix, self.fx,
                              **self.conf)


class DelayWorker(Worker):
    """A ``Worker`` of ``tests.celery.delay_worker_app`` (prefork, -c 2)."""

    def __init__(self, env: Env) -> None:
        super().__init__(env, app_module="tests.celery.delay_worker_app")


VISIBILITY = {"broker_transport_options": {"visibility_timeout": 5}, "kv_delay_lease": 2.0,
              "kv_retry_deadline": 0.5}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A broker Redis, and a coordination Redis with an append-only file (it restarts)."""
    broker = start_server()
    kv = start_server(extra=["--appendonly", "yes", "--appendfsync", "always"])
    try:
        yield broker, kv
    finally:
        kv.stop()
        broker.stop()


def make_env(servers: tuple[RedisServer, RedisServer], kv_url: str | None = None) -> Env:
    broker, kv = servers
    base = f"redis://127.0.0.1:{broker.port}"
    return DelayEnv(broker=f"{base}/1", backend=f"{base}/2", kv=kv_url or kv.url, fx=f"{base}/4",
               prefix="dl" + uuid.uuid4().hex[:6], conf=dict(VISIBILITY))


@pytest.fixture
def env(servers: tuple[RedisServer, RedisServer]) -> Env:
    return make_env(servers)


@pytest.fixture
def fx(servers: tuple[RedisServer, RedisServer]) -> redis.Redis:
    return redis.Redis(port=servers[0].port, db=4, decode_responses=True)


@pytest.fixture
def tag() -> str:
    return "dt-" + uuid.uuid4().hex[:8]


def ran_once(fx: redis.Redis, tag: str, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Wait until every id ran; then check that none ran twice (a second look later)."""
    wait_for(lambda: count(fx, tag) >= len(ids), timeout, f"{len(ids)} runs of {tag}", 0.1)
    found = events(fx, tag)
    assert sorted(e["id"] for e in found) == sorted(ids), found
    return found


def settled(app: Celery, fx: redis.Redis, tag: str, runs: int, watch: float = 3.0) -> None:
    """Nothing is left in the store, and ``watch`` seconds later still exactly ``runs`` runs
    (a second copy would have run by then: the claim lease is 2 s; a broker redelivery
    needs the 5 s visibility timeout)."""
    wait_for(lambda: delay_store_for(app).count() == 0, 10, "the store to empty")
    deadline = time.monotonic() + watch
    while time.monotonic() < deadline:
        assert count(fx, tag) == runs
        time.sleep(0.25)


@pytest.mark.worker
@pytest.mark.slow
def test_deferrals_past_the_visibility_timeout_run_once(env: Env, fx: redis.Redis,
                                                        tag: str) -> None:
    """30 s deferrals (a countdown on a ``"all"`` task, a rate limit) with the broker's
    visibility_timeout at 5 s: each runs exactly once, when due. The control, a broker
    countdown of 30 s, is delivered again once its visibility timeout passed (a second
    worker, starting, restores it) and runs twice."""
    workers = [DelayWorker(env)]
    try:
        app = env.app()
        began = float(fx.time()[0])
        countdown = app.tasks["t.delay_all"].apply_async((tag, 0), countdown=30).id
        limited = [app.tasks["t.delay_rl"].apply_async((tag, i)).id for i in range(3)]
        control = app.tasks["t.delay_off"].apply_async((tag + "-control", 0), countdown=30).id
        wait_for(lambda: float(fx.time()[0]) - began > 8, 10, "the visibility timeout", 0.2)
        workers.append(DelayWorker(env))
        found = ran_once(fx, tag, [countdown, *limited], 45)
        by_id = {e["id"]: e for e in found}
        assert 29.5 <= by_id[countdown]["at"] - began < 33
        late = [by_id[i]["at"] - began for i in limited]
        assert sum(1 for t in late if t > 20) >= 1, late  # the limit deferred one ~30 s
        settled(app, fx, tag, 4, watch=6.0)
        assert [e["id"] for e in events(fx, tag + "-control")] == [control] * 2
    finally:
        for worker in workers:
            worker.stop()


@pytest.mark.worker
@pytest.mark.slow
def test_a_worker_killed_between_claim_and_ack_loses_nothing(env: Env, fx: redis.Redis,
                                                              tag: str) -> None:
    """The worker's maintenance thread claims every due entry and stalls before publishing
    (a test hook); SIGKILLed there, it loses nothing: after the claim's lease another worker
    publishes them, and each runs once."""
    fx.delete(STALLED)
    fx.set(STALL, "1")
    app = env.app()
    ids = [app.tasks["t.delay_all"].apply_async((tag, i), countdown=0.2).id for i in range(3)]
    store = delay_store_for(app)
    wait_for(lambda: all(e.due_in <= 0 for e in store.pending()[1]), 5, "all to fall due")
    doomed = DelayWorker(env)  # its first claim takes all three
    try:
        def all_claimed() -> bool:
            total, entries = store.pending()
            return total == 3 and all(e.claimed_by for e in entries)

        wait_for(all_claimed, 10, "the doomed worker to claim every entry")
        assert list(fx.hgetall(STALLED)) == [str(doomed.pid)]
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.process.wait(5)
    finally:
        fx.delete(STALL)
        doomed.stop()
    assert count(fx, tag) == 0  # claimed, never published
    survivor = DelayWorker(env)
    try:
        ran_once(fx, tag, ids, 20)
        settled(app, fx, tag, 3)
    finally:
        survivor.stop()


@pytest.mark.worker
@pytest.mark.slow
def test_a_redis_restart_with_persistence_loses_nothing(
        servers: tuple[RedisServer, RedisServer], env: Env, fx: redis.Redis, tag: str) -> None:
    worker = DelayWorker(env)
    kv_server = servers[1]
    try:
        app = env.app()
        ids = [app.tasks["t.delay_all"].apply_async((tag, i), countdown=2).id
               for i in range(4)]
        ids.append(app.tasks["t.delay_retry"].apply_async((tag, 1.5)).id)
        store = delay_store_for(app)
        wait_for(lambda: store.count() == 5, 10, "the retry to be deferred into the store")
        kv_server.stop()
        time.sleep(3.0)  # the outage itself: entries fall due while Redis is gone
        assert count(fx, tag) == 1
        kv_server.restart()
        found = ran_once(fx, tag, [*ids, ids[-1]], 30)
        assert sorted(e["retries"] for e in found if e["id"] == ids[-1]) == [0, 1]
        settled(app, fx, tag, 6)
        assert "celery-kv maintenance" in worker.log_text()  # the outage was logged
    finally:
        worker.stop()


@pytest.mark.worker
@pytest.mark.slow
def test_a_cut_connection_loses_nothing(servers: tuple[RedisServer, RedisServer],
                                        fx: redis.Redis, tag: str) -> None:
    proxy = CuttableProxy(servers[1].port)
    env = make_env(servers, kv_url=proxy.url)
    worker = DelayWorker(env)
    try:
        app = env.app()
        ids = [app.tasks["t.delay_all"].apply_async((tag, i), countdown=1.5).id
               for i in range(4)]
        proxy.cut()
        time.sleep(3.0)  # the cut itself: entries fall due meanwhile
        assert count(fx, tag) == 0
        proxy.restore()
        ran_once(fx, tag, ids, 30)
        settled(app, fx, tag, 4)
    finally:
        worker.stop()
        proxy.close()

