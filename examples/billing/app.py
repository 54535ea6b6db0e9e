"""The billing app's Celery app.

Configured from the environment, so the demo, docker-compose and a shell run the
same code:

- ``BILLING_BROKER_URL``: the broker (default ``redis://127.0.0.1:6379/0``);
- ``BILLING_RESULT_BACKEND``: results (default: the broker URL);
- ``BILLING_KV_URL``: the Redis that coordinates (default: the broker URL);
- ``BILLING_KV_PREFIX``: the prefix of every celery-kv key (default ``billing``).

    celery -A examples.billing.app worker -c 2
    celery -A examples.billing.app kv doctor
"""

from __future__ import annotations

import os

from celery import Celery

from celery_kv import install

BROKER_URL = os.environ.get("BILLING_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery(
    "billing",
    broker=BROKER_URL,
    backend=os.environ.get("BILLING_RESULT_BACKEND", BROKER_URL),
    include=["examples.billing.tasks"],
)
app.conf.update(
    kv_redis_url=os.environ.get("BILLING_KV_URL", BROKER_URL),
    kv_prefix=os.environ.get("BILLING_KV_PREFIX", "billing"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# One KV for the app: the tasks' coordination and the web side's sessions share it.
kv = install(app)
