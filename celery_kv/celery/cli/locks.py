"""``celery kv locks`` and ``celery kv unlock KEY``.

A lock record that something else wrote (a fence that is not a number, a key of another
type) is listed as malformed rather than ending the listing, and can still be unlocked.
``locks`` lists the debounce bursts too (kind ``burst``: a pending burst, due in TTL, and
a running one, its lease left), so one command shows what holds each key;
``celery kv debounce TASK`` shows them in full.
"""

from __future__ import annotations

from typing import Any

import click
import redis.exceptions as rexc

from ...primitives import lock as locks_mod
from ...store import KeyLike, Store
from ...store.admin import name_of
from ...store.bursts import display_name, list_bursts
from ..keys import RUN_MARK, task_id_of
from ._base import Target, common, emit_json, guarded, kv, seconds, table, target
from .debounce import in_seconds


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


def held_locks(store: Store) -> list[dict[str, Any]]:
    """Every held lock under the prefix (SCAN), each read on its own."""
    pattern = store.keys.pattern("lock")
    found = store.command(
        "lock_scan", lambda c: [_text(k) for k in c.scan_iter(match=pattern, count=1000)],
        retry_safe=True,
    )
    rows = (read_lock(store, key) for key in sorted(found) if key.endswith("}"))
    return [row for row in rows if row is not None]


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


def _ttl_cell(row: dict[str, Any]) -> str:
    if row["kind"] != "burst":
        return seconds(row["ttl"])
    if row["ttl"] is None:
        return "-"
    if row["state"] == "pending" and row["ttl"] >= 0:
        return f"due in {seconds(row['ttl'])}"
    return in_seconds(row["ttl"])


def _state_cell(row: dict[str, Any]) -> str:
    if row["kind"] == "burst" and row["triggers"] is not None:
        return f"{row['state']} ({row['triggers']} trigger{'s' if row['triggers'] != 1 else ''})"
    return str(row["state"])


@kv.command()
@common
@click.pass_context
@guarded
def locks(ctx: click.Context, url: str | None, prefix: str | None, as_json: bool) -> None:
    """Held locks (singleton tasks included) and debounce bursts: owner task id, TTL
    left (a pending burst: when it is due) and fence."""
    found = target(ctx, url, prefix)
    rows = held_locks(found.kv.store) + burst_rows(found.kv.store)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no locks held and no bursts pending under '{found.kv.prefix}:'")
        return
    click.echo(table(["KIND", "KEY", "NAME", "OWNER TASK ID", "STATE", "TTL", "FENCE"],
                     [(r["kind"], r["key"], r["name"], r["task_id"], _state_cell(r),
                       _ttl_cell(r), r["fence"]) for r in rows]))


def _lock_key(found: Target, key: str) -> tuple[str, KeyLike | None]:
    """A Redis key as ``locks`` prints it, or a lock name as passed to ``kv.lock(name)``."""
    ours = f"{found.kv.prefix}:lock:{{"
    if key.startswith(ours) and key.endswith("}"):
        return key, None
    return found.kv.store.keys.key("lock", key), key


@kv.command()
@common
@click.argument("key")
@click.pass_context
@guarded
def unlock(ctx: click.Context, key: str, url: str | None, prefix: str | None,
           as_json: bool) -> None:
    """Break the lock KEY (a KEY from `celery kv locks`, or the lock's name), whoever holds it.

    The fence counter stays, so the next holder still gets a higher fence and the
    resource can refuse the old holder's late writes.
    """
    found = target(ctx, url, prefix)
    store = found.kv.store
    redis_key, name = _lock_key(found, key)
    before = read_lock(store, redis_key)
    removed = (locks_mod.break_lock(store, name) if name is not None
               else bool(store.command("lock_break", lambda c: c.delete(redis_key),
                                       retry_safe=True)))
    if not removed:
        raise click.ClickException(
            f"no lock {key!r} is held under '{found.kv.prefix}:' (see `celery kv locks`)"
        )
    owner = before["owner"] if before else None
    fence = before["fence"] if before else None
    if as_json:
        emit_json({"key": redis_key, "released": True, "owner": owner, "fence": fence})
    else:
        click.echo(f"released {redis_key} (held by {owner!s}, fence {fence!s})")
