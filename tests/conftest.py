"""Shared fixtures: the session's own Redis servers, and one KV per backend.

Every contract test takes ``kv`` (or ``kv_factory``) and so runs against
fakeredis, a real ``redis-server`` started for this session, and a three-node
Redis Cluster started for this session. Each test gets its own key prefix.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from celery_kv import KV
from celery_kv.testing import RedisCluster, RedisServer, redis_cluster, redis_server

BACKENDS = ["fakeredis", "redis", "cluster"]


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


@pytest.fixture(params=BACKENDS)
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
