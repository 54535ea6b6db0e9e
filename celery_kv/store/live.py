"""The live coordination state an operator graphs: what is held and what waits, now.

Read for each scrape of ``celery kv metrics``: a SCAN of the prefix on each primary (never
KEYS), then the keys' fields in pipelines of ``BATCH``, so 10,000 locks cost about a dozen
round trips, not 10,000. Sizes are by task (or lock kind), never by key, so the number of
series stays bounded whatever the keys are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import admin

if TYPE_CHECKING:
    from .store import Store

BATCH = 500
RUN_MARK = "#run:"
POOL_RUNNING, POOL_WAITERS = ":running", ":waiters"


@dataclass
class LiveState:
    """What ``read_live`` found (times in seconds, server clock)."""

    now: float = 0.0
    locks: dict[str, int] = field(default_factory=dict)  # by state: running, held
    oldest_lock_age: float | None = None
    semaphore_holders: int = 0
    pool_running: dict[str, int] = field(default_factory=dict)  # by pool (task name)
    pool_waiting: dict[str, int] = field(default_factory=dict)
    deferred: int = 0  # messages waiting in the delay store
    reservation_lag: dict[str, float] = field(default_factory=dict)  # by limit scope


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _batches(client: Any, store: Store) -> Iterator[tuple[Any, list[str]]]:
    pattern = store.keys.pattern()
    for _, node in admin.primaries(client):
        for batch in admin.scan(node, pattern):
            for start in range(0, len(batch), BATCH):
                yield node, batch[start:start + BATCH]


def read_live(store: Store) -> LiveState:
    """Locks (by state, the oldest holder's age), semaphore holders, concurrency slots
    and parked waiters per pool, deferred messages, and how far ahead each rate-limit
    scope has reserved slots."""
    prefix = store.prefix

    def read(client: Any) -> LiveState:
        seconds, micros = (client.time(target_nodes=client.get_primaries()[0])
                           if store.cluster else client.time())
        state = LiveState(now=seconds + micros / 1e6)
        now_ms, now_us = state.now * 1000, state.now * 1e6
        for node, keys in _batches(client, store):
            pipe = node.pipeline(transaction=False)
            wanted: list[tuple[str, str]] = []
            for key in keys:
                kind = key[len(prefix) + 1:].split(":", 1)[0]
                if kind == "lock" and key.endswith("}"):
                    pipe.hmget(key, "owner", "at")
                elif kind == "sem" and key.endswith("}"):
                    pipe.zcount(key, now_ms, "+inf")
                elif kind == "conc" and key.endswith(POOL_RUNNING):
                    pipe.hvals(key)
                elif ((kind == "conc" and key.endswith(POOL_WAITERS))
                      or (kind == "delay" and key.endswith(":due"))):
                    pipe.zcard(key)
                elif kind == "rl" and ":!r:" in key:
                    pipe.get(key)
                else:
                    continue
                wanted.append((kind, key))
            for (kind, key), value in zip(wanted, pipe.execute(), strict=True):
                _take(state, kind, key, value, now_ms, now_us)
        return state

    return store.command("read live state", read, retry_safe=True)


def _take(state: LiveState, kind: str, key: str, value: Any, now_ms: float,
          now_us: float) -> None:
    if kind == "lock":
        owner, at = value
        if owner is None:
            return
        label = "running" if RUN_MARK in _text(owner) else "held"
        state.locks[label] = state.locks.get(label, 0) + 1
        if at:
            age = max(now_ms - float(_text(at)), 0.0) / 1000
            state.oldest_lock_age = max(state.oldest_lock_age or 0.0, age)
    elif kind == "sem":
        state.semaphore_holders += int(value)
    elif kind == "conc":
        pool = admin.name_of(key)
        if key.endswith(POOL_RUNNING):
            held = sum(int(_text(v)) for v in value)
            state.pool_running[pool] = state.pool_running.get(pool, 0) + held
        else:
            state.pool_waiting[pool] = state.pool_waiting.get(pool, 0) + int(value)
    elif kind == "delay":
        state.deferred += int(value)
    elif kind == "rl" and value:
        slot = _text(value).split(" ", 1)[0]
        if slot.isdigit():
            scope = admin.name_of(key)
            lag = max(int(slot) - now_us, 0.0) / 1e6
            state.reservation_lag[scope] = max(state.reservation_lag.get(scope, 0.0), lag)
