"""Faults done for real: a cut connection, a Redis restart, a Sentinel failover address."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from celery_kv import KV, CoordinationUnavailable
from celery_kv.testing import RedisServer, free_port, start_server
from celery_kv.testing.servers import _binary

from .proxy import CuttableProxy


@pytest.fixture
def proxy(redis_srv: RedisServer) -> Iterator[CuttableProxy]:
    p = CuttableProxy(redis_srv.port)
    yield p
    p.close()


def test_cut_connection_backs_off_then_raises_coordination_unavailable(
    proxy: CuttableProxy, caplog: pytest.LogCaptureFixture
) -> None:
    kv = KV.from_url(proxy.url, prefix="faults", retry_deadline=1.0)
    key = [kv.store.keys.key("probe", "x")]
    assert kv.store.run("noop", key) == 1
    proxy.cut()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="celery_kv.store"), pytest.raises(
        CoordinationUnavailable, match="noop"
    ) as info:
        kv.store.run("noop", key)
    elapsed = time.monotonic() - started
    retries = [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert len(retries) >= 2, "expected backed-off retries before giving up"
    assert "attempts" in str(info.value)
    assert 0.9 <= elapsed < 5.0, elapsed


def test_retry_recovers_when_the_connection_comes_back(proxy: CuttableProxy) -> None:
    kv = KV.from_url(proxy.url, prefix="faults", retry_deadline=10.0)
    key = [kv.store.keys.key("probe", "y")]
    assert kv.store.run("noop", key) == 1
    proxy.cut()
    threading.Timer(0.5, proxy.restore).start()
    assert kv.store.run("noop", key) == 1
    assert proxy.accepted >= 2


def test_unsafe_script_is_not_replayed_after_a_lost_reply(redis_srv: RedisServer) -> None:
    """A retry-unsafe script whose reply is lost mid-flight must surface, not run twice."""
    import redis.exceptions as rexc

    from celery_kv.store.retry import RetryPolicy, failed_before_send

    calls = []

    def lost_reply() -> int:
        calls.append(1)
        raise rexc.ConnectionError("Connection closed by server.")

    with pytest.raises(CoordinationUnavailable):
        RetryPolicy(deadline=2.0).call("hit", lost_reply, retry_safe=False)
    assert calls == [1]
    assert failed_before_send(rexc.ConnectionError("Error 111 connecting to 127.0.0.1:1."))


def test_restart_loses_scripts_and_they_are_reloaded() -> None:
    server = start_server()
    try:
        kv = KV.from_url(server.url, prefix="faults", retry_deadline=10.0)
        key = [kv.store.keys.key("probe", "z")]
        assert kv.store.run("server_time", key)
        server.restart()  # a new process: empty script cache (NOSCRIPT), dropped sockets
        assert float(kv.store.run("server_time", key)) > 0
    finally:
        server.stop()


def test_sentinel_url_follows_the_master() -> None:
    """redis+sentinel://host:port/service/db asks the sentinel where the master is."""
    master = start_server()
    sentinel_conf = f"{master.workdir}/sentinel.conf"
    with open(sentinel_conf, "w") as f:
        f.write(f"sentinel monitor primary 127.0.0.1 {master.port} 1\n")
    port = free_port()
    proc = subprocess.Popen(
        [_binary("redis-server"), sentinel_conf, "--sentinel", "--port", str(port),
         "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        kv = KV.from_url(
            f"redis+sentinel://127.0.0.1:{port}/primary/0", prefix="sent", retry_deadline=10.0
        )
        assert kv.store.run("noop", [kv.store.keys.key("probe", "s")]) == 1
        assert kv.store.client.connection_pool.get_master_address() == ("127.0.0.1", master.port)
    finally:
        proc.kill()
        proc.wait()
        master.stop()


@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["stop.single", "stop.idem"])
def test_an_enqueue_during_a_redis_stall_longer_than_the_socket_timeout_is_published(
    task_name: str,
) -> None:
    """SIGSTOP the coordination Redis past the socket timeout while apply_async claims:
    Redis runs the claim when it resumes, the retried claim finds it this call's own (the
    nonce), and the message is published, never taken for a duplicate (rule 13)."""
    import signal

    from celery import Celery

    from celery_kv import IdempotentTask, SingletonTask, install

    server = start_server()
    try:
        app = Celery("stall", broker="memory://", set_as_current=False)
        kv = KV.from_url(server.url, prefix="stall", retry_deadline=20.0, socket_timeout=0.5)
        install(app, kv=kv)

        @app.task(base=SingletonTask, shared=False, name="stop.single")
        def single(x: int) -> int:
            return x

        @app.task(base=IdempotentTask, shared=False, name="stop.idem")
        def idem(x: int) -> int:
            return x

        published: list[str] = []
        app.amqp.send_task_message = lambda *a, **k: published.append(a[2].headers["id"])
        task = app.tasks[task_name]
        task.apply_async((0,))  # warm: the scripts are loaded before the stall
        published.clear()
        server.process.send_signal(signal.SIGSTOP)
        resume = threading.Timer(2.0, server.process.send_signal, (signal.SIGCONT,))
        resume.start()
        try:
            result = task.apply_async((1,))
        finally:
            resume.join()
            server.process.send_signal(signal.SIGCONT)
        assert published == [result.id], "published once, under the id the caller holds"
        assert task.apply_async((1,)).id == result.id, "a real duplicate is still refused"
        assert published == [result.id]
    finally:
        server.stop(signal.SIGKILL)


def test_idempotency_run_stores_the_outcome_of_a_body_that_ended_in_an_outage(
    proxy: CuttableProxy, redis_srv: RedisServer
) -> None:
    """F2 for the primitive: the connection is cut as the body ends, for three leases.
    The outcome is retried and stored once Redis answers, so a duplicate replays it."""
    prefix = f"f2{time.monotonic_ns()}"
    cut = KV.from_url(proxy.url, prefix=prefix, retry_deadline=0.3)
    direct = KV.from_url(redis_srv.url, prefix=prefix)
    effects: list[str] = []

    def charge(order: str) -> dict[str, str]:
        effects.append(order)
        proxy.cut()  # the body's effect happened; Redis is now out of reach
        threading.Timer(3.0, proxy.restore).start()
        return {"charged": order}

    idem = cut.idempotency("pay", ttl=60, lease=1.0)
    assert idem.run("order-1", charge, "o-1") == {"charged": "o-1"}
    again = direct.idempotency("pay", ttl=60, lease=1.0)
    assert again.run("order-1", charge, "o-1") == {"charged": "o-1"}
    assert effects == ["o-1"], "the duplicate replayed the stored outcome"
