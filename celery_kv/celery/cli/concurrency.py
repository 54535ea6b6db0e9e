"""``celery kv concurrency``: a concurrency pool's keys (running, waiting, weight) and weights.

    celery -A proj kv concurrency show TASK            # per key: running, waiting, weight
    celery -A proj kv concurrency weight TASK KEY W    # KEY gets W shares (default 1)
    celery -A proj kv concurrency weight TASK KEY --clear

KEY is the key as ``concurrency_key`` renders it (``''`` for a task-wide limit).
"""

from __future__ import annotations

from typing import Any

import click

from ...primitives.fair_pool import FairPool
from ._base import (
    OneLineGroup,
    app_of,
    common,
    emit_json,
    feature_of,
    guarded,
    kv,
    table,
    target,
    task_of,
)


@kv.group(cls=OneLineGroup)
def concurrency() -> None:
    """A concurrency-limited task's slots, waiters and weights."""


def _pool(ctx: click.Context, task_name: str, url: str | None, prefix: str | None
          ) -> tuple[FairPool, Any]:
    found = target(ctx, url, prefix)
    task = task_of(app_of(ctx), task_name)
    feature = feature_of(task, "concurrency", "concurrency_limit")
    return FairPool(found.kv.store, task.name), feature


@concurrency.command()
@common
@click.argument("task_name", metavar="TASK")
@click.pass_context
@guarded
def show(ctx: click.Context, task_name: str, url: str | None, prefix: str | None,
         as_json: bool) -> None:
    """Per key: runs holding a slot (grants included), runs waiting, and its weight."""
    pool, feature = _pool(ctx, task_name, url, prefix)
    state, weights = pool.state(), pool.weights()
    keys = sorted(set(state) | set(weights))
    rows = [{"key": k, **state.get(k, {"running": 0, "waiting": 0}),
             "weight": weights.get(k, 1.0)} for k in keys]
    if as_json:
        emit_json({"task": task_name, "limit": feature.limit, "total": feature.total or None,
                   "keys": rows})
        return
    total = f", {feature.total} in total" if feature.total else ""
    click.echo(f"{task_name}: {feature.limit} per key{total}")
    click.echo(table(["key", "running", "waiting", "weight"],
                     [(repr(r["key"]), r["running"], r["waiting"], f"{r['weight']:g}")
                      for r in rows]) if rows else "no key is running or waiting")


@concurrency.command()
@common
@click.argument("task_name", metavar="TASK")
@click.argument("key", metavar="KEY")
@click.argument("weight", metavar="W", required=False, type=float)
@click.option("--clear", is_flag=True, help="Back to the default weight 1.")
@click.pass_context
@guarded
def weight(ctx: click.Context, task_name: str, key: str, weight: float | None, clear: bool,
           url: str | None, prefix: str | None, as_json: bool) -> None:
    """Give KEY W shares of the task's slots while keys wait (default 1)."""
    if (weight is None) == (not clear):
        raise click.UsageError("give a weight W, or --clear")
    pool, _ = _pool(ctx, task_name, url, prefix)
    if clear:
        pool.clear_weight(key)
        value = 1.0
    else:
        try:
            value = pool.set_weight(key, weight)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="W") from None
    if as_json:
        emit_json({"task": task_name, "key": key, "weight": value})
    else:
        click.echo(f"{task_name}: key {key!r} has weight {value:g}")
