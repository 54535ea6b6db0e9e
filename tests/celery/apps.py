"""Test apps for the worker tests: one factory, used by the test process and the workers.

Every task takes a ``tag`` (unique per test) first, so tests that share one worker
never see each other's keys or effects. Effects are recorded in Redis on server time:
``fx:<tag>:n`` (INCR per body run) and ``fx:<tag>:ev`` (RPUSH of JSON events).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Ignore, Reject
from celery.signals import worker_init, worker_ready

from celery_kv import (
    CachedTask,
    CoordinationUnavailable,
    DuplicateTask,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    IdempotentTask,
    KVTask,
    LockLost,
    LockNotAcquired,
    RateLimitedTask,
    RateLimitExceeded,
    SingletonTask,
    install,
)

_clients: dict[str, redis.Redis] = {}


def effects(url: str) -> redis.Redis:
    """A client for the effects database (redis-py pools are fork-safe)."""
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, decode_responses=True)
    return _clients[url]


def now(r: redis.Redis) -> float:
    sec, usec = r.time()
    return sec + usec / 1e6


def make_app(name: str, broker: str, backend: str, kv_url: str, prefix: str, fx_url: str,
             **conf: Any) -> Celery:
    app = Celery(name, broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        kv_redis_url=kv_url, kv_prefix=prefix, kv_wait_interval=0.2, kv_retry_deadline=0.5,
        result_expires=600,
    )
    app.conf.update(conf)
    install(app)
    fx = effects(fx_url)

    def run_body(tag: str, duration: float = 0.0, **extra: Any) -> dict[str, Any]:
        start = now(fx)
        fx.incr(f"fx:{tag}:n")
        fx.set(f"fx:{tag}:pid", os.getpid())
        if duration:
            time.sleep(duration)
        event = {"start": start, "end": now(fx), "pid": os.getpid(), **extra}
        fx.rpush(f"fx:{tag}:ev", json.dumps(event))
        return event

    # -- singleton ------------------------------------------------------------------------

    @app.task(base=SingletonTask, shared=False, name="t.single", bind=True)
    def single(self: Any, tag: str, x: int, duration: float = 0.3) -> int:
        run_body(tag, duration, fence=self.fence, id=self.request.id)
        return x

    @app.task(base=SingletonTask, shared=False, name="t.single_fail")
    def single_fail(tag: str) -> None:
        run_body(tag)
        raise ValueError("boom")

    @app.task(base=SingletonTask, shared=False, name="t.single_retry", bind=True, max_retries=5)
    def single_retry(self: Any, tag: str, times: int) -> int:
        run_body(tag, retries=self.request.retries, fence=self.fence)
        if self.request.retries < times:
            raise self.retry(countdown=1.0)
        return self.request.retries

    @app.task(base=SingletonTask, shared=False, name="t.single_retry_fail", bind=True,
              max_retries=1)
    def single_retry_fail(self: Any, tag: str) -> None:
        run_body(tag)
        raise self.retry(countdown=0.1, exc=KeyError("still failing"))

    @app.task(base=SingletonTask, shared=False, name="t.single_reject")
    def single_reject(tag: str) -> None:
        run_body(tag)
        raise Reject("rejected", requeue=False)

    @app.task(base=SingletonTask, shared=False, name="t.single_ignore")
    def single_ignore(tag: str) -> None:
        run_body(tag)
        raise Ignore()

    def hold(task: Any, tag: str, seconds: float) -> list[int | None]:
        """Hold the key until ``fx:<tag>:go`` is set (or ``seconds``); record the fences."""
        fences = [task.fence]
        start = time.monotonic()
        fx.set(f"fx:{tag}:pid", os.getpid())
        fx.incr(f"fx:{tag}:n")
        while time.monotonic() - start < seconds and not fx.get(f"fx:{tag}:go"):
            time.sleep(0.05)
        fences.append(task.fence)
        fx.rpush(f"fx:{tag}:ev", json.dumps({"done": now(fx), "fences": fences}))
        return fences

    @app.task(base=SingletonTask, shared=False, name="t.single_wait", bind=True, lock_ttl=2.0)
    def single_wait(self: Any, tag: str, seconds: float) -> list[int | None]:
        return hold(self, tag, seconds)

    @app.task(base=SingletonTask, shared=False, name="t.single_hold", bind=True, lock_ttl=30.0)
    def single_hold(self: Any, tag: str, seconds: float) -> list[int | None]:
        return hold(self, tag, seconds)

    @app.task(base=SingletonTask, shared=False, name="t.single_kill", bind=True, lock_ttl=2.0,
              acks_late=True, reject_on_worker_lost=True)
    def single_kill(self: Any, tag: str) -> int:
        """Blocks on the first delivery (the test SIGKILLs it); returns at once later."""
        fx.incr(f"fx:{tag}:starts")
        fx.set(f"fx:{tag}:pid", os.getpid())
        deadline = time.monotonic() + 60
        while not fx.get(f"fx:{tag}:go") and time.monotonic() < deadline:
            time.sleep(0.05)
        fx.rpush(f"fx:{tag}:ev", json.dumps({"done": now(fx), "pid": os.getpid()}))
        return int(fx.incr(f"fx:{tag}:n"))

    for mode_name, on_locked in (("retry", "retry"), ("skip", "skip"), ("raise", "raise")):
        def running(tag: str, x: int, duration: float = 0.3) -> int:
            run_body(tag, duration)
            return x

        app.task(base=SingletonTask, shared=False, name=f"t.running_{mode_name}",
                 singleton_mode="running", singleton_key="{tag}", on_locked=on_locked)(running)

    @app.task(base=SingletonTask, shared=False, name="t.single_raise", on_duplicate="raise",
              singleton_key="{tag}")
    def single_raise(tag: str, duration: float = 0.5) -> None:
        run_body(tag, duration)

    # -- idempotency ----------------------------------------------------------------------

    @app.task(base=IdempotentTask, shared=False, name="t.idem_add")
    def idem_add(tag: str, a: int, b: int, duration: float = 0.0) -> int:
        run_body(tag, duration)
        return a + b

    @app.task(base=IdempotentTask, shared=False, name="t.idem_retry", bind=True,
              max_retries=5)
    def idem_retry(self: Any, tag: str, times: int) -> int:
        run_body(tag)
        if self.request.retries < times:
            raise self.retry(countdown=0.5)
        return self.request.retries

    @app.task(base=IdempotentTask, shared=False, name="t.idem_bad")
    def idem_bad(tag: str) -> Any:
        run_body(tag)
        return {1, 2}

    @app.task(base=IdempotentTask, shared=False, name="t.idem_quiet", ignore_result=True)
    def idem_quiet(tag: str, x: int) -> int:
        run_body(tag)
        return x * 2

    @app.task(base=IdempotentTask, shared=False, name="t.idem_gate", idempotency_lease=2.0)
    def idem_gate(tag: str, x: int, fail: bool = False) -> int:
        """Runs until the test opens its gate (``fx:<tag>:go``), so a fault can be timed."""
        run_body(tag)
        deadline = time.monotonic() + 60
        while not fx.exists(f"fx:{tag}:go") and time.monotonic() < deadline:
            time.sleep(0.02)
        if fail:
            raise RuntimeError(f"{tag} failed after its gate")
        return x * 2

    @app.task(shared=False, name="t.plus")
    def plus(a: int, b: int) -> int:
        return a + b

    @app.task(base=IdempotentTask, shared=False, name="t.idem_replace", bind=True)
    def idem_replace(self: Any, tag: str, x: int) -> Any:
        run_body(tag)
        return self.replace(plus.si(x, 100))

    @app.task(base=KVTask, shared=False, name="t.idem_single", singleton=True,
              idempotent=True)
    def idem_single(tag: str, x: int) -> int:
        run_body(tag)
        return x

    # -- lifecycle holes ------------------------------------------------------------------

    @app.task(base=SingletonTask, shared=False, name="t.single_long_retry", bind=True,
              queued_ttl=2.0, max_retries=1)
    def single_long_retry(self: Any, tag: str) -> int:
        run_body(tag, retries=self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=6.0)
        return self.request.retries

    @app.task(base=SingletonTask, shared=False, name="t.poller", bind=True,
              singleton_key="{tag}")
    def poller(self: Any, tag: str, n: int, last: int = 3) -> int:
        event = run_body(tag, 0.3, n=n, fence=self.fence)
        if n < last:
            successor = self.apply_async((tag, n + 1, last))
            fx.rpush(f"fx:{tag}:successors", successor.id)
        return int(event["pid"] and n)

    @app.task(base=SingletonTask, shared=False, name="t.single_late", bind=True,
              acks_late=True, lock_ttl=2.0)
    def single_late(self: Any, tag: str, duration: float) -> int:
        run_body(tag, duration, id=self.request.id,
                 redelivered=bool(self.request.delivery_info.get("redelivered")))
        return int(fx.get(f"fx:{tag}:n") or 0)

    @app.task(base=SingletonTask, shared=False, name="t.lose", bind=True, lock_ttl=1.0,
              singleton_key="{tag}")
    def lose(self: Any, tag: str) -> dict[str, Any]:
        fx.incr(f"fx:{tag}:n")
        deadline = time.monotonic() + 20
        while not self.kv_lost and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            self.kv_checkpoint()
            raised = None
        except LockLost as exc:
            raised = type(exc).__name__
        return {"lost": self.kv_lost, "checkpoint": raised}

    # -- rate limits, concurrency ---------------------------------------------------------

    @app.task(base=RateLimitedTask, shared=False, name="t.rl_global", bind=True,
              global_rate_limit="5/s", rate_limit_algorithm="sliding_log", max_retries=0)
    def rl_global(self: Any, tag: str, i: int) -> int:
        fx.rpush(f"fx:{tag}:ev", json.dumps({"at": self.request.kv_rate_limit.at, "i": i,
                                             "host": self.request.hostname}))
        fx.incr(f"fx:{tag}:n")
        return i

    @app.task(base=RateLimitedTask, shared=False, name="t.rl_tenant", global_rate_limit="4/s",
              rate_limit_key="{tenant}", max_retries=0)
    def rl_tenant(tag: str, tenant: str, i: int) -> float:
        done = now(fx)
        fx.rpush(f"fx:{tag}:{tenant}", json.dumps({"done": done, "i": i}))
        return done

    @app.task(base=RateLimitedTask, shared=False, name="t.rl_max_delay", global_rate_limit="1/m",
              rate_limit_key="{tag}", rate_limit_max_delay=2.0)
    def rl_max_delay(tag: str, i: int) -> int:
        fx.incr(f"fx:{tag}:n")
        return i

    @app.task(base=KVTask, shared=False, name="t.conc", concurrency_limit=2,
              concurrency_key="{tag}")
    def conc(tag: str, i: int, duration: float = 0.4) -> int:
        run_body(tag, duration, i=i, host=conc.request.hostname)
        return i

    @app.task(base=KVTask, shared=False, name="t.combo", bind=True, singleton=True,
              singleton_mode="running", singleton_key="{tag}", global_rate_limit="3/s",
              rate_limit_key="{tag}", rate_limit_algorithm="sliding_log", max_retries=0)
    def combo(self: Any, tag: str, i: int) -> int:
        run_body(tag, 0.1, at=self.request.kv_rate_limit.at, fence=self.fence)
        return i

    # -- cache ----------------------------------------------------------------------------

    @app.task(base=CachedTask, shared=False, name="t.cached", cache_ttl=60)
    def cached(tag: str, x: int, duration: float = 0.0) -> dict[str, int]:
        run_body(tag, duration)
        return {"x": x, "n": int(fx.get(f"fx:{tag}:n") or 0)}

    @app.task(base=CachedTask, shared=False, name="t.cache_bad")
    def cache_bad(tag: str) -> Any:
        run_body(tag)
        return object()

    # -- canvas ---------------------------------------------------------------------------

    @app.task(shared=False, name="t.collect")
    def collect(value: Any, tag: str) -> Any:
        fx.rpush(f"fx:{tag}:collected", json.dumps(value))
        return value

    @app.task(shared=False, name="t.total")
    def total(values: list[int], tag: str) -> int:
        fx.rpush(f"fx:{tag}:collected", json.dumps(sorted(values)))
        return sum(values)

    # -- errors ---------------------------------------------------------------------------

    @app.task(shared=False, name="t.raise_kv")
    def raise_kv(kind: str) -> None:
        errors: dict[str, Exception] = {
            "DuplicateTask": DuplicateTask("k1", "holder-1", "t.raise_kv"),
            "LockNotAcquired": LockNotAcquired("k2", "holder-2", "t.raise_kv"),
            "LockLost": LockLost("k3", "holder-3", "t.raise_kv"),
            "IdempotencyInProgress": IdempotencyInProgress("k4", "holder-4", "t.raise_kv"),
            "IdempotencyKeyReused": IdempotencyKeyReused("k5", "t.raise_kv"),
            "RateLimitExceeded": RateLimitExceeded("k6", 1.5, "t.raise_kv", "global"),
            "CoordinationUnavailable": CoordinationUnavailable("lock_acquire", "refused"),
        }
        raise errors[kind]

    # -- fork -----------------------------------------------------------------------------

    @app.task(base=KVTask, shared=False, name="t.client_id", bind=True)
    def client_id(self: Any, tag: str) -> list[int]:
        ident = int(self.kv.client.client_id())
        time.sleep(0.2)  # keep this child busy so the other one takes the next job
        fx.rpush(f"fx:{tag}:ev", json.dumps({"pid": os.getpid(), "client": ident}))
        return [os.getpid(), ident]

    # -- debounce and keep-latest -----------------------------------------------------------

    def burst_body(self: Any, tag: str, x: Any, duration: float = 0.0) -> Any:
        run_body(tag, duration, x=x, id=self.request.id, fence=self.fence,
                 triggers=getattr(self.request, "kv_triggers", None))
        return x

    for name, options in {
        "t.debounce": {"debounce": 1.0},
        "t.debounce_max": {"debounce": 1.0, "debounce_max_wait": 3.0},
        "t.debounce_lead": {"debounce": 1.0, "debounce_edge": "leading"},
    }.items():
        app.task(base=KVTask, shared=False, name=name, bind=True, debounce_key="{tag}",
                 **options)(burst_body)

    @app.task(base=KVTask, shared=False, name="t.debounce_kill", bind=True, debounce=1.5,
              debounce_key="{tag}", lock_ttl=2.0, acks_late=True, reject_on_worker_lost=True)
    def debounce_kill(self: Any, tag: str, x: int) -> int:
        """Blocks until ``fx:<tag>:go`` is set (the test SIGKILLs it meanwhile)."""
        fx.rpush(f"fx:{tag}:starts", json.dumps({"at": now(fx), "x": x, "pid": os.getpid()}))
        deadline = time.monotonic() + 60
        while not fx.get(f"fx:{tag}:go") and time.monotonic() < deadline:
            time.sleep(0.05)
        run_body(tag, x=x, id=self.request.id, fence=self.fence)
        return x
    app.task(base=SingletonTask, shared=False, name="t.latest", bind=True,
             singleton_mode="latest", singleton_key="{tag}")(burst_body)

    # -- replace and supersede (on_duplicate) ----------------------------------------------

    @app.task(base=SingletonTask, shared=False, name="t.replace", bind=True,
              singleton_key="{tag}", on_duplicate="replace")
    def replace(self: Any, tag: str, x: int, duration: float = 0.0) -> int:
        run_body(tag, duration, x=x, id=self.request.id, fence=self.fence)
        return x

    def watch_supersede(self: Any, tag: str, x: int, duration: float) -> int:
        """Checks every 50 ms for ``duration`` s; records when it first sees that it was
        superseded (``fx:<tag>:seen:<id>``, server time), then checkpoints."""
        task_id = self.request.id
        fx.rpush(f"fx:{tag}:starts", json.dumps({"at": now(fx), "x": x, "id": task_id,
                                                 "fence": self.fence}))
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            if self.kv_superseded:
                fx.setnx(f"fx:{tag}:seen:{task_id}", now(fx))
            self.kv_checkpoint()
            time.sleep(0.05)
        run_body(tag, x=x, id=task_id, fence=self.fence)
        return x

    app.task(base=SingletonTask, shared=False, name="t.supersede", bind=True,
             singleton_key="{tag}", on_duplicate="supersede", lock_ttl=3.0)(watch_supersede)

    @app.task(base=SingletonTask, shared=False, name="t.supersede_terminate", bind=True,
              singleton_key="{tag}", on_duplicate="supersede", supersede_terminate=True,
              lock_ttl=3.0)
    def supersede_terminate(self: Any, tag: str, x: int, duration: float) -> int:
        """Never checks: only a terminate stops it early."""
        fx.rpush(f"fx:{tag}:starts", json.dumps({"at": now(fx), "x": x, "pid": os.getpid(),
                                                 "id": self.request.id, "fence": self.fence}))
        time.sleep(duration)
        run_body(tag, x=x, id=self.request.id, fence=self.fence)
        return x

    # -- unavailable Redis ----------------------------------------------------------------

    for policy in ("retry", "run", "raise"):
        def unavailable(tag: str) -> str:
            fx.incr(f"fx:{tag}:n")
            return "ran"

        app.task(base=SingletonTask, shared=False, name=f"t.down_{policy}", on_unavailable=policy,
                 singleton_key="{tag}")(unavailable)

    # -- fair concurrency slots (tests/celery/test_fair_concurrency.py) --------------------
    from tests.celery.fair_apps import add_fair_tasks

    add_fair_tasks(app, fx)

    # -- rate-limit reservations, overrides, throttles (tests/celery/apps_ratelimit.py) ----
    from tests.celery.apps_ratelimit import add_tasks as add_ratelimit_tasks

    add_ratelimit_tasks(app, fx)
    return app


def hook_worker(app: Celery, node: str, fx_url: str) -> None:
    """Report readiness and the main process's CLIENT ID (before the pool forks)."""
    fx = effects(fx_url)

    @worker_init.connect(weak=False)
    def _init(**_: Any) -> None:
        from celery_kv.celery.install import installed

        kv = installed(app).kv
        if kv.ping():
            fx.set(f"parent_client:{node}", int(kv.client.client_id()))

    @worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        fx.set(f"ready:{node}", os.getpid())


def _watch(parent: int) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def worker_from_environment(make: Callable[..., Celery], name: str) -> Celery:
    """The app of a ``celery worker`` this test session started: ``make``'s app,
    configured from the CKV_* variables, with a watchdog thread that kills the worker's
    process group when the session is gone (a killed pytest never leaves workers behind)."""
    if os.environ.get("CKV_PARENT_PID"):
        threading.Thread(target=_watch, args=(int(os.environ["CKV_PARENT_PID"]),),
                         daemon=True, name="ckv-watchdog").start()
    made = make(
        name,
        broker=os.environ["CKV_BROKER"],
        backend=os.environ["CKV_BACKEND"],
        kv_url=os.environ["CKV_KV"],
        prefix=os.environ["CKV_PREFIX"],
        fx_url=os.environ["CKV_FX"],
        **json.loads(os.environ.get("CKV_CONF", "{}")),
    )
    hook_worker(made, os.environ["CKV_NODE"], os.environ["CKV_FX"])
    return made
