"""The server version matrix: Redis 6.2, Redis 7.x and Valkey 8 (``servers`` marker).

The primitives' contract tests run on each of these through ``kv_factory`` (see
conftest, whose fixture also checks that each server is the version it stands for and
lists the versions at the end of the run). This module adds what they do not reach: that
every script compiles there, and that every step script of the Celery lifecycle runs
there without an error, driven without a worker (``apply_async`` on an
in-memory broker, then ``apply()`` with the same task id, as a worker would run it).
A server that is missing fails these tests; it is never skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import kombu
import pytest
import redis
from celery import Celery

from celery_kv import KV, KVTask, install
from celery_kv.store import scripts
from celery_kv.store.bursts import read_burst
from celery_kv.testing import RedisServer

from .conftest import FLAVOURS, FlavourServers, keys_under, wait_for

pytestmark = pytest.mark.servers


@pytest.fixture(params=FLAVOURS)
def server(request: pytest.FixtureRequest, flavour_servers: FlavourServers) -> RedisServer:
    return flavour_servers.get(request.param)


@contextlib.contextmanager
def refusals(kv: KV) -> Iterator[list[tuple[str, str]]]:
    """Every error reply the KV's client gets, but NOSCRIPT (answered by loading the script),
    as (what was sent: a script's SHA1, or the command, error): the lifecycle swallows some
    failures (a confirm is best effort), so look at the wire."""
    client: Any = kv.store.client
    seen: list[tuple[str, str]] = []
    original = client.execute_command

    def watching(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except redis.exceptions.NoScriptError:
            raise
        except redis.ResponseError as exc:
            seen.append((str(args[1] if args[0] == "EVALSHA" else args[0]), str(exc)))
            raise

    client.execute_command = watching
    try:
        yield seen
    finally:
        del client.execute_command


def test_every_script_compiles(server: RedisServer) -> None:
    failed = {}
    with redis.Redis(port=server.port) as client:
        for name in scripts.available():
            source = scripts.compose((name,)) if name.startswith("task_") else scripts.load(name)
            try:
                client.script_load(source.text)
            except redis.ResponseError as exc:
                failed[name] = str(exc)
    assert not failed, f"scripts refused by {server.version()}: {failed}"


@pytest.fixture
def app(server: RedisServer) -> Celery:
    made = Celery("versions", broker="memory://", backend="cache+memory://",
                  set_as_current=False)
    made.conf.update(kv_redis_url=server.url, kv_prefix="v" + uuid.uuid4().hex[:10],
                     task_serializer="json", accept_content=["json"])
    return made


@pytest.fixture
def composed(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, ...]]:
    """The phases composed (so run) from now on: their step scripts by the SHA1 of the
    composed script, so that a refusal names the steps it came from."""
    seen: dict[str, tuple[str, ...]] = {}
    compose = scripts.compose

    def spy(names: tuple[str, ...]) -> scripts.ScriptSource:
        source = compose(names)
        seen[hashlib.sha1(source.text.encode()).hexdigest()] = names
        return source

    monkeypatch.setattr(scripts, "compose", spy)
    return seen


def steps_run(composed: dict[str, tuple[str, ...]]) -> set[str]:
    return {name for names in composed.values() for name in names}


def test_every_lifecycle_step_script_runs(
    server: RedisServer, app: Celery, composed: dict[str, tuple[str, ...]]
) -> None:
    kv = install(app)
    bodies: list[Any] = []
    renewing = threading.Event()

    @app.task(base=KVTask, shared=False, name="v.every", bind=True, singleton=True,
              idempotent=True, global_rate_limit="100/s", concurrency_limit=2, cache_ttl=60,
              lock_ttl=0.6)
    def every(self: Any, x: int, hold: bool = False) -> int:
        bodies.append(x)
        if hold:  # long enough for the heartbeat to renew every lease (every 0.2 s)
            wait_for(renewing.is_set, what="a lease renewal")
        return x * 2

    @app.task(base=KVTask, shared=False, name="v.fails", bind=True, singleton=True,
              idempotent=True, concurrency_limit=1, cache_ttl=60, max_retries=1)
    def fails(self: Any, x: int) -> int:
        if self.request.retries == 0:
            raise self.retry(countdown=0)  # the keys are handed back, then re-entered
        raise ValueError(f"failed {x}")

    @app.task(base=KVTask, shared=False, name="v.burst", bind=True, debounce=0.001,
              delay_store=False,  # its timer is a broker message: a failing publish undoes the arm
              debounce_key="all", lock_ttl=0.6, max_retries=1)
    def burst(self: Any, x: int, hold: bool = False, retry: bool = False) -> int:
        bodies.append(("burst", x))
        if hold:
            wait_for(lambda: "task_burst_renew" in steps_run(composed), what="a renewal")
        if retry and self.request.retries == 0:
            raise self.retry(countdown=0)  # the burst is handed back, then taken over
        return x

    with refusals(kv) as refused:
        drive(every, fails, bodies, composed, renewing)
        drive_concurrency_pump(every)
        drive_rate_limit_reservation(every)
        drive_burst(burst, bodies)
    named = [(composed.get(sha, sha), error) for sha, error in refused]
    assert not named, f"{server.version()} refused: {named}"
    steps = {name for name in scripts.available() if name.startswith("task_")}
    assert steps - steps_run(composed) == set(), "step scripts this test did not reach"
    for key in keys_under(kv):
        assert kv.client.pttl(key) > 0, f"{key} has no TTL"


def drive_concurrency_pump(task: Any) -> None:
    """The concurrency pool's maintenance tick (its parking and grants run on every server
    in tests/test_fair_pool.py)."""
    task._kv_policy.feature("concurrency").tick(task.kv, task.app)


def drive_rate_limit_reservation(every: Any) -> None:
    """A rate-limit reservation taken and given back: a throttle holds the limit for
    0.5 s, so the start step reserves a later slot (as on a worker, where ``apply()``
    cannot: eager runs never reserve), and a revoke of its message gives it back."""
    from types import SimpleNamespace

    from celery_kv.celery.context import HEADER, Run
    from celery_kv.celery.execution import release_revoked

    feature = every._kv_policy.feature("rate_limit")
    request = SimpleNamespace(id="reserved-" + uuid.uuid4().hex[:8], retries=0, headers={},
                              is_eager=False, args=(5,), kwargs={}, callbacks=None,
                              errbacks=None, chain=None, chord=None, group=None)
    run = Run(every, request, (5,), {})
    feature.throttle(run, 0.5)
    answer = every.kv.store.run_phase("execution start", [feature.start(run)])
    marks = feature.denied(run, answer.replies[-1]).marks
    assert marks["rate_limit_reservation"], "a later slot was reserved"
    request.headers = {HEADER: {**marks, "attempt": 0}}
    release_revoked(every, request)
    assert not every.kv.client.exists(feature.record_key(run)), "the slot was given back"


def burst_due(burst: Any, key: str) -> bool:
    """Whether the pending burst's due time has passed on the server's clock: run
    earlier, its message is early and (eagerly, with nothing to re-publish) refused."""
    pending = read_burst(burst.kv.store, burst.name, key)
    return pending is not None and pending.pending is not None and pending.pending.due_in <= 0


def drive_burst(burst: Any, bodies: list[Any]) -> None:
    """A debounced task's phases: arm, absorb, confirm, fire (as the worker runs the
    burst's id), renew, a retry's hand-back and take-over, finish, and an undone arm."""
    queued = burst.apply_async((1,))
    assert burst.apply_async((2,)).id == queued.id  # absorbed: the latest arguments win
    wait_for(lambda: burst_due(burst, "all"), what="the burst to fall due")
    assert burst.apply((0,), task_id=queued.id).get() == 2
    assert burst.apply((3,), {"hold": True}).get() == 3
    assert burst.apply((4,), {"retry": True}).get() == 4
    with mock.patch.object(kombu.Producer, "publish", side_effect=OSError("broker down")), \
            pytest.raises(OSError):
        burst.apply_async((5,), task_id="never-sent")
    assert burst.apply_async((6,)).id != "never-sent"
    assert [b for b in bodies if isinstance(b, tuple)] == [
        ("burst", 2), ("burst", 3), ("burst", 4), ("burst", 4)]


def drive(every: Any, fails: Any, bodies: list[Any], composed: dict[str, tuple[str, ...]],
          renewing: threading.Event) -> None:
    """Every phase of the lifecycle, each feature on: claims, duplicates, runs, replays,
    renewals, a retry's hand-back, a final failure, and a publish that raises."""
    # enqueue claim and confirm; a duplicate is handed the holder's id
    queued = every.apply_async((3,))
    assert every.apply_async((3,)).id == queued.id
    # execution start and finish, under the queued id; then a replay without the body
    assert every.apply((3,), task_id=queued.id).get() == 6
    assert every.apply((3,)).get() == 6
    assert bodies == [3]

    # renewals while a body runs
    def watch() -> None:
        renew = {"task_singleton_renew", "task_idempotency_renew", "task_concurrency_renew"}
        wait_for(lambda: renew <= steps_run(composed), what="the renew scripts")
        renewing.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert every.apply((4,), {"hold": True}).get() == 8
    watcher.join()
    # a retry hands the keys back, the last failure frees them: the next call runs again
    for _ in range(2):
        result = fails.apply((1,))
        assert result.state == "FAILURE" and isinstance(result.result, ValueError)
    # a publish that raises undoes the claim: the next call is not its duplicate
    with mock.patch.object(kombu.Producer, "publish", side_effect=OSError("broker down")), \
            pytest.raises(OSError):
        every.apply_async((9,), task_id="never-sent")
    assert every.apply_async((9,)).id != "never-sent"
