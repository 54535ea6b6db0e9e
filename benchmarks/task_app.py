"""The benchmark's Celery app: the same no-op body under each celery-kv feature.

Configured from BENCH_BROKER (broker and results) and BENCH_KV (coordination), kept on
separate servers so the coordination server counts only celery-kv's commands.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from celery_kv import KVTask, install

app = Celery("bench", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BROKER"])
app.conf.update(
    kv_redis_url=os.environ["BENCH_KV"],
    kv_prefix="bench",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)
install(app)
_done = redis.Redis.from_url(os.environ["BENCH_BROKER"])

FEATURES: dict[str, dict[str, object]] = {
    "plain": {},
    "singleton": {"singleton": True},
    "idempotent": {"idempotent": True},
    "rate_limit": {"global_rate_limit": "1000000/s"},
    "concurrency": {"concurrency_limit": 1000},
    "cache": {"cache_ttl": 300},
    "all": {
        "singleton": True, "idempotent": True, "global_rate_limit": "1000000/s",
        "concurrency_limit": 1000, "cache_ttl": 300,
    },
}


def _make(feature: str, options: dict[str, object]) -> object:
    def noop(run: str, i: int) -> int:
        _done.incr(f"bench:done:{run}")  # the same one command for every variant
        return i

    noop.__name__ = f"noop_{feature}"
    return app.task(name=f"bench.{feature}", base=KVTask, **options)(noop)


TASKS = {feature: _make(feature, options) for feature, options in FEATURES.items()}
