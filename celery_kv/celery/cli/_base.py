"""The ``kv`` group, where a subcommand points, output helpers and one-line errors."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
import redis.exceptions as rexc
from redis.sentinel import SentinelConnectionPool

from ...errors import CoordinationMisconfigured, CoordinationUnavailable, KVError
from ...kv import KV
from ...store import is_cluster
from ...store.acl import acl_rules
from ...store.keys import validate_prefix
from ...store.retry import acl_denial, causes
from ...store.urls import mask_url, redact

F = TypeVar("F", bound=Callable[..., Any])

RETRY_DEADLINE = 1.0  # an operator waits a second, not the workers' five, for a dead Redis
_TARGET = "celery_kv.target"
_GROUP = "celery_kv.group"
_SECRETS = "celery_kv.secrets"


@dataclass
class Target:
    """The KV a subcommand works on, and how to name it in messages (password hidden)."""

    kv: KV
    where: str
    secrets: list[Any] = field(default_factory=list)  # URLs whose passwords messages hide


def describe_client(client: Any) -> str:
    """Where a client connects, as a URL-like string without credentials."""
    if is_cluster(client):
        nodes = ",".join(n.name for n in client.get_nodes())
        return f"redis+cluster://{nodes}"
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        return f"redis+sentinel://(service {pool.service_name})"
    kw: dict[str, Any] = getattr(pool, "connection_kwargs", {})
    db = kw.get("db", 0)
    if kw.get("path"):
        return f"unix://{kw['path']}?db={db}"
    connection_class = getattr(pool, "connection_class", None)
    scheme = "rediss" if "SSL" in getattr(connection_class, "__name__", "") else "redis"
    return f"{scheme}://{kw.get('host', '?')}:{kw.get('port', '?')}/{db}"


def app_of(ctx: click.Context) -> Any:
    """The app of ``celery -A proj``; Celery's default app when there is none (tests, --url)."""
    app = getattr(ctx.find_root().obj, "app", None)
    if app is None:
        from celery import current_app

        app = current_app._get_current_object()
    return app


def _app_urls(app: Any) -> list[Any]:
    conf = app.conf
    return [conf.get("kv_redis_url"), conf.get("broker_url"), conf.get("result_backend")]


def _app_kv(app: Any) -> KV:
    """The app's KV, exactly as its workers build it."""
    from ..install import install

    try:
        kv: KV = install(app)
    except (ValueError, TypeError, KVError) as exc:
        raise click.ClickException(
            f"cannot build the app's KV: {redact(str(exc), *_app_urls(app))}. Set "
            "kv_redis_url (or a redis:// broker_url) or pass --url"
        ) from None
    return kv


def _checked_prefix(prefix: str | None) -> str | None:
    if prefix is None:
        return None
    try:
        return validate_prefix(prefix)
    except ValueError as exc:
        raise click.ClickException(f"bad --prefix: {exc}") from None


def resolve(ctx: click.Context, url: str | None, prefix: str | None) -> Target:
    """Build the target from the app's settings, with --url/--prefix taking precedence."""
    prefix = _checked_prefix(prefix)
    ctx.meta[_SECRETS] = [url]
    try:
        if url is not None and prefix is not None:
            return Target(KV.from_url(url, prefix, retry_deadline=RETRY_DEADLINE),
                          mask_url(url), [url])
        app = app_of(ctx)
        ctx.meta[_SECRETS] = [url, *_app_urls(app)]
        base = _app_kv(app)
        chosen = base.prefix if prefix is None else prefix
        if url is not None:
            return Target(KV.from_url(url, chosen, retry_deadline=RETRY_DEADLINE),
                          mask_url(url), [url])
        kv = KV(client=base.client, prefix=chosen, retry_deadline=RETRY_DEADLINE)
        return Target(kv, describe_client(base.client), _app_urls(app))
    except ValueError as exc:
        raise click.ClickException(f"bad Redis URL: {exc}") from None


def target(ctx: click.Context, url: str | None, prefix: str | None) -> Target:
    """Resolve, check that Redis answers, and remember the target for error messages."""
    group = ctx.meta.get(_GROUP, {})
    found = resolve(ctx, url if url is not None else group.get("url"),
                    prefix if prefix is not None else group.get("prefix"))
    ctx.meta[_TARGET] = found
    ping(found)
    return found


def ping(found: Target) -> float:
    """Round-trip time of one PING in ms."""
    started = time.perf_counter()
    found.kv.client.ping()
    return (time.perf_counter() - started) * 1000


def task_of(app: Any, name: str) -> Any:
    """The registered task ``name`` of ``app``; else a clear error naming the known ones."""
    app.loader.import_default_modules()
    task = app.tasks.get(name)
    if task is None:
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        hint = f"; registered: {', '.join(known)}" if known else ""
        raise click.ClickException(f"no task named {name!r} in app {app.main!r}{hint}")
    return task


def feature_of(task: Any, feature: str, option: str) -> Any:
    """The task's configured ``feature``; else a clear error."""
    policy = getattr(task, "_kv_policy", None)
    found = policy.feature(feature) if policy is not None else None
    if found is None:
        raise click.ClickException(f"task {task.name!r} has no {option}")
    return found


# -- one-line errors -----------------------------------------------------------------------------


denied = acl_denial  # the ACL refusal behind an error, if that is what it is


def _message(exc: BaseException, where: str, prefix: str | None) -> str:
    """One clear sentence for a failure."""
    text = str(exc)
    chain = causes(exc)
    noperm = denied(exc)
    if any(isinstance(c, rexc.AuthenticationError | rexc.AuthenticationWrongNumberOfArgsError)
           for c in chain):
        return (f"Redis at {where} refused authentication ({text}); check the user and "
                "password in kv_redis_url / --url")
    if noperm is not None:
        rules = acl_rules(prefix) if prefix else "the rules `celery kv doctor` prints"
        if "scan" in str(noperm).lower():
            return (f"Redis at {where} denied SCAN to this user ({noperm}): listing keys "
                    "needs an operator user; run this command with --url of a user with "
                    f"{acl_rules(prefix, operator=True) if prefix else '+scan'}")
        return (f"Redis at {where} denied a command to this user ({noperm}); the ACL must "
                f"allow the prefix's keys and commands: {rules}")
    if isinstance(exc, CoordinationMisconfigured):
        return f"Redis at {where}: {exc.detail}"
    if isinstance(exc, CoordinationUnavailable | rexc.ConnectionError | rexc.TimeoutError):
        return f"cannot reach Redis at {where}: {text}"
    if isinstance(exc, KVError):
        return f"Redis at {where}: {text}"
    if isinstance(exc, rexc.RedisError):
        return f"Redis at {where} answered with an error: {text}"
    if isinstance(exc, ValueError | TypeError):
        return text
    return f"unexpected {type(exc).__name__}: {text}"


def one_line(text: str) -> str:
    return " ".join(text.split())


def guarded(fn: F) -> F:
    """Every failure of a subcommand as one line on stderr and exit status 1, password hidden.

    Click's own errors (usage, a bad parameter, an abort) pass through as they are.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            ctx = click.get_current_context()
            found: Target | None = ctx.meta.get(_TARGET)
            where = found.where if found else "the configured URL"
            prefix = found.kv.prefix if found else None
            secrets = [*(found.secrets if found else []), *ctx.meta.get(_SECRETS, [])]
            message = redact(one_line(_message(exc, where, prefix)), *secrets)
            raise click.ClickException(message) from None

    return wrapper  # type: ignore[return-value]


# -- output ------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def seconds(value: float | None) -> str:
    if value is None:
        return "no TTL"
    return f"{value:.3f}s"


def common(fn: F) -> F:
    """--url, --prefix and --json on every subcommand."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)
    fn = click.option("--prefix", default=None, help="Key prefix (default: the app's kv_prefix).")(
        fn
    )
    fn = click.option(
        "--url", default=None, help="Redis URL (default: the app's kv_redis_url or broker)."
    )(fn)
    return fn


# -- the group -----------------------------------------------------------------------------------


class _OneLine:
    """Usage errors as one 'Error: ...' line (exit status 2), without the usage block."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)  # type: ignore[misc,no-any-return]
        except click.UsageError as exc:
            exc.ctx = None
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except click.UsageError as exc:
            exc.ctx = None
            raise


class OneLineCommand(_OneLine, click.Command):
    pass


class OneLineGroup(_OneLine, click.Group):
    command_class = OneLineCommand


@click.group(name="kv", cls=OneLineGroup)
@click.option("--url", default=None, help="Redis URL for every subcommand.")
@click.option("--prefix", default=None, help="Key prefix for every subcommand.")
@click.pass_context
def kv(ctx: click.Context, url: str | None, prefix: str | None) -> None:
    """Inspect and operate celery-kv's coordination keys (locks, limits, idempotency)."""
    ctx.meta[_GROUP] = {"url": url, "prefix": _checked_prefix(prefix)}
