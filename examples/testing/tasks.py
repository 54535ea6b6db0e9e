"""The app that ``examples/testing/test_tasks.py`` tests: what a team's own project holds.

A singleton rebuild (one per document), an idempotent charge (once per order) and a call
to a partner limited per tenant. Its coordination settings are placeholders: the test
fixtures point the app at fakeredis or at a throwaway ``redis-server``. The broker, the
result backend and eager mode come from the environment, so the same module serves an
eager run, Celery's in-process worker and real worker subprocesses.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from celery_kv import IdempotentTask, KVTask, SingletonTask, install

app = Celery("shop", broker=os.environ.get("SHOP_BROKER", "memory://"),
             backend=os.environ.get("SHOP_BACKEND", "cache+memory://"))
app.conf.update(
    kv_redis_url="redis://127.0.0.1:6379/0",  # the fixtures point it at the test's Redis
    task_default_queue=os.environ.get("SHOP_QUEUE", "shop"),
    task_always_eager=os.environ.get("SHOP_EAGER") == "1",
    task_eager_propagates=True,
    worker_hijack_root_logger=False,
)
install(app)


@app.task(base=SingletonTask, singleton_key="{document_id}", lock_ttl=30)
def rebuild(document_id: int) -> int:
    time.sleep(0.5)  # long enough for a second trigger to find it queued or running
    return document_id


@app.task(base=IdempotentTask, idempotency_key="{order_id}")
def charge(order_id: str, cents: int) -> dict[str, Any]:
    return {"order_id": order_id, "cents": cents}


@app.task(bind=True, base=KVTask, global_rate_limit="2/m", rate_limit_key="{tenant}")
def call_partner(self: Any, tenant: str, payload: str) -> str:
    return f"{tenant}:{payload}"
