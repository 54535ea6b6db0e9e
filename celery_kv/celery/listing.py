"""Held locks, semaphores and debounce bursts under a prefix, as rows for operators.

``celery kv locks`` and the dashboard both read them here. Keys are found with SCAN
(never KEYS); each lock is then read by its own script (``lock_info``: owner, fence and
TTL at one server time). A page reads only its own locks, so 10,000 held locks cost one
SCAN of their names and one script per row shown. A lock released between the SCAN and
its read is left out, so a page may hold fewer rows than asked for.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import redis.exceptions as rexc

from ..store import Store
from ..store.admin import name_of, primaries, scan
from ..store.bursts import display_name, list_bursts
from .keys import RUN_MARK, task_id_of


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_lock(store: Store, key: str) -> dict[str, Any] | None:
    """One lock record by its Redis key, as a row; None when nobody holds it.

    A record that does not parse is a row too, its ``state`` saying what is wrong.
    """
    try:
        reply = store.run("lock_info", [key])
    except rexc.ResponseError as exc:  # WRONGTYPE: not a lock hash
        return _row(key, None, None, None, f"malformed: {exc}")
    if not reply:
        return None
    owner, raw_fence, pttl = _text(reply[0]), _text(reply[1]), int(reply[2])
    ttl = pttl / 1000.0 if pttl >= 0 else None
    if raw_fence and not raw_fence.lstrip("-").isdigit():
        return _row(key, owner, ttl, None, f"malformed: fence {raw_fence[:40]!r} is not a number")
    return _row(key, owner, ttl, int(raw_fence) if raw_fence else None, _state(owner))


def _row(key: str, owner: str | None, ttl: float | None, fence: int | None,
         state: str) -> dict[str, Any]:
    return {"kind": "lock", "key": key, "name": name_of(key), "owner": owner,
            "task_id": task_id_of(owner), "state": state, "ttl": ttl, "fence": fence}


def _state(owner: str) -> str:
    """A singleton's owner token says whether its task is queued or running."""
    return "running" if RUN_MARK in owner else "queued/held"


def lock_keys(store: Store) -> list[str]:
    """The Redis keys of every lock under the prefix (SCAN), sorted; fence counters
    (``...}:fence``) left out."""
    pattern = store.keys.pattern("lock")
    found = store.command(
        "lock_scan", lambda c: [_text(k) for k in c.scan_iter(match=pattern, count=1000)],
        retry_safe=True,
    )
    return sorted(key for key in found if key.endswith("}"))


def held_locks(store: Store) -> list[dict[str, Any]]:
    """Every held lock under the prefix, each read on its own."""
    rows = (read_lock(store, key) for key in lock_keys(store))
    return [row for row in rows if row is not None]


def locks_page(store: Store, offset: int = 0, limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
    """(locks found by SCAN, the held ones among ``limit`` of them from ``offset``)."""
    if offset < 0 or limit < 1:
        raise ValueError(f"offset={offset!r} must be >= 0 and limit={limit!r} >= 1")
    keys = lock_keys(store)
    rows = (read_lock(store, key) for key in keys[offset:offset + limit])
    return len(keys), [row for row in rows if row is not None]


def is_lock_key(store: Store, key: str) -> bool:
    """Whether ``key`` names a lock of this prefix (as ``locks`` lists it)."""
    return key.startswith(f"{store.prefix}:lock:{{") and key.endswith("}")


def break_lock_key(store: Store, key: str) -> bool:
    """Remove the lock at Redis key ``key``, whoever holds it; its fence counter stays."""
    return bool(store.command("lock_break", lambda c: c.delete(key), retry_safe=True))


def burst_rows(store: Store) -> list[dict[str, Any]]:
    """Every pending and running debounce burst as lock-like rows: 'ttl' is when a pending
    burst is due (negative: overdue) and what a running one's lease has left."""
    rows: list[dict[str, Any]] = []
    for burst in list_bursts(store):
        base = {"kind": "burst", "key": burst.redis_key, "name": display_name(burst)}
        if burst.problem is not None:
            rows.append({**base, "owner": None, "task_id": None, "state": burst.problem,
                         "ttl": None, "fence": None, "triggers": None})
        if burst.pending is not None:
            p = burst.pending
            rows.append({**base, "owner": p.task_id, "task_id": p.task_id, "state": "pending",
                         "ttl": p.due_in, "fence": None, "triggers": p.triggers})
        if burst.running is not None:
            r = burst.running
            rows.append({**base, "owner": r.task_id, "task_id": r.task_id, "state": r.status,
                         "ttl": r.lease_left, "fence": r.fence, "triggers": r.triggers})
    return rows


def semaphores(store: Store) -> list[dict[str, Any]]:
    """Every semaphore under the prefix with its live holders (owner, lease left), read at
    one server time per node; a key of another type is a row saying so."""
    rows: list[dict[str, Any]] = []
    for _name, node in primaries(store.client):
        for batch in scan(node, store.keys.pattern("sem")):
            rows += store.command("semaphore_read", partial(_sems, node, batch),
                                  retry_safe=True)
    return sorted(rows, key=lambda r: r["key"])


def _sems(node: Any, keys: list[str], _client: Any) -> list[dict[str, Any]]:
    pipe = node.pipeline(transaction=False)
    pipe.time()
    for key in keys:
        pipe.zrange(key, 0, -1, withscores=True)
    seconds, micros, *found = _flatten_time(pipe.execute(raise_on_error=False))
    now_ms = seconds * 1000 + micros // 1000
    rows = []
    for key, members in zip(keys, found, strict=True):
        row: dict[str, Any] = {"kind": "semaphore", "key": key, "name": name_of(key)}
        if isinstance(members, Exception):
            rows.append({**row, "holders": [], "state": f"malformed: {members}"})
            continue
        holders = [{"owner": _text(m), "task_id": task_id_of(_text(m)),
                    "ttl": (float(score) - now_ms) / 1000.0}
                   for m, score in members if float(score) > now_ms]
        if holders:
            rows.append({**row, "holders": holders, "state": f"{len(holders)} held"})
    return rows


def _flatten_time(replies: list[Any]) -> list[Any]:
    seconds, micros = replies[0]
    return [int(seconds), int(micros), *replies[1:]]


__all__ = ["break_lock_key", "burst_rows", "held_locks", "is_lock_key", "lock_keys",
           "locks_page", "read_lock", "semaphores"]
