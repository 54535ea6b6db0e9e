"""Cache: a hit returns the stored value without running the body; concurrent misses of one
key run it once (single flight).

The task's ``Cache`` namespace (the task's name), keys ``(cache_version, key)``. The start
phase fetches: a hit ends the run with the value, a miss makes this run the computer on
the cache's compute lease, and a miss while another run computes waits in the worker
(BLPOP on the cache's notify list, bounded by that lease) and looks again. The final
outcome fills the value, or gives the lease up so a waiter computes.
"""

from __future__ import annotations

import math
import random
from typing import Any

from ... import signals
from ...primitives._arguments import text, to_ms
from ...primitives.cache import Cache
from ...store import Step, codec
from ..context import Context, Run
from ..keys import KeySpec
from ..options import Option, TaskDefinition, Where, flag, key_spec, seconds
from .base import Block, Feature, Outcome


def _version(value: Any, where: Where) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{where(value)} must be a str or int")
    return str(value)


ENABLED = Option("cached", "cache with `kv_cache_ttl` (`CachedTask` sets it)", flag, False)
TTL = Option("cache_ttl", "cache the result for this long (enables the cache)", seconds, 300.0,
             "kv_cache_ttl")
KEY = Option("cache_key", "template or callable; default: all arguments", key_spec)
VERSION = Option("cache_version", "part of every cache key: change it to invalidate", _version)


def _all(keys: Any) -> tuple[str, ...]:
    """The cache's keys for one value, in the order its scripts take them."""
    return (keys.version, keys.value, keys.lease, keys.waiters, keys.notify)


class CacheFeature(Feature):
    name = "cache"
    counts = {"task_cache_start": "ok>cache_miss,admitted;stop>cache_hit"}
    options = (ENABLED, TTL, KEY, VERSION)
    on_unavailable = "run"
    stores_result = True

    def __init__(self, task: TaskDefinition) -> None:
        self.task_name = task.name
        self.ttl: float = task.get(TTL)
        self.key: KeySpec | None = task.get(KEY)
        self.version: str = task.get(VERSION) or ""
        limits = [task.raw("time_limit"), task.raw("soft_time_limit")]
        # The single-flight lease: the task's time limit when it has one, else the cache's.
        self.compute_timeout = next(
            (float(v) for v in limits if isinstance(v, (int, float)) and v > 0), None)
        self._cache: tuple[Any, Cache] | None = None

    @classmethod
    def configure(cls, task: TaskDefinition) -> CacheFeature | None:
        enabled = bool(task.get(ENABLED)) or task.is_set(TTL)
        task.needs(KEY, enabled, "cache (cache_ttl)")
        task.needs(VERSION, enabled, "cache")
        feature = cls(task)
        return feature if enabled else None

    def cache(self, kv: Any, namespace: str) -> Cache:
        cached = self._cache
        if cached is None or cached[0] is not kv:
            cached = self._cache = (kv, kv.cache(namespace, ttl=self.ttl,
                                                 lock_timeout=self.compute_timeout))
        return cached[1]

    def _user_key(self, ctx: Context) -> str:
        return ctx.call.fingerprint if self.key is None else self.key.render(ctx.call)

    def describe(self, ctx: Context) -> dict[str, Any]:
        return {"cache": self._user_key(ctx)}

    def _where(self, run: Run) -> tuple[Cache, Any]:
        cache = self.cache(run.kv, run.policy.namespace)
        keys = cache._keys((self.version, self._user_key(run)))
        return cache, keys

    def start(self, run: Run) -> Step:
        cache, keys = self._where(run)
        factor = -cache.beta * math.log(1.0 - random.random()) if cache.beta else 0.0
        return Step("task_cache_start", _all(keys), (
            run.token, to_ms(cache.lock_timeout), repr(factor), cache._version_ms(cache.ttl)))

    def started(self, run: Run, reply: list[Any]) -> None:
        version = text(reply[1])[1:].split(" ", 2)[1]
        run.state[self.name] = version
        signals.emit(signals.cache_miss, run.task, task_id=run.task_id, key=self._user_key(run))

    def stopped(self, run: Run, reply: list[Any]) -> Any:
        signals.emit(signals.cache_hit, run.task, task_id=run.task_id, key=self._user_key(run))
        return codec.loads(text(reply[1])[1:])

    def denied(self, run: Run, reply: list[Any]) -> Block:
        cache, keys = self._where(run)
        ms = int(text(reply[1])[1:].split(" ", 1)[0])
        return Block(lambda: cache._wait(keys, ms / 1000.0))

    def hand_back(self, run: Run, hold: float) -> Step | None:
        return self._release(run)

    def _release(self, run: Run) -> Step | None:
        if self.name not in run.held:
            return None
        cache, keys = self._where(run)
        return Step("task_cache_release", _all(keys),
                    (run.token, to_ms(cache.lock_timeout)))

    def finish(self, run: Run, outcome: Outcome, revoke: str = "") -> Step | None:
        if revoke or self.name not in run.held:
            return None
        if not outcome.done or outcome.error:
            return self._release(run)
        cache, keys = self._where(run)
        elapsed_ms = max(run.elapsed * 1000.0, 0.0)
        return Step("task_cache_fill", _all(keys), (
            run.token, outcome.raw, to_ms(self.ttl), f"{elapsed_ms:.3f}", run.state[self.name],
            cache._version_ms(self.ttl), to_ms(cache.lock_timeout)))
