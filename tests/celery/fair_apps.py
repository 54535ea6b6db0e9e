"""Tasks of the fair concurrency tests (tests/celery/test_fair_concurrency.py).

Each body records, on the effects Redis's clock, one journal entry when it starts
(``fx:<tag>:starts``, in start order) and one interval when it ends (``fx:<tag>:ev``), and
counts its runs per call (``fx:<tag>:runs``, a hash ``<tenant>:<i>`` -> runs). With
``ckv_fair_stall`` in the app's conf (a victim worker), a final outcome that is about to
publish a granted waiter's message stalls there instead, for the test to SIGKILL it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from celery import Celery

from celery_kv import KVTask
from celery_kv.celery.features import concurrency


def now(r: redis.Redis) -> float:
    sec, usec = r.time()
    return sec + usec / 1e6


def add_fair_tasks(app: Celery, fx: redis.Redis) -> None:
    def body(tag: str, tenant: str, i: int, duration: float) -> int:
        start = now(fx)
        fx.rpush(f"fx:{tag}:starts", f"{tenant}:{i}")
        fx.hincrby(f"fx:{tag}:runs", f"{tenant}:{i}", 1)
        if duration:
            time.sleep(duration)
        fx.rpush(f"fx:{tag}:ev", json.dumps({"start": start, "end": now(fx), "key": tenant}))
        return i

    options: dict[str, Any] = {"base": KVTask, "shared": False,
                               "concurrency_key": "{tag}:{tenant}", "lock_ttl": 2.0}
    for name, extra in (("t.fair_ab", {"concurrency_limit": 4, "concurrency_total": 4}),
                        ("t.fair_w", {"concurrency_limit": 4, "concurrency_total": 4}),
                        ("t.fair_cap", {"concurrency_limit": 2, "concurrency_total": 3}),
                        ("t.fair_fifo", {"concurrency_limit": 1}),
                        ("t.fair_kill", {"concurrency_limit": 1}),
                        ("t.fair_full", {"concurrency_limit": 1,
                                         "concurrency_max_waiting": 2})):
        def task(tag: str, tenant: str, i: int, duration: float = 0.0) -> int:
            return body(tag, tenant, i, duration)

        app.task(name=name, **options, **extra)(task)

    if app.conf.get("ckv_fair_stall"):
        def stall(messages: list[Any]) -> None:
            if messages:
                fx.set("fx:fair:stalled", "1")
                time.sleep(3600)

        concurrency.before_publish.append(stall)
