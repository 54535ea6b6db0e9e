"""Shared fixtures: the session's own Redis servers, and one KV per backend.

Every contract test takes ``kv`` (or ``kv_factory``) and so runs against
fakeredis, a real ``redis-server`` started for this session, a three-node
Redis Cluster started for this session, and the server version matrix
(``servers`` marker): Redis 6.2, Redis 7.x and Valkey 8, one server each, started
on first use. Each test gets its own key prefix.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from celery_kv import KV
from celery_kv.testing import (
    SERVER_FLAVOURS,
    RedisCluster,
    RedisServer,
    redis_cluster,
    redis_server,
    server_binary,
    start_server,
)

BACKENDS = ["fakeredis", "redis", "cluster"]
#: The version matrix: each a backend of ``kv_factory`` too, under the ``servers`` marker.
FLAVOURS = list(SERVER_FLAVOURS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "servers: runs on each server of the version matrix "
                   "(Redis 6.2, Redis 7.x, Valkey 8; scripts/bootstrap installs them)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``docker`` test needs a Docker engine: without one it is skipped, saying why."""
    if item.get_closest_marker("docker") is None:
        return
    try:
        from celery_kv.testing.containers import docker_engine_missing
    except ImportError as exc:
        pytest.skip(f"needs pytest-celery (pip install celery-kv[containers]): {exc}")
    missing = docker_engine_missing()
    if missing:
        pytest.skip(f"needs a Docker engine: {missing}")


class FlavourServers:
    """The matrix's servers, one per flavour, started on first use and kept for the session.

    A flavour whose binary is missing, or whose running server reports another version,
    fails every test that asks for it (never a skip): CI must show that all of them ran.
    """

    def __init__(self) -> None:
        self.running: dict[str, RedisServer] = {}
        self.versions: dict[str, str] = {}
        self.failed: dict[str, str] = {}  # each later test fails at once, the same way

    def get(self, flavour: str) -> RedisServer:
        if flavour in self.failed:
            raise RuntimeError(self.failed[flavour])
        try:
            return self.running.get(flavour) or self._start(flavour)
        except RuntimeError as exc:
            self.failed[flavour] = str(exc)
            raise

    def _start(self, flavour: str) -> RedisServer:
        binary = server_binary(flavour)  # RuntimeError naming what is missing
        server = start_server(binary=binary)
        product, version = server.version()
        if not SERVER_FLAVOURS[flavour].matches(product, version):
            server.stop()
            raise RuntimeError(f"{binary} runs {product} {version}, not {flavour}")
        self.running[flavour] = server
        self.versions[flavour] = f"{product} {version} ({binary})"
        return server

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)


_flavour_servers = FlavourServers()


@pytest.fixture(scope="session")
def flavour_servers() -> Iterator[FlavourServers]:
    yield _flavour_servers
    _flavour_servers.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which server versions the matrix really ran (as each server reported itself)."""
    if _flavour_servers.versions:
        terminalreporter.section("server versions")
        for flavour, what in _flavour_servers.versions.items():
            terminalreporter.write_line(f"{flavour}: {what}")


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def cluster_srv() -> Iterator[RedisCluster]:
    with redis_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> str:
    return redis_srv.url


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(params=[*BACKENDS,
                        *(pytest.param(f, marks=pytest.mark.servers) for f in FLAVOURS)])
def kv_factory(request: pytest.FixtureRequest, prefix: str) -> Callable[..., KV]:
    """Builds KVs that share one backend and one prefix (as separate clients would)."""
    backend = request.param
    if backend == "fakeredis":
        server = fakeredis.FakeServer()

        def make(**options: Any) -> KV:
            return KV(client=fakeredis.FakeRedis(server=server), prefix=prefix, **options)

        return make
    if backend == "redis":
        url = request.getfixturevalue("redis_srv").url
    elif backend in SERVER_FLAVOURS:
        url = request.getfixturevalue("flavour_servers").get(backend).url
    else:
        request.applymarker(pytest.mark.cluster)
        url = request.getfixturevalue("cluster_srv").url

    def make_real(**options: Any) -> KV:
        return KV.from_url(url, prefix=prefix, **options)

    return make_real


@pytest.fixture
def kv(kv_factory: Callable[..., KV]) -> KV:
    return kv_factory()


@pytest.fixture
def backend_name(kv_factory: Callable[..., KV], request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["kv_factory"])


def keys_under(kv: KV) -> list[str]:
    """Every key under the KV's prefix, by SCAN (on every cluster node)."""
    client: Any = kv.store.client
    pattern = kv.store.keys.pattern()
    found = client.scan_iter(match=pattern, count=1000)
    return sorted(k.decode() if isinstance(k, bytes) else k for k in found)


@contextlib.contextmanager
def count_commands(kv: KV) -> Iterator[list[tuple[Any, ...]]]:
    """Record every command the client sends (one entry per round trip)."""
    client: Any = kv.store.client
    sent: list[tuple[Any, ...]] = []
    original = client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(args)
        return original(*args, **kwargs)

    client.execute_command = counting
    try:
        yield sent
    finally:
        del client.execute_command


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "the condition",
             interval: float = 0.01) -> Any:
    """Poll ``condition`` until it is truthy (and return it); fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
