"""A real ``celery worker`` subprocess for tests and examples, stopped by PID.

``worker_process(app, "proj.celery")`` runs ``celery -A proj.celery worker`` (prefork) in
a session of its own, waits until it answers a ping, and at the end sends SIGTERM (a warm
shutdown), then SIGKILLs whatever of its process group is left: no worker outlives the
block, a Ctrl-C included. Its log goes to a nameless temporary file and is shown when it
does not start.

``conf`` hands the worker settings through ``CELERY_KV_TEST_CONF`` (applied by
``install()`` in the worker, before its app is read): the test's coordination Redis and
prefix, say, so the worker coordinates with the test's client app.

A test process that is SIGKILLed cannot stop its worker. So the worker gets
``CELERY_KV_PARENT_PID``, and its ``install()`` starts a watchdog thread that takes the
worker's process group down once that process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any

from ..celery.install import TEST_CONF_ENV

#: The pid of the process that started this worker (``watch_parent_from_environment``).
PARENT_ENV = "CELERY_KV_PARENT_PID"


@contextlib.contextmanager
def worker_process(
    app: Any, module: str, *, concurrency: int = 2, queues: str | None = None,
    env: Mapping[str, str] | None = None, conf: Mapping[str, Any] | None = None,
    cwd: str | None = None, pool: str = "prefork", timeout: float = 60.0,
) -> Iterator[str]:
    """Run ``celery -A <module> worker`` until the block ends; yields its node name.

    ``app`` is the client's app (it pings the worker); ``queues`` defaults to the app's
    ``task_default_queue``. ``cwd`` (default: the current directory) goes on the worker's
    ``PYTHONPATH``, so ``module`` imports as it does in the test.
    """
    queue = queues or app.conf.task_default_queue
    node = f"kv-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    cmd = [sys.executable, "-m", "celery", "-A", module, "worker", "-P", pool,
           "-c", str(concurrency), "-Q", queue, "-n", node,
           "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
    where = cwd or os.getcwd()
    variables = {**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}
    variables["PYTHONPATH"] = os.pathsep.join(
        filter(None, [where, variables.get("PYTHONPATH")]))
    if conf:
        variables[TEST_CONF_ENV] = json.dumps(dict(conf))
    with tempfile.TemporaryFile() as log:  # nameless: nothing is left behind, even on SIGKILL
        # a session of its own: a terminal's Ctrl-C reaches only us, and we stop it in order
        proc = subprocess.Popen(cmd, cwd=where, env=variables, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_ready(app, node, proc, log, timeout)
            yield node
        finally:
            stop(proc)


def _wait_ready(app: Any, node: str, proc: subprocess.Popen[bytes], log: IO[bytes],
                timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not app.control.ping(destination=[node], timeout=0.3):
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            why = "exited" if proc.poll() is not None else f"did not answer in {timeout:.0f} s"
            raise RuntimeError(f"worker {node} {why}:\n{tail}")


def watch_parent_from_environment() -> None:
    """In a worker's main process that ``worker_process`` started (``$CELERY_KV_PARENT_PID``
    is its parent): a daemon thread stops the worker's process group once that parent is
    gone, even SIGKILLed. Pool children (whose parent is the worker) start none."""
    parent = os.environ.get(PARENT_ENV)
    if parent and parent == str(os.getppid()):
        threading.Thread(target=_watch, args=(int(parent),), name="celery-kv-parent-watch",
                         daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL whatever of its process group is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


__all__ = ["PARENT_ENV", "stop", "watch_parent_from_environment", "worker_process"]
