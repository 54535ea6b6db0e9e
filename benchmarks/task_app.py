"""The benchmark's Celery app: the same no-op body under each variant.

Configured from BENCH_BROKER (broker and results) and BENCH_KV (coordination), kept on
separate servers so the coordination server counts only coordination commands. The peers
(celery-once, celery-singleton) keep their locks on that same coordination server, so their
commands land in the same INFO commandstats as celery-kv's.

Every variant is one line in ``VARIANTS``: a task base class and the options given to
``app.task``. Each task takes ``(run, i)``, which differs per call, so no variant's dedup
collapses the benchmark's calls (a singleton key is built from the arguments).

The peers need no shim with celery 5.7 / redis-py 7: celery-once 3.0.1 locks with
``redis.lock.Lock`` (one SET NX PX) and clears with DEL; celery-singleton 0.3.1 locks with
SET NX EX and clears with DEL. celery-once imports ``six`` without declaring it; ``six`` is
here through celery's python-dateutil.
"""

from __future__ import annotations

import os

import redis
from celery import Celery, Task
from celery_once import QueueOnce
from celery_singleton import Singleton

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
    # celery-once, as its README configures it: lock backend on the coordination server.
    ONCE={
        "backend": "celery_once.backends.Redis",
        "settings": {"url": os.environ["BENCH_KV"], "default_timeout": 60 * 60},
    },
    # celery-singleton, as its README configures it (else it falls back to the broker).
    singleton_backend_url=os.environ["BENCH_KV"],
)
install(app)
_done = redis.Redis.from_url(os.environ["BENCH_BROKER"])

# name -> (task base class, options for app.task). Add a variant by adding a line.
VARIANTS: dict[str, tuple[type[Task], dict[str, object]]] = {
    "plain": (KVTask, {}),
    "singleton": (KVTask, {"singleton": True}),
    "idempotent": (KVTask, {"idempotent": True}),
    "rate_limit": (KVTask, {"global_rate_limit": "1000000/s"}),
    "concurrency": (KVTask, {"concurrency_limit": 1000}),
    "cache": (KVTask, {"cache_ttl": 300}),
    # keep-latest: every call its own key here (arguments differ), so each fires at once
    "latest": (KVTask, {"singleton": True, "singleton_mode": "latest"}),
    "all": (KVTask, {
        "singleton": True, "idempotent": True, "global_rate_limit": "1000000/s",
        "concurrency_limit": 1000, "cache_ttl": 300,
    }),
    # Peers. A duplicate raises (celery-once's default; celery-singleton when asked), so a
    # collapsed call fails the run instead of leaving it waiting for a task that never runs.
    "once": (QueueOnce, {"once": {"graceful": False}}),
    "celery_singleton": (Singleton, {"raise_on_duplicate": True}),
}


def _make(variant: str, base: type[Task], options: dict[str, object]) -> object:
    def noop(run: str, i: int) -> int:
        _done.incr(f"bench:done:{run}")  # the same one command for every variant
        return i

    noop.__name__ = f"noop_{variant}"
    return app.task(name=f"bench.{variant}", base=base, **options)(noop)


TASKS = {variant: _make(variant, base, options) for variant, (base, options) in VARIANTS.items()}
