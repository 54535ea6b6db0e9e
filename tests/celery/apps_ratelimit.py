"""Rate-limit tasks of the worker tests (reservations, overrides, throttles): added to
every test app by ``tests.celery.apps.make_app``.

Each body appends one JSON event to ``fx:<tag>:ev``: its argument, the server time the
run was counted at (``kv_rate_limit.at``: its reserved slot, if it had one), the server
time it started, how often it was deferred by the rate limit (its header mark) and the
worker node.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from celery import Celery

from celery_kv import KVTask, Throttled
from celery_kv.celery.context import header_of


def _now(fx: redis.Redis) -> float:
    sec, usec = fx.time()
    return float(sec) + usec / 1e6


def add_tasks(app: Celery, fx: redis.Redis) -> None:
    def record(task: Any, tag: str, i: Any, **extra: Any) -> dict[str, Any]:
        header = header_of(task.request)
        event = {"i": i, "at": task.request.kv_rate_limit.at, "start": _now(fx),
                 "denials": int(header.get("rate_limit_denials", 0)),
                 "host": task.request.hostname, "retries": task.request.retries, **extra}
        fx.rpush(f"fx:{tag}:ev", json.dumps(event))
        return event

    @app.task(base=KVTask, shared=False, name="t.rlr_backlog", bind=True,
              global_rate_limit="20/s", rate_limit_key="{tag}", max_retries=0)
    def rlr_backlog(self: Any, tag: str, i: int) -> int:
        record(self, tag, i)
        return i

    for algorithm in ("fixed_window", "sliding_window"):
        def windowed(self: Any, tag: str, i: int) -> int:
            record(self, tag, i)
            return i

        app.task(base=KVTask, shared=False, name=f"t.rlr_{algorithm}", bind=True,
                 global_rate_limit="4/s", rate_limit_key="{tag}",
                 rate_limit_algorithm=algorithm, max_retries=0)(windowed)

    @app.task(base=KVTask, shared=False, name="t.rlr_tenant", bind=True,
              global_rate_limit="1/m", rate_limit_key="{tenant}", rate_limit_max_delay=0.5,
              max_retries=0)
    def rlr_tenant(self: Any, tag: str, tenant: str, i: int) -> int:
        record(self, tag, i, tenant=tenant)
        return i

    @app.task(base=KVTask, shared=False, name="t.rlr_429", bind=True,
              global_rate_limit="100/s", rate_limit_key="{tag}", max_retries=0)
    def rlr_429(self: Any, tag: str, i: int, how: str = "") -> int:
        first = how and fx.incr(f"fx:{tag}:first") == 1
        if first and how == "call":
            until = self.kv_throttle(1.5)
            record(self, tag, i, throttled_until=until)
            return i
        if first and how == "raise":
            fx.set(f"fx:{tag}:raised_at", _now(fx))
            raise Throttled(1.5)
        record(self, tag, i)
        return i

    @app.task(base=KVTask, shared=False, name="t.rlr_slow", bind=True,
              global_rate_limit="1/s", rate_limit_key="{tag}", max_retries=0)
    def rlr_slow(self: Any, tag: str, i: int) -> int:
        record(self, tag, i)
        return i
