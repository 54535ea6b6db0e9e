"""Testing with celery-kv: throwaway servers, a fake KV, recorded decisions, a pytest plugin.

- ``servers``: ``redis_server()`` / ``redis_cluster()`` start throwaway ``redis-server``
  processes on free ports and stop them by PID; ``server_binary("redis-6.2")`` finds a
  server of the version matrix.
- ``fake_kv()``: a ``KV`` on a private in-memory fakeredis server.
- ``events``: ``KVEvents`` records every coordination decision (celery-kv's signals), in
  this process and in worker processes, with assertion helpers.
- ``workers``: ``worker_process()`` runs a real ``celery worker`` subprocess.
- ``plugin``: the pytest plugin (fixtures ``kv``, ``kv_redis``, ``kv_app``,
  ``kv_events``, ``kv_worker``), registered through the ``pytest11`` entry point;
- ``containers``: pytest-celery's ``celery_setup`` with a Redis coordination container
  (load it with ``pytest_plugins``; needs ``celery-kv[containers]`` and Docker).
"""

from __future__ import annotations

from typing import Any

from .servers import (
    SERVER_FLAVOURS,
    Flavour,
    RedisCluster,
    RedisServer,
    binary_version,
    free_port,
    redis_cluster,
    redis_server,
    server_binary,
    servers_dir,
    start_server,
)


def fake_kv(prefix: str = "test", **options: Any) -> Any:
    """A ``KV`` on a private in-memory fakeredis server (needs ``fakeredis[lua]``)."""
    import fakeredis

    from ..kv import KV

    return KV(client=fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix=prefix, **options)


__all__ = [
    "SERVER_FLAVOURS",
    "Flavour",
    "RedisCluster",
    "RedisServer",
    "binary_version",
    "fake_kv",
    "free_port",
    "redis_cluster",
    "redis_server",
    "server_binary",
    "servers_dir",
    "start_server",
]
