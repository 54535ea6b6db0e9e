"""What the feature examples share: the Redis they use, their Celery app, and a real worker.

Every example runs on its own, against ``$REDIS_URL`` (default
``redis://127.0.0.1:6379/0``), under its own key prefix and its own queue::

    python -m examples.singleton

It starts one ``celery worker`` (prefork, two children) on its app, waits until the
worker answers a ping, sends its tasks, and stops the worker when it is done (Ctrl-C
included). Task bodies write what they did to the journal
(``examples/billing/journal.py``, Redis server time), so what the example prints is
counted from what really ran in the worker, not from what the producer hoped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from celery import Celery

from celery_kv import KV

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]


def make_app(name: str, **conf: Any) -> Celery:
    """The app of ``examples.<name>``: prefix and queue ``example-<name>``.

    The app's main name is the module path, so a task defined while the module runs
    as ``__main__`` gets the name the worker registers (``examples.<name>.<task>``).
    """
    app = Celery(f"examples.{name}", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(
        kv_redis_url=REDIS_URL,
        kv_prefix=f"example-{name}",
        task_default_queue=f"example-{name}",  # never take another app's tasks off the broker
        result_expires=600,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        **conf,
    )
    return app


def start_fresh(kv: KV) -> None:
    """Remove what an earlier run left under the prefix (SCAN + UNLINK, never FLUSHDB),
    so a second run shows the same thing as the first."""
    from celery_kv.celery.cli import purge_prefix

    purge_prefix(kv)


def _watch_parent(parent: int) -> None:
    """In the worker: stop when the example that started it is gone (even SIGKILLed)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(os.getpgrp(), signal.SIGKILL)


if os.environ.get("EXAMPLE_PARENT_PID") == str(os.getppid()):  # we are an example's worker
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()


@contextlib.contextmanager
def worker(app: Celery, module: str, concurrency: int = 2) -> Iterator[str]:
    """Run ``celery -A <module> worker`` (prefork) until the block ends; yields its node name."""
    node = f"{app.conf.task_default_queue}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    cmd = [sys.executable, "-m", "celery", "-A", module, "worker", "-P", "prefork",
           "-c", str(concurrency), "-Q", app.conf.task_default_queue, "-n", node,
           "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
    env = {**os.environ, "EXAMPLE_PARENT_PID": str(os.getpid()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile() as log:  # nameless: nothing is left behind, even on SIGKILL
        # A session of its own: a Ctrl-C reaches only us, and we stop the worker in order.
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_ready(app, node, proc, log)
            yield node
        finally:
            _stop(proc)


def _wait_ready(app: Celery, node: str, proc: subprocess.Popen[bytes], log: IO[bytes],
                timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not app.control.ping(destination=[node], timeout=0.3):
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"worker {node} did not start:\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL whatever of its process group is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
