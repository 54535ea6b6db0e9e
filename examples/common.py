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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Celery

from celery_kv import KV
from celery_kv.testing.workers import worker_process

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


@contextlib.contextmanager
def worker(app: Celery, module: str, concurrency: int = 2) -> Iterator[str]:
    """Run ``celery -A <module> worker`` (prefork) until the block ends; yields its node name."""
    # the worker stops by itself if this example is killed (CELERY_KV_PARENT_PID)
    with worker_process(app, module, concurrency=concurrency, cwd=str(ROOT)) as node:
        yield node
