"""The fault suite's tasks: every celery-kv feature, each body journalled to the ledger.

``register(app, ledger_url)`` defines them on an app: the test process's client app, and
(through ``worker_tasks``, which the worker imports by the ``imports`` setting) the
workers' app. Every body pushes a ``start`` entry before it works and a ``run`` entry
after, on the ledger Redis (never faulted), stamped with that server's time so entries
from every process compare: ``ran`` counts completed bodies, ``start`` without ``run``
is a body that died half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import redis
from celery import Celery

from celery_kv import CachedTask, IdempotentTask, KVTask
from celery_kv.celery import delays
from celery_kv.celery.features import concurrency
from tests.celery.apps import effects, now

#: the limits the checks hold the ledger to
CONCURRENCY = 2
ALL_CONCURRENCY = 3
RATE, RATE_TEXT = 20, "20/s"
ALL_RATE, ALL_RATE_TEXT = 40, "40/s"
#: the bursts' timing (debounce: 0.3 s after the last call, at most 1 s after the first)
DEBOUNCE, DEBOUNCE_MAX_WAIT = 0.3, 1.0


def ledger_key(tag: str, kind: str) -> str:
    return f"ledger:{tag}:{kind}"


#: task ids deferred into the delay store or parked as concurrency waiters, with the
#: ledger's time (``journal_deferrals``)
DEFERRED = "ledger:deferred"
_journalled: set[str] = set()


def journal_deferrals(ledger_url: str) -> None:
    """Journal every deferral this process puts into the delay store, and every run it
    parks as a concurrency waiter: an empty restart or eviction of the coordination Redis
    loses those still waiting there (the README's "breaks when"), and the checks tell such
    a loss from a bug by this journal."""
    if ledger_url in _journalled:
        return
    _journalled.add(ledger_url)
    ledger = effects(ledger_url)

    def journal(task: Any, task_id: str, entry: str) -> None:
        with contextlib.suppress(redis.RedisError):  # the ledger of a scenario that ended
            ledger.rpush(DEFERRED, json.dumps({"id": task_id, "at": now(ledger)}))

    delays.after_store.append(journal)
    concurrency.after_park.append(lambda task, task_id: journal(task, task_id, ""))


def register(app: Celery, ledger_url: str) -> None:
    """Define the ``f.*`` tasks on ``app``; bodies journal to ``ledger_url``."""
    ledger: redis.Redis = effects(ledger_url)
    journal_deferrals(ledger_url)

    def journal(task: Any, tag: str, duration: float, unit: str | None = None,
                group: str | None = None, **extra: Any) -> None:
        """``unit``: what must run once (an idempotency key; default the task id);
        ``group``: what must never run twice at once, or over a limit; ``extra``: what
        else the checks need (a burst's ``i`` and triggers)."""
        request = task.request
        decision = getattr(request, "kv_rate_limit", None)
        entry = {"task": task.name, "unit": unit or request.id, "group": group,
                 "id": request.id, "pid": os.getpid(), "node": request.hostname,
                 "duration": duration, "start": now(ledger), "at": getattr(decision, "at", None),
                 **extra}
        ledger.rpush(ledger_key(tag, "start"), json.dumps(entry))
        if duration:
            time.sleep(duration)
        entry["end"] = now(ledger)
        ledger.rpush(ledger_key(tag, "run"), json.dumps(entry))

    @app.task(base=IdempotentTask, shared=False, name="f.idem", bind=True)
    def idem(self: Any, tag: str, i: int, duration: float = 0.02) -> int:
        """An order charged once: the unit is the idempotency key (sent per call)."""
        journal(self, tag, duration, unit=f"idem:{i}")
        return i * 2

    @app.task(base=KVTask, shared=False, name="f.single", bind=True, singleton=True,
              singleton_mode="running", singleton_key="{group}")
    def single(self: Any, tag: str, group: int, i: int, duration: float = 0.03) -> int:
        """Never two at once per group; every call runs (duplicates queue)."""
        journal(self, tag, duration, group=f"single:{group}")
        return i

    @app.task(base=KVTask, shared=False, name="f.conc", bind=True,
              concurrency_limit=CONCURRENCY)
    def conc(self: Any, tag: str, i: int, duration: float = 0.05) -> int:
        journal(self, tag, duration, group="conc")
        return i

    @app.task(base=KVTask, shared=False, name="f.rate", bind=True,
              global_rate_limit=RATE_TEXT, rate_limit_algorithm="sliding_log")
    def rate(self: Any, tag: str, i: int) -> int:
        journal(self, tag, 0.0, group="rate")
        return i

    @app.task(base=CachedTask, shared=False, name="f.cached", bind=True, cache_ttl=120)
    def cached(self: Any, tag: str, x: int) -> dict[str, int]:
        """A hit must return exactly what the body computed for ``x``."""
        journal(self, tag, 0.02, unit=f"cached:{x}")
        return {"x": x, "square": x * x}

    @app.task(base=KVTask, shared=False, name="f.all", bind=True, idempotent=True,
              singleton=True, singleton_mode="running", singleton_key="{group}",
              concurrency_limit=ALL_CONCURRENCY, global_rate_limit=ALL_RATE_TEXT,
              rate_limit_algorithm="sliding_log", cache_ttl=120)
    def every(self: Any, tag: str, group: int, i: int, duration: float = 0.02) -> int:
        """Every feature at once; the unit is the idempotency key (sent per call)."""
        journal(self, tag, duration, unit=f"all:{i}", group=f"all:{group}")
        return i + 1000

    @app.task(base=KVTask, shared=False, name="f.debounce", bind=True, debounce=DEBOUNCE,
              debounce_key="{group}", debounce_max_wait=DEBOUNCE_MAX_WAIT)
    def debounce(self: Any, tag: str, group: int, i: int) -> int:
        """A burst of calls per group runs once, with the latest call's ``i``: every call
        of the burst must get a run that started after it, with its ``i`` or a later one."""
        journal(self, tag, 0.02, group=f"debounce:{group}", i=i,
                triggers=self.request.kv_triggers)
        return i

    @app.task(base=KVTask, shared=False, name="f.latest", bind=True, singleton=True,
              singleton_mode="latest", singleton_key="{group}")
    def latest(self: Any, tag: str, group: int, i: int) -> int:
        """Keep-latest: one run and one pending per group; the pending one runs with the
        latest call's ``i``."""
        journal(self, tag, 0.05, group=f"latest:{group}", i=i,
                triggers=self.request.kv_triggers)
        return i
