"""The ``celery kv`` command: look at and operate an app's coordination keys.

    celery -A proj kv doctor                       # is this Redis fit to coordinate? (+ ACL rules)
    celery -A proj kv locks                        # held locks and bursts: task id, TTL, fence
    celery -A proj kv unlock KEY                   # break one lock (its fence counter stays)
    celery -A proj kv limits TASK [IDENTITY]       # a task's global rate limit, for one identity
    celery -A proj kv limits --rate 100/m IDENTITY # a limit built with kv.rate_limit(...)
    celery -A proj kv idempotency TASK KEY         # one record of an idempotent task
    celery -A proj kv idempotency --namespace payments KEY
    celery -A proj kv debounce TASK [KEY]          # a debounced task's pending/running bursts
    celery -A proj kv concurrency show TASK        # a pool's keys: running, waiting, weight
    celery -A proj kv concurrency weight TASK KEY W  # a key's share of the pool (--clear)
    celery -A proj kv purge [--yes]                # SCAN + UNLINK every key under the prefix
    celery -A proj kv dashboard [--port 9809]      # a live web page (read-only; --allow-unlock)
    celery -A proj kv why TASK_ID                  # what holds a task back: cause, holder, keys
    celery -A proj kv metrics [--port 9808]        # Prometheus: decisions and live state

One module per subcommand; ``_base`` holds the group, the target (Redis and prefix, from
the app as its workers see them, or ``--url``/``--prefix``) and the error handling: every
failure is one line on stderr and a non-zero exit, never a traceback, never a password.
The work itself lives in the library (``celery_kv.store.admin``, ``.bursts``, ``.urls``,
``.acl``).
"""

from __future__ import annotations

from ...kv import KV
from ...store import admin
from ...store.admin import decode_identity
from ...store.urls import mask_url
from . import (  # noqa: F401
    concurrency,
    dashboard,
    debounce,
    doctor,
    idempotency,
    limits,
    locks,
    metrics,
    purge,
    why,
)
from ._base import kv, table

lock_name_of = admin.name_of


def purge_prefix(kv_: KV) -> int:
    """UNLINK every key under ``kv_``'s prefix (``celery_kv.store.admin.purge``)."""
    return admin.purge(kv_.store)


__all__ = ["decode_identity", "kv", "lock_name_of", "mask_url", "purge_prefix", "table"]
