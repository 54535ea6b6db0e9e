"""``celery kv locks`` and ``celery kv unlock KEY``.

A lock record that something else wrote (a fence that is not a number, a key of another
type) is listed as malformed rather than ending the listing, and can still be unlocked.
``locks`` lists the debounce bursts too (kind ``burst``: a pending burst, due in TTL, and
a running one, its lease left), so one command shows what holds each key;
``celery kv debounce TASK`` shows them in full. The rows come from
``celery_kv.celery.listing`` (the dashboard reads the same).
"""

from __future__ import annotations

from typing import Any

import click

from ...primitives import lock as locks_mod
from ...store import KeyLike
from ..listing import break_lock_key, burst_rows, held_locks, is_lock_key, read_lock
from ._base import Target, common, emit_json, guarded, kv, seconds, table, target
from .debounce import in_seconds


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
    if is_lock_key(found.kv.store, key):
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
               else break_lock_key(store, redis_key))
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
