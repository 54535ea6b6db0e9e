"""The pytest plugin: test your own celery-kv tasks (``pip install celery-kv[testing]``).

Registered with the ``pytest11`` entry point, so installing the package is enough.

Fixtures:

- ``kv``: a ``KV`` on fakeredis, with a fresh prefix (``kv_prefix``) per test;
- ``kv_redis``: a throwaway ``redis-server`` (the one on PATH, else the embedded wheel's),
  started once per session and stopped by PID; ``--kv-redis-url`` (or the ``kv_redis_url``
  ini option) uses a server you run instead;
- ``kv_app``: your Celery app, its coordination pointed at fakeredis (the same server and
  prefix as ``kv``), or at ``kv_redis`` when the test asks for that fixture too; the app
  is ``kv_app = "proj.celery:app"`` in the ini file, ``--kv-app``, or your ``celery_app``
  fixture (Celery's own, from ``celery.contrib.pytest``, included);
- ``kv_events``: every coordination decision of the test (``KVEvents``), from eager runs,
  Celery's in-process ``start_worker`` and worker subprocesses alike;
- ``kv_worker``: ``with kv_worker("proj.celery"):`` runs a real ``celery worker``
  subprocess on the test's Redis and prefix, journaling its decisions to ``kv_events``.

Each test's keys are removed at its end (on ``kv_redis``: its prefix, SCAN + UNLINK), and
the app gets back the coordination it had.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .events import KVEvents, journal_key
from .servers import RedisServer, start_server


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("celery-kv", "celery-kv test fixtures")
    group.addoption("--kv-app", dest="kv_app", default=None, metavar="MODULE:APP",
                    help="the Celery app that kv_app points at the test's Redis")
    group.addoption("--kv-redis-url", dest="kv_redis_url", default=None, metavar="URL",
                    help="a Redis for kv_redis to use instead of starting a redis-server")
    parser.addini("kv_app", "the Celery app kv_app uses, as module:attribute")
    parser.addini("kv_redis_url", "a Redis for kv_redis to use instead of starting one")


def _option(config: pytest.Config, name: str) -> str | None:
    value = config.getoption(name) or config.getini(name)
    return str(value) if value else None


def _fail(fixture: str, message: str) -> Any:
    """A fixture that cannot be set up: one line naming the fixture, no traceback."""
    pytest.fail(f"{fixture}: {message}", pytrace=False)


# -- kv -------------------------------------------------------------------------------------


@pytest.fixture
def kv_prefix() -> str:
    """A key prefix of this test's own."""
    return "kvt" + uuid.uuid4().hex[:10]


@pytest.fixture
def kv_fake_server() -> Any:
    """This test's fakeredis server, which ``kv`` and ``kv_app`` share."""
    try:
        import fakeredis
    except ImportError:
        _fail("kv", "fakeredis is not installed; pip install 'celery-kv[testing]'")
    return fakeredis.FakeServer()


def _fake_kv(server: Any, prefix: str) -> Any:
    import fakeredis

    from ..kv import KV

    return KV(client=fakeredis.FakeRedis(server=server), prefix=prefix)


@pytest.fixture
def kv(kv_fake_server: Any, kv_prefix: str) -> Any:
    """A ``KV`` on fakeredis, under this test's prefix."""
    return _fake_kv(kv_fake_server, kv_prefix)


# -- kv_redis -------------------------------------------------------------------------------


@dataclass
class KVRedis:
    """The session's Redis: ``url``; ``server`` when the session started it."""

    url: str
    server: RedisServer | None = None

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server is not None else None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="session")
def kv_redis(pytestconfig: pytest.Config) -> Iterator[KVRedis]:
    """A real Redis for the session: ``--kv-redis-url``, else a ``redis-server`` it starts
    on a free port and stops by PID at the end (and that Linux stops if the run is
    SIGKILLed)."""
    url = _option(pytestconfig, "kv_redis_url")
    if url:
        yield KVRedis(url)
        return
    try:
        server = start_server(die_with_parent=True)  # a SIGKILLed run leaves no server
    except RuntimeError as exc:
        _fail("kv_redis", f"cannot start a Redis server: {exc}; or pass --kv-redis-url")
    try:
        yield KVRedis(server.url, server)
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


# -- kv_app ---------------------------------------------------------------------------------


def _load_app(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        _fail("kv_app", f"cannot load the Celery app {path!r}: {exc}")


def _find_app(request: pytest.FixtureRequest) -> Any:
    path = _option(request.config, "kv_app")
    if path:
        return _load_app(path)
    try:
        return request.getfixturevalue("celery_app")
    except pytest.FixtureLookupError:
        _fail("kv_app", "no Celery app to point at Redis: set kv_app = \"proj.celery:app\" "
                        "in the [pytest] ini section (or pass --kv-app proj.celery:app), or "
                        "define a celery_app fixture")


@pytest.fixture
def kv_app(request: pytest.FixtureRequest, kv_fake_server: Any, kv_prefix: str
           ) -> Iterator[Any]:
    """Your Celery app, its coordination on this test's fakeredis (or ``kv_redis``)."""
    from ..celery.install import install, installed
    from ..kv import KV
    from ..store.admin import purge

    app = _find_app(request)
    real: KVRedis | None = None
    if "kv_redis" in request.fixturenames:
        real = request.getfixturevalue("kv_redis")
    kv = KV.from_url(real.url, kv_prefix) if real else _fake_kv(kv_fake_server, kv_prefix)
    previous = installed(app).use(kv)
    install(app, kv=kv)
    if "kv_events" in request.fixturenames:
        events: KVEvents = request.getfixturevalue("kv_events")
        if real is not None:
            events.attach(kv.store.client, journal_key(kv_prefix))
    try:
        yield app
    finally:
        installed(app).use(previous)
        if real is not None:
            with contextlib.suppress(Exception):  # a test that stopped Redis on purpose
                purge(kv.store)
            kv.store.client.close()


# -- kv_events ------------------------------------------------------------------------------


@pytest.fixture
def kv_events() -> Iterator[KVEvents]:
    """Every coordination decision of this test, with ``assert_*`` helpers."""
    events = KVEvents().start()
    try:
        yield events
    finally:
        events.stop()


# -- kv_worker ------------------------------------------------------------------------------


@pytest.fixture
def kv_worker(request: pytest.FixtureRequest, kv_app: Any, kv_redis: KVRedis,
              kv_prefix: str) -> Callable[..., Any]:
    """``with kv_worker("proj.celery", concurrency=2):`` a worker subprocess on this test's
    Redis and prefix (and the app's broker and result backend, which must be real)."""
    from .workers import worker_process

    broker = str(kv_app.conf.broker_url or "")
    if broker.startswith("memory"):
        _fail("kv_worker", f"the app's broker is {broker!r}, which a worker subprocess "
                           "cannot share; give the app a real broker (kv_redis.url, say)")
    env = {}
    if "kv_events" in request.fixturenames:
        env = request.getfixturevalue("kv_events").worker_env()
    conf = {"kv_redis_url": kv_redis.url, "kv_prefix": kv_prefix, "broker_url": broker}
    if kv_app.conf.result_backend:
        conf["result_backend"] = str(kv_app.conf.result_backend)

    def start(module: str | None = None, **options: Any) -> Any:
        path = module or _option(request.config, "kv_app")
        if not path:
            _fail("kv_worker", "which module defines the app? pass kv_worker(\"proj.celery\")")
        return worker_process(kv_app, str(path), env=env, conf=conf, **options)

    return start


__all__ = ["KVRedis"]
