"""``celery kv limits``: the state of a rate limit (``show``, the default) and its overrides.

    celery -A proj kv limits [show] TASK [IDENTITY]      # state, without charging it
    celery -A proj kv limits set TASK IDENTITY RATE [--limit NAME] [--ttl SECONDS]
    celery -A proj kv limits unset TASK IDENTITY [--limit NAME]
    celery -A proj kv limits list [TASK]                 # live overrides

The old form ``limits TASK [IDENTITY]`` (and ``limits --rate ...``) is ``limits show``.
A task-wide limit's IDENTITY is the empty string ``''``.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ...primitives.ratelimit import RateLimit
from ...store import KeyLike
from .. import limits as overrides
from ._base import (
    OneLineGroup,
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


def _task_limits(found: Target, task: Any, identity: str | None,
                 who: KeyLike) -> list[tuple[RateLimit, KeyLike]]:
    """The RateLimit objects a task is charged, built as its workers build them, each
    with the identity it is charged for (a task-wide limit's is '')."""
    feature = feature_of(task, "rate_limit", "global_rate_limit")
    keyed = [spec.key for spec in feature.specs if spec.key is not None]
    if keyed and identity is None:
        name = "rate_limit_key" if keyed[0] is feature.key else keyed[0].option
        raise click.UsageError(
            f"task {task.name!r} limits per {name}={keyed[0].value!r}: "
            "give the IDENTITY (the value that key takes)"
        )
    if not keyed and identity is not None:
        raise click.UsageError(f"task {task.name!r} has one global limit: give no IDENTITY")
    return overrides.identity_pairs(feature, found.kv, who)


class _LimitsGroup(OneLineGroup):
    """``limits`` whose first argument is not a subcommand runs ``limits show``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@kv.group(cls=_LimitsGroup)
def limits() -> None:
    """Rate limits: state (show, the default), per-identity overrides (set, unset, list)."""


@limits.command("show")
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
def show(ctx: click.Context, task_or_identity: str, identity: str | None, rate: str | None,
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
            chosen = [(RateLimit(found.kv.store, rate, algorithm, burst, name=limit_name,
                                 scope=scope), who)]
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(str(exc)) from None
    else:
        chosen = _task_limits(found, task_of(app_of(ctx), task_or_identity), identity, who)
    rows = overrides.peeked(found.kv, chosen)
    if as_json:
        emit_json(rows)
        return
    click.echo(table(
        ["LIMIT", "IDENTITY", "ALLOWED NOW", "REMAINING", "RETRY AFTER", "FULL AFTER", "KEY"],
        [(r["limit"], repr(r["identity"]), "yes" if r["allowed_now"] else "no",
          f"{r['remaining']}/{r['capacity']}", seconds(r["retry_after"]),
          seconds(r["reset_after"]), r["key"] if r["exists"] else f"{r['key']} (absent)")
         for r in rows]))


def _override_target(ctx: click.Context, url: str | None, prefix: str | None,
                     task_name: str) -> tuple[Target, Any]:
    found = target(ctx, url, prefix)
    task = task_of(app_of(ctx), task_name)
    feature_of(task, "rate_limit", "global_rate_limit or rate_limits")
    return found, task


def _checked(fn: Any) -> Any:
    try:
        return fn()
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None


@limits.command("set")
@common
@click.argument("task_name", metavar="TASK")
@click.argument("identity", metavar="IDENTITY")
@click.argument("rate", metavar="RATE")
@click.option("--limit", "limit_name", default=None, help="Which of the task's limits "
              "(its name); default: the first.")
@click.option("--ttl", type=float, default=None, help="Seconds until the override lapses; "
              "default: it stays until unset.")
@click.option("--key-json", is_flag=True, help="Read IDENTITY as JSON (see show).")
@click.pass_context
@guarded
def set_(ctx: click.Context, task_name: str, identity: str, rate: str, limit_name: str | None,
         ttl: float | None, key_json: bool, url: str | None, prefix: str | None,
         as_json: bool) -> None:
    """Charge IDENTITY at RATE (e.g. 50/s) on TASK's limit, on every worker from its next
    admission, without a restart. A task-wide limit's IDENTITY is ''."""
    found, task = _override_target(ctx, url, prefix, task_name)
    who = _identity(identity, key_json)
    parsed = _checked(lambda: overrides.set_override(task, who, rate, limit=limit_name,
                                                     ttl=ttl, kv=found.kv))
    chosen = _checked(lambda: overrides.task_limit(task, limit_name, found.kv))
    row = {"task": task.name, "limit": chosen.name, "identity": who, "rate": str(parsed),
           "ttl": ttl, "key": chosen.redis_key(who)}
    if as_json:
        emit_json(row)
        return
    lasts = f" for {seconds(ttl)}" if ttl else " until unset"
    click.echo(f"{task.name} {chosen.name} {who!r}: {parsed}{lasts}")


@limits.command("unset")
@common
@click.argument("task_name", metavar="TASK")
@click.argument("identity", metavar="IDENTITY")
@click.option("--limit", "limit_name", default=None, help="Which of the task's limits.")
@click.option("--key-json", is_flag=True, help="Read IDENTITY as JSON (see show).")
@click.pass_context
@guarded
def unset(ctx: click.Context, task_name: str, identity: str, limit_name: str | None,
          key_json: bool, url: str | None, prefix: str | None, as_json: bool) -> None:
    """Go back to TASK's own rate for IDENTITY."""
    found, task = _override_target(ctx, url, prefix, task_name)
    who = _identity(identity, key_json)
    removed = _checked(lambda: overrides.unset_override(task, who, limit=limit_name,
                                                        kv=found.kv))
    if as_json:
        emit_json({"task": task.name, "identity": who, "removed": removed})
        return
    click.echo(f"{task.name} {who!r}: " + ("override removed" if removed else "no override"))


@limits.command("list")
@common
@click.argument("task_name", metavar="[TASK]", required=False)
@click.pass_context
@guarded
def list_(ctx: click.Context, task_name: str | None, url: str | None, prefix: str | None,
          as_json: bool) -> None:
    """Live overrides of TASK's limits (default: of every rate-limited task)."""
    found = target(ctx, url, prefix)
    app = app_of(ctx)
    if task_name is not None:
        tasks = [task_of(app, task_name)]
        feature_of(tasks[0], "rate_limit", "global_rate_limit or rate_limits")
    else:
        app.loader.import_default_modules()
        tasks = [t for _, t in sorted(app.tasks.items())
                 if getattr(t, "_kv_policy", None) is not None
                 and t._kv_policy.feature("rate_limit") is not None]
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for task in tasks:
        for item in overrides.list_overrides(task, found.kv):
            if item.key not in seen:  # a shared limit: listed under its first task
                seen.add(item.key)
                rows.append({"task": item.task, "limit": item.limit, "key": item.key,
                             "rate": str(item.rate), "ttl": item.ttl})
    if as_json:
        emit_json(rows)
        return
    click.echo(table(["TASK", "LIMIT", "RATE", "LAPSES IN", "KEY"],
                     [(r["task"], r["limit"], r["rate"],
                       seconds(r["ttl"]) if r["ttl"] is not None else "never", r["key"])
                      for r in rows]))
