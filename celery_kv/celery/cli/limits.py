"""``celery kv limits``: the state of one rate limit, read without charging it."""

from __future__ import annotations

import json
from typing import Any

import click

from ...primitives.ratelimit import RateLimit
from ...store import KeyLike
from ._base import (
    Target,
    app_of,
    common,
    emit_json,
    feature_of,
    guarded,
    kv,
    seconds,
    table,
    target,
    task_of,
)


def _identity(raw: str | None, as_json_key: bool) -> KeyLike:
    if raw is None:
        return ""
    if not as_json_key:
        return raw
    try:
        value = json.loads(raw)
    except ValueError:
        raise click.BadParameter(f"{raw!r} is not JSON", param_hint="IDENTITY") from None
    return _to_keylike(value)


def _to_keylike(value: Any) -> KeyLike:
    if isinstance(value, list):
        return tuple(_part(v) for v in value)
    return _part(value)


def _part(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise click.BadParameter(
            f"{json.dumps(value)} is not a str or an int: an identity is a str, an int, "
            "or a flat list of them", param_hint="IDENTITY")
    return value


def _task_limits(found: Target, task: Any, identity: str | None) -> list[RateLimit]:
    """The RateLimit objects a task is charged, built as its workers build them."""
    feature = feature_of(task, "rate_limit", "global_rate_limit")
    per_key = feature.key is not None
    if per_key and identity is None:
        raise click.UsageError(
            f"task {task.name!r} limits per rate_limit_key={feature.key.value!r}: "
            "give the IDENTITY (the value that key takes)"
        )
    if not per_key and identity is not None:
        raise click.UsageError(f"task {task.name!r} has one global limit: give no IDENTITY")
    limits: list[RateLimit] = feature.limits(found.kv)
    return limits


@kv.command()
@common
@click.argument("task_or_identity", metavar="TASK")
@click.argument("identity", metavar="[IDENTITY]", required=False)
@click.option("--rate", default=None, help="A limit built in code: its rate, e.g. 100/m. "
              "Then the only argument is the IDENTITY.")
@click.option("--algorithm", default="gcra", show_default=True, help="With --rate.")
@click.option("--burst", type=int, default=None, help="With --rate (GCRA only).")
@click.option("--name", "limit_name", default=None, help="With --rate: the limit's name=.")
@click.option("--scope", default=None, help="With --rate: the limit's scope=.")
@click.option("--key-json", is_flag=True,
              help="Read IDENTITY as JSON (7 is the int 7, [\"a\", 1] a tuple); "
                   "by default it is a string, as a '{tenant_id}' template makes it.")
@click.pass_context
@guarded
def limits(ctx: click.Context, task_or_identity: str, identity: str | None, rate: str | None,
           algorithm: str, burst: int | None, limit_name: str | None, scope: str | None,
           key_json: bool, url: str | None, prefix: str | None, as_json: bool) -> None:
    """State of one rate limit, without charging it.

    TASK is a registered task with global_rate_limit; IDENTITY is the value its
    rate_limit_key gives (a tenant id, say), omitted when it has none. With
    --rate, describe a limit built in code by kv.rate_limit(rate, ...): the
    only argument is then the IDENTITY passed to hit().
    """
    if rate is not None and identity is not None:
        raise click.UsageError("with --rate, give only the IDENTITY")
    who = _identity(task_or_identity if rate is not None else identity, key_json)
    found = target(ctx, url, prefix)
    if rate is not None:
        try:
            chosen = [RateLimit(found.kv.store, rate, algorithm, burst, name=limit_name,
                                scope=scope)]
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(str(exc)) from None
    else:
        chosen = _task_limits(found, task_of(app_of(ctx), task_or_identity), identity)
    rows: list[dict[str, Any]] = []
    for limit in chosen:
        decision = limit.peek(who)
        redis_key = limit.redis_key(who)
        rows.append({
            "limit": limit.name, "rate": str(limit.rate), "algorithm": limit.algorithm,
            "identity": who if not isinstance(who, bytes) else repr(who), "key": redis_key,
            "exists": bool(found.kv.client.exists(redis_key)),
            "allowed_now": decision.allowed, "capacity": decision.limit,
            "remaining": decision.remaining, "retry_after": decision.retry_after,
            "reset_after": decision.reset_after,
        })
    if as_json:
        emit_json(rows)
        return
    click.echo(table(
        ["LIMIT", "IDENTITY", "ALLOWED NOW", "REMAINING", "RETRY AFTER", "FULL AFTER", "KEY"],
        [(r["limit"], repr(r["identity"]), "yes" if r["allowed_now"] else "no",
          f"{r['remaining']}/{r['capacity']}", seconds(r["retry_after"]),
          seconds(r["reset_after"]), r["key"] if r["exists"] else f"{r['key']} (absent)")
         for r in rows]))
