"""Worker fixtures: real ``celery worker`` subprocesses (prefork, -c 2) on the session's Redis.

Databases on the session's redis-server: 1 broker, 2 result backend, 3 coordination
(KV), 4 effects recorded by the test tasks. Workers report readiness through a
``worker_ready`` hook that writes a key; teardown sends SIGTERM, then SIGKILLs the
worker's process group (it runs in a session of its own), so no worker outlives the
test session.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_kv.testing import RedisServer, start_server
from tests.celery.apps import make_app
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    """URLs and prefix of one family of workers and apps."""

    broker: str
    backend: str
    kv: str
    fx: str
    prefix: str
    conf: dict[str, Any] = field(default_factory=dict)

    def app(self, name: str = "ckv-client") -> Celery:
        return make_app(name, self.broker, self.backend, self.kv, self.prefix, self.fx,
                        **self.conf)

    def variables(self, node: str) -> dict[str, str]:
        return {
            "CKV_BROKER": self.broker, "CKV_BACKEND": self.backend, "CKV_KV": self.kv,
            "CKV_FX": self.fx, "CKV_PREFIX": self.prefix, "CKV_NODE": node,
            "CKV_CONF": json.dumps(self.conf), "CKV_PARENT_PID": str(os.getpid()),
        }


class Worker:
    """One ``celery worker`` process group that this test session started."""

    def __init__(self, env: Env, concurrency: int = 2, queues: str | None = None,
                 extra: list[str] | None = None,
                 app_module: str = "tests.celery.worker_app") -> None:
        self.env = env
        self.node = f"w{uuid.uuid4().hex[:8]}"
        fd, self.log_path = tempfile.mkstemp(prefix=f"ckv-{self.node}-", suffix=".log")
        self.log = os.fdopen(fd, "wb")
        cmd = [
            sys.executable, "-m", "celery", "-A", app_module, "worker",
            "-P", "prefork", "-c", str(concurrency), "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "info", "-n", f"{self.node}@%h",
        ]
        if queues:
            cmd += ["-Q", queues]
        cmd += extra or []
        self.warm_exit: bool | None = None  # None: not stopped by stop() (or already gone)
        self.process = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env.variables(self.node)},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        fx = redis.Redis.from_url(env.fx, decode_responses=True)
        try:
            wait_for(lambda: fx.get(f"ready:{self.node}") or self.process.poll() is not None,
                     60, f"worker {self.node} to be ready")
        except AssertionError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.node} exited:\n{self.log_text()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (a warm shutdown), and SIGKILL for whatever is left after 8 s;
        ``warm_exit`` says whether the worker exited by itself."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=8)
            self.warm_exit = self.process.poll() is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the pool children, if any are left
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.log.close()


@contextlib.contextmanager
def workers_on(env: Env, queue: str, count: int = 2) -> Iterator[list[Worker]]:
    """``count`` worker processes (prefork -c 2 each) consuming their own queue."""
    workers: list[Worker] = []
    try:
        for _ in range(count):
            workers.append(Worker(env, queues=queue))
        yield workers
    finally:
        for started in workers:
            started.stop()


@pytest.fixture(scope="module")
def kv_server() -> Iterator[RedisServer]:
    """A coordination Redis for one module alone: its tests stop, cut or fill it."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def celery_env(redis_srv: RedisServer) -> Env:
    base = f"redis://127.0.0.1:{redis_srv.port}"
    return Env(broker=f"{base}/1", backend=f"{base}/2", kv=f"{base}/3", fx=f"{base}/4",
               prefix="ckv" + uuid.uuid4().hex[:6])


@pytest.fixture(scope="session")
def worker(celery_env: Env) -> Iterator[Worker]:
    """The shared worker: most worker tests use this one (startup costs seconds)."""
    started = Worker(celery_env)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def client_app(celery_env: Env) -> Celery:
    """The same app as the workers run, in the test process (for enqueueing and inspection)."""
    return celery_env.app()


@pytest.fixture(scope="session")
def fx(celery_env: Env) -> redis.Redis:
    return redis.Redis.from_url(celery_env.fx, decode_responses=True)


@pytest.fixture
def tag() -> str:
    return "tag-" + uuid.uuid4().hex[:10]


def events(fx: redis.Redis, tag: str, suffix: str = "ev") -> list[Any]:
    return [json.loads(item) for item in fx.lrange(f"fx:{tag}:{suffix}", 0, -1)]


def count(fx: redis.Redis, tag: str, name: str = "n") -> int:
    return int(fx.get(f"fx:{tag}:{name}") or 0)


def assert_no_overlap(intervals: list[dict[str, Any]]) -> None:
    """Recorded [start, end] intervals (server time) never overlap."""
    ordered = sorted(intervals, key=lambda e: e["start"])
    for before, after in itertools.pairwise(ordered):
        assert after["start"] >= before["end"], f"overlap: {before} and {after}"


def _enqueue_many(env: Env, task_name: str, args: list[Any], count: int,
                  start_at: float, options: dict[str, Any]) -> list[str]:
    """In a spawned process: build the app, wait for the common start time, enqueue."""
    app = env.app("ckv-producer")
    task = app.tasks[task_name]
    while time.time() < start_at:
        time.sleep(0.001)
    return [task.apply_async(tuple(args), **options).id for _ in range(count)]


def enqueue_from_processes(env: Env, task_name: str, args: list[Any], processes: int = 4,
                           each: int = 3, **options: Any) -> list[str]:
    """``processes`` spawned OS processes enqueue the same call ``each`` times, all at once."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # spawning and importing celery takes a moment
    with context.Pool(processes) as pool:
        batches = pool.starmap(
            _enqueue_many,
            [(env, task_name, args, each, start_at, options)] * processes,
        )
    return [task_id for batch in batches for task_id in batch]
