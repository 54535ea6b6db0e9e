"""The app of the delay-store worker tests (tests/celery/test_delay_store.py).

Its own small app (the workers run ``tests.celery.delay_worker_app``), so these tests
start fast and depend on no other feature's test tasks.

Each body records one run: ``fx:<tag>:n`` (INCR) and ``fx:<tag>:ev`` (an event with the
task id and the server time). In a worker, a ``before_publish`` hook stalls the
maintenance thread after a claim while ``fx:delay_stall`` is set, and records which
worker (main process pid) stalled holding which entries: the test then SIGKILLs it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

from celery_kv import KVTask, RateLimitedTask, install
from celery_kv.store.delays import Claimed
from tests.celery.apps import effects

STALL = "fx:delay_stall"
STALLED = "fx:delay_stalled"  # hash: pid -> JSON list of entry ids it claimed


def make_delay_app(name: str, broker: str, backend: str, kv_url: str, prefix: str,
                   fx_url: str, **conf: Any) -> Celery:
    app = Celery(name, broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        kv_redis_url=kv_url, kv_prefix=prefix, kv_retry_deadline=0.5, result_expires=600,
    )
    app.conf.update(conf)
    install(app)
    register(app, effects(fx_url))
    return app


def register(app: Celery, fx: redis.Redis) -> None:
    def record(task: Any, tag: str, **extra: Any) -> None:
        sec, usec = fx.time()
        fx.incr(f"fx:{tag}:n")
        fx.rpush(f"fx:{tag}:ev", json.dumps({"id": task.request.id, "at": sec + usec / 1e6,
                                             "retries": task.request.retries, **extra}))

    @app.task(base=KVTask, shared=False, name="t.delay_all", bind=True, delay_store="all")
    def delay_all(self: Any, tag: str, i: int) -> int:
        record(self, tag, i=i)
        return i

    @app.task(base=KVTask, shared=False, name="t.delay_off", bind=True, delay_store=False)
    def delay_off(self: Any, tag: str, i: int) -> int:
        """The control: a broker countdown."""
        record(self, tag, i=i)
        return i

    @app.task(base=KVTask, shared=False, name="t.delay_retry", bind=True, delay_store="all",
              max_retries=3)
    def delay_retry(self: Any, tag: str, countdown: float) -> int:
        record(self, tag)
        if self.request.retries < 1:
            raise self.retry(countdown=countdown)
        return int(self.request.retries)

    @app.task(base=RateLimitedTask, shared=False, name="t.delay_rl", bind=True,
              global_rate_limit="2/m", rate_limit_key="{tag}")
    def delay_rl(self: Any, tag: str, i: int) -> int:
        record(self, tag, i=i)
        return i

    if os.environ.get("CKV_NODE"):  # a worker: the stall hook of the kill test
        from celery_kv.celery import maintenance

        def stall(claimed: Claimed) -> None:
            if not fx.get(STALL):
                return
            ids = [entry.entry_id for entry in claimed.entries]
            fx.hset(STALLED, str(os.getpid()), json.dumps(ids))
            while fx.get(STALL):
                time.sleep(0.05)

        maintenance.before_publish.append(stall)
