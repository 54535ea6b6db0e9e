"""The ``celery kv`` command: look at and operate an app's coordination keys.

    celery -A proj kv doctor                       # is this Redis fit to coordinate?
    celery -A proj kv locks                        # held locks: owner task id, TTL, fence
    celery -A proj kv unlock KEY                   # break one lock (its fence counter stays)
    celery -A proj kv limits TASK [IDENTITY]       # a task's global rate limit, for one identity
    celery -A proj kv limits --rate 100/m IDENTITY # a limit built with kv.rate_limit(...)
    celery -A proj kv idempotency TASK KEY         # one record of an idempotent task
    celery -A proj kv idempotency --namespace payments KEY
    celery -A proj kv purge [--yes]                # SCAN + UNLINK every key under the prefix

Redis and prefix come from the app, as the workers see them (``install(app)``:
``kv_redis_url``, else the broker URL; ``kv_prefix``); ``--url`` and
``--prefix`` override them. Output is a table, or JSON with ``--json``.
Expected failures (a bad URL, refused auth, an unknown key) exit with status 1
and one line, never a traceback.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

import click
import redis.exceptions as rexc
from redis.sentinel import SentinelConnectionPool

from ..errors import KVError
from ..kv import KV
from ..primitives import lock as locks_mod
from ..primitives.ratelimit import RateLimit
from ..store import KeyLike, is_cluster
from ..store.keys import KeySpace
from .keys import RUN_MARK, short_key, task_id_of

F = TypeVar("F", bound=Callable[..., Any])

_RETRY_DEADLINE = 1.0  # an operator waits a second, not the workers' five, for a dead Redis
_BATCH = 500
_MIN_VERSION = (6, 2)  # GETEX, EXPIRE options and the scripts need Redis 6.2
_SAFE_POLICIES = ("noeviction",)


# -- where the command points --------------------------------------------------------------------


@dataclass
class Target:
    """The KV a subcommand works on, and how to name it in messages (password hidden)."""

    kv: KV
    where: str


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and reports."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, sep, _password = userinfo.partition(":")
    shown = f"{user}:***" if sep else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{hosts}"))


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


def _app_kv(app: Any) -> KV:
    """The app's KV, exactly as its workers build it."""
    from .install import install

    try:
        kv: KV = install(app)
    except (ValueError, TypeError, KVError) as exc:
        raise click.ClickException(
            f"cannot build the app's KV: {exc}. Set kv_redis_url (or a redis:// broker_url) "
            "or pass --url"
        ) from None
    return kv


def resolve(ctx: click.Context, url: str | None, prefix: str | None) -> Target:
    """Build the target from the app's settings, with --url/--prefix taking precedence."""
    try:
        if prefix is not None:
            KeySpace(prefix)
        if url is not None and prefix is not None:
            kv = KV.from_url(url, prefix, retry_deadline=_RETRY_DEADLINE)
            return Target(kv, mask_url(url))
        base = _app_kv(app_of(ctx))
        chosen = prefix or base.prefix
        if url is not None:
            kv = KV.from_url(url, chosen, retry_deadline=_RETRY_DEADLINE)
            return Target(kv, mask_url(url))
        kv = KV(client=base.client, prefix=chosen, retry_deadline=_RETRY_DEADLINE)
        return Target(kv, describe_client(base.client))
    except ValueError as exc:
        raise click.ClickException(f"bad Redis URL or prefix: {exc}") from None


def app_of(ctx: click.Context) -> Any:
    """The app of ``celery -A proj``; Celery's default app when there is none (tests, --url)."""
    app = getattr(ctx.find_root().obj, "app", None)
    if app is None:
        from celery import current_app

        app = current_app._get_current_object()
    return app


def _friendly(exc: BaseException, where: str) -> click.ClickException:
    """One clear line for the failures an operator can expect."""
    text = str(exc)
    if isinstance(exc, rexc.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return click.ClickException(
            f"Redis at {where} refused authentication ({text}); check the user and password "
            "in kv_redis_url / --url"
        )
    if isinstance(exc, rexc.NoPermissionError) or "NOPERM" in text:
        return click.ClickException(
            f"Redis at {where} denied a command to this user ({text}); the ACL must allow "
            "the prefix's keys (~prefix:*) and EVALSHA, SCAN, UNLINK, INFO"
        )
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError)):
        return click.ClickException(f"cannot reach Redis at {where}: {text}")
    if isinstance(exc, KVError):
        return click.ClickException(f"Redis at {where}: {text}")
    return click.ClickException(f"Redis at {where} answered with an error: {text}")


def _ping(target: Target) -> float:
    """Round-trip time of one PING in ms; a clear ClickException when it fails."""
    started = time.perf_counter()
    try:
        target.kv.client.ping()
    except rexc.RedisError as exc:
        raise _friendly(exc, target.where) from None
    return (time.perf_counter() - started) * 1000


def _guarded(fn: F) -> F:
    """Turn expected Redis failures into one-line errors instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        target: Target | None = None
        try:
            return fn(*args, **kwargs)
        except (rexc.RedisError, KVError) as exc:
            ctx = click.get_current_context()
            target = ctx.meta.get("celery_kv.target")
            raise _friendly(exc, target.where if target else "the configured URL") from None

    return wrapper  # type: ignore[return-value]


def _target(ctx: click.Context, url: str | None, prefix: str | None) -> Target:
    """Resolve, check that Redis answers, and remember the target for error messages."""
    group = ctx.meta.get("celery_kv.group", {})
    target = resolve(ctx, url or group.get("url"), prefix or group.get("prefix"))
    ctx.meta["celery_kv.target"] = target
    _ping(target)
    return target


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


def _seconds(value: float | None) -> str:
    if value is None:
        return "no TTL"
    return f"{value:.3f}s"


def _common(fn: F) -> F:
    """--url, --prefix and --json on every subcommand."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)
    fn = click.option("--prefix", default=None, help="Key prefix (default: the app's kv_prefix).")(
        fn
    )
    fn = click.option(
        "--url", default=None, help="Redis URL (default: the app's kv_redis_url or broker)."
    )(fn)
    return fn


# -- identities shown back to the user ----------------------------------------------------------


def _decode_part(part: str) -> KeyLike:
    if part == "!":
        return ""
    if part.startswith("="):
        return int(part[1:])
    if part.startswith("~"):
        return unquote_to_bytes(part[1:])
    return unquote_to_bytes(part).decode("utf-8", "surrogatepass")


def decode_identity(encoded: str) -> str:
    """The user's key as ``store.keys.identity`` encoded it, for display ('#...' is hashed)."""
    try:
        if encoded == "!":
            return "''"
        if encoded.startswith("#"):
            return f"<hashed {encoded[1:13]}...>"
        if encoded == "(":
            return "()"
        if encoded.startswith("("):
            return repr(tuple(_decode_part(p) for p in encoded[1:].split(":")))
        return repr(_decode_part(encoded))
    except (ValueError, UnicodeDecodeError):
        return encoded


def lock_name_of(key: str) -> str:
    """The lock name inside ``prefix:lock:{identity}``."""
    start, end = key.find("{"), key.rfind("}")
    return decode_identity(key[start + 1 : end]) if 0 <= start < end else key


# -- the group -----------------------------------------------------------------------------------


@click.group(name="kv")
@click.option("--url", default=None, help="Redis URL for every subcommand.")
@click.option("--prefix", default=None, help="Key prefix for every subcommand.")
@click.pass_context
def kv(ctx: click.Context, url: str | None, prefix: str | None) -> None:
    """Inspect and operate celery-kv's coordination keys (locks, limits, idempotency)."""
    ctx.meta["celery_kv.group"] = {"url": url, "prefix": prefix}


# -- doctor --------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    status: str  # ok, info, WARNING, ERROR
    detail: str


@dataclass
class Report:
    where: str
    prefix: str
    checks: list[Check] = field(default_factory=list)
    server: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))


def _nodes(client: Any) -> list[tuple[str, Any]]:
    """(name, client) for every primary: one for a plain server, each primary of a cluster."""
    if is_cluster(client):
        return [(n.name, client.get_redis_connection(n)) for n in client.get_primaries()]
    return [("server", client)]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _version(info: dict[str, Any]) -> tuple[str, tuple[int, ...]]:
    name = str(info.get("server_name") or "redis")
    raw = str(info.get(f"{name}_version") or info.get("redis_version") or "0")
    numbers = tuple(int(p) for p in raw.split(".") if p.isdigit())
    return f"{name} {raw}", numbers


def _mode(client: Any, info: dict[str, Any], nodes: int) -> str:
    if is_cluster(client):
        return f"cluster ({nodes} primaries)"
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        try:
            host, port = pool.get_master_address()
            return f"sentinel (service {pool.service_name!r}, master {host}:{port})"
        except rexc.RedisError:
            return f"sentinel (service {pool.service_name!r})"
    return str(info.get("redis_mode", "standalone"))


def _persistence(node: Any, info: dict[str, Any]) -> tuple[str, str]:
    """(status, detail) of RDB and AOF on one node."""
    parts = []
    if int(info.get("aof_enabled", 0)):
        try:
            fsync = _text(node.config_get("appendfsync").get("appendfsync", "?"))
        except rexc.RedisError:
            fsync = "?"
        parts.append(f"AOF (appendfsync {fsync})")
    try:
        save = _text(node.config_get("save").get("save", ""))
        if save.strip():
            parts.append(f"RDB (save {save})")
    except rexc.RedisError:
        parts.append("RDB (save rules unknown: CONFIG not allowed)")
    if parts:
        return "ok", ", ".join(parts)
    return "WARNING", (
        "none: a restart forgets every lock, claim and idempotency record, so duplicates "
        "can run again after it"
    )


def _eviction(info: dict[str, Any]) -> tuple[str, str]:
    policy = str(info.get("maxmemory_policy", "unknown"))
    limit = int(info.get("maxmemory", 0) or 0)
    size = f"maxmemory {info.get('maxmemory_human', limit)}" if limit else "no maxmemory set"
    if policy in _SAFE_POLICIES:
        return "ok", f"{policy} ({size})"
    if policy == "unknown":
        return "WARNING", "unknown (INFO memory gave no maxmemory_policy)"
    return "WARNING", (
        f"{policy} ({size}): every celery-kv key has a TTL, so volatile-* as well as "
        "allkeys-* policies may evict locks and idempotency records under memory pressure; "
        "use noeviction"
    )


def _scan_prefix(node: Any, pattern: str) -> Iterator[list[str]]:
    batch: list[str] = []
    for raw in node.scan_iter(match=pattern, count=1000):
        batch.append(_text(raw))
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _count_keys(nodes: list[tuple[str, Any]], keyspace: KeySpace) -> dict[str, Any]:
    """Keys under the prefix by kind, and how many have no TTL (a leak: every key should)."""
    by_kind: dict[str, int] = {}
    no_ttl: list[str] = []
    for _name, node in nodes:
        for batch in _scan_prefix(node, keyspace.pattern()):
            pipe = node.pipeline(transaction=False)
            for key in batch:
                pipe.pttl(key)
            for key, ttl in zip(batch, pipe.execute(), strict=True):
                kind = key[len(keyspace.prefix) + 1 :].split(":", 1)[0]
                by_kind[kind] = by_kind.get(kind, 0) + 1
                if ttl == -1:
                    no_ttl.append(key)
    return {"total": sum(by_kind.values()), "by_kind": by_kind,
            "without_ttl": len(no_ttl), "without_ttl_sample": no_ttl[:5]}


def diagnose(target: Target, rtt_ms: float) -> Report:
    """Every doctor check against one target."""
    kv_ = target.kv
    client = kv_.client
    report = Report(target.where, kv_.prefix)
    report.add("reachable", "ok", f"PING answered in {rtt_ms:.1f} ms")
    nodes = _nodes(client)
    infos = [(name, node.info()) for name, node in nodes]
    first = infos[0][1]
    label, numbers = _version(first)
    ok_version = numbers >= _MIN_VERSION
    report.add("server", "ok" if ok_version else "ERROR",
               label if ok_version else f"{label}: celery-kv needs Redis 6.2+ or Valkey 7.2+")
    report.server = {"version": label, "mode": _mode(client, first, len(nodes)),
                     "role": str(first.get("role", "?"))}
    report.add("mode", "ok", report.server["mode"])
    role = report.server["role"]
    if role not in ("master", "?"):
        report.add("role", "ERROR", f"{role}: writes will fail; point kv_redis_url at a primary")
    for name, info in infos:
        suffix = f" [{name}]" if len(infos) > 1 else ""
        status, detail = _eviction(info)
        report.add("maxmemory-policy" + suffix, status, detail)
        status, detail = _persistence(dict(nodes)[name], info)
        report.add("persistence" + suffix, status, detail)
    try:
        kv_.store.run("noop", [])
        report.add("lua scripts", "ok", "EVALSHA works")
    except (rexc.RedisError, KVError) as exc:
        report.add("lua scripts", "ERROR", f"EVALSHA failed: {exc}")
    report.keys = _count_keys(nodes, kv_.store.keys)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.keys["by_kind"].items()))
    report.add("keys", "ok", f"{report.keys['total']} under '{kv_.prefix}:*' (by SCAN)"
               + (f": {kinds}" if kinds else ""))
    if report.keys["without_ttl"]:
        report.add("keys without TTL", "WARNING",
                   f"{report.keys['without_ttl']} (e.g. {report.keys['without_ttl_sample'][0]}); "
                   "every celery-kv key has a TTL, so these were written by something else")
    return report


@kv.command()
@_common
@click.option("--strict", is_flag=True, help="Exit with status 2 when there is a warning.")
@click.pass_context
@_guarded
def doctor(ctx: click.Context, url: str | None, prefix: str | None, as_json: bool,
           strict: bool) -> None:
    """Check that Redis can coordinate: reachability, version, mode, eviction, persistence."""
    target = _target(ctx, url, prefix)
    report = diagnose(target, _ping(target))
    if as_json:
        emit_json({"url": report.where, "prefix": report.prefix, "server": report.server,
                   "keys": report.keys, "checks": [asdict(c) for c in report.checks]})
    else:
        click.echo(f"celery kv doctor: {report.where} (prefix '{report.prefix}')\n")
        click.echo(table(["CHECK", "STATUS", "DETAIL"],
                         [(c.name, c.status, c.detail) for c in report.checks]))
    statuses = {c.status for c in report.checks}
    if "ERROR" in statuses:
        ctx.exit(1)
    if strict and "WARNING" in statuses:
        ctx.exit(2)


# -- locks and unlock ------------------------------------------------------------------------------


@kv.command()
@_common
@click.pass_context
@_guarded
def locks(ctx: click.Context, url: str | None, prefix: str | None, as_json: bool) -> None:
    """Held locks (singleton tasks included): owner task id, TTL left and fence."""
    target = _target(ctx, url, prefix)
    held = list(locks_mod.iter_locks(target.kv.store))
    rows: list[dict[str, Any]] = [{"key": i.key, "name": lock_name_of(i.key), "owner": i.owner,
             "task_id": task_id_of(i.owner), "state": _lock_state(i.owner),
             "ttl": i.ttl, "fence": i.fence} for i in held]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no locks held under '{target.kv.prefix}:'")
        return
    click.echo(table(["KEY", "NAME", "OWNER TASK ID", "STATE", "TTL", "FENCE"],
                     [(r["key"], r["name"], r["task_id"], r["state"], _seconds(r["ttl"]),
                       r["fence"]) for r in rows]))


def _lock_state(owner: str) -> str:
    """A singleton's owner token says whether its task is queued or running."""
    return "running" if RUN_MARK in owner else "queued/held"


def _lock_key(target: Target, key: str) -> tuple[str, KeyLike | None]:
    """A Redis key as ``locks`` prints it, or a lock name as passed to ``kv.lock(name)``."""
    ours = f"{target.kv.prefix}:lock:{{"
    if key.startswith(ours) and key.endswith("}"):
        return key, None
    return target.kv.store.keys.key("lock", key), key


@kv.command()
@_common
@click.argument("key")
@click.pass_context
@_guarded
def unlock(ctx: click.Context, key: str, url: str | None, prefix: str | None,
           as_json: bool) -> None:
    """Break the lock KEY (a KEY from `celery kv locks`, or the lock's name), whoever holds it.

    The fence counter stays, so the next holder still gets a higher fence and the
    resource can refuse the old holder's late writes.
    """
    target = _target(ctx, url, prefix)
    store = target.kv.store
    redis_key, name = _lock_key(target, key)
    before = locks_mod.describe(store, name) if name is not None else _held(target, redis_key)
    removed = (locks_mod.break_lock(store, name) if name is not None
               else bool(store.command("lock_break", lambda c: c.delete(redis_key),
                                       retry_safe=True)))
    if not removed:
        raise click.ClickException(
            f"no lock {key!r} is held under '{target.kv.prefix}:' (see `celery kv locks`)"
        )
    owner = before.owner if before else None
    fence = before.fence if before else None
    if as_json:
        emit_json({"key": redis_key, "released": True, "owner": owner, "fence": fence})
    else:
        click.echo(f"released {redis_key} (held by {owner!s}, fence {fence!s})")


def _held(target: Target, redis_key: str) -> locks_mod.LockInfo | None:
    for info in locks_mod.iter_locks(target.kv.store):
        if info.key == redis_key:
            return info
    return None


# -- limits --------------------------------------------------------------------------------------


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
        return tuple(_to_keylike(v) for v in value)  # type: ignore[misc]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise click.BadParameter(f"{value!r} is not a str, int or list of them",
                                 param_hint="IDENTITY")
    return value


def _task(app: Any, name: str) -> Any:
    app.loader.import_default_modules()
    task = app.tasks.get(name)
    if task is None:
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        hint = f"; registered: {', '.join(known)}" if known else ""
        raise click.ClickException(f"no task named {name!r} in app {app.main!r}{hint}")
    return task


def _feature(task: Any, feature: str, option: str) -> Any:
    """The task's configured ``feature``; else a clear error."""
    policy = getattr(task, "_kv_policy", None)
    found = policy.feature(feature) if policy is not None else None
    if found is None:
        raise click.ClickException(f"task {task.name!r} has no {option}")
    return found


def _task_limits(target: Target, task: Any, identity: str | None) -> list[RateLimit]:
    """The RateLimit objects a task is charged, built as its workers build them."""
    feature = _feature(task, "rate_limit", "global_rate_limit")
    per_key = feature.key is not None
    if per_key and identity is None:
        raise click.UsageError(
            f"task {task.name!r} limits per rate_limit_key={feature.key.value!r}: "
            "give the IDENTITY (the value that key takes)"
        )
    if not per_key and identity is not None:
        raise click.UsageError(f"task {task.name!r} has one global limit: give no IDENTITY")
    limits: list[RateLimit] = feature.limits(target.kv)
    return limits


@kv.command()
@_common
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
@_guarded
def limits(ctx: click.Context, task_or_identity: str, identity: str | None, rate: str | None,
           algorithm: str, burst: int | None, limit_name: str | None, scope: str | None,
           key_json: bool, url: str | None, prefix: str | None, as_json: bool) -> None:
    """State of one rate limit, without charging it.

    TASK is a registered task with global_rate_limit; IDENTITY is the value its
    rate_limit_key gives (a tenant id, say), omitted when it has none. With
    --rate, describe a limit built in code by kv.rate_limit(rate, ...): the
    only argument is then the IDENTITY passed to hit().
    """
    target = _target(ctx, url, prefix)
    if rate is not None:
        if identity is not None:
            raise click.UsageError("with --rate, give only the IDENTITY")
        try:
            chosen = [RateLimit(target.kv.store, rate, algorithm, burst, name=limit_name,
                                scope=scope)]
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(str(exc)) from None
        who = _identity(task_or_identity, key_json)
    else:
        chosen = _task_limits(target, _task(app_of(ctx), task_or_identity), identity)
        who = _identity(identity, key_json)
    rows: list[dict[str, Any]] = []
    for limit in chosen:
        decision = limit.peek(who)
        redis_key = limit.redis_key(who)
        rows.append({
            "limit": limit.name, "rate": str(limit.rate), "algorithm": limit.algorithm,
            "identity": who if not isinstance(who, bytes) else repr(who), "key": redis_key,
            "exists": bool(target.kv.client.exists(redis_key)),
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
          f"{r['remaining']}/{r['capacity']}", _seconds(r["retry_after"]),
          _seconds(r["reset_after"]), r["key"] if r["exists"] else f"{r['key']} (absent)")
         for r in rows]))


# -- idempotency ---------------------------------------------------------------------------------


def _task_idempotency(target: Target, task: Any) -> Any:
    feature = _feature(task, "idempotency", "idempotency (base=IdempotentTask)")
    return feature.primitive(target.kv, task._kv_policy.namespace)


@kv.command()
@_common
@click.argument("task_or_key", metavar="TASK")
@click.argument("key", metavar="KEY", required=False)
@click.option("--namespace", default=None,
              help="A record made in code by kv.idempotency(namespace): then the only "
                   "argument is the KEY.")
@click.pass_context
@_guarded
def idempotency(ctx: click.Context, task_or_key: str, key: str | None, namespace: str | None,
                url: str | None, prefix: str | None, as_json: bool) -> None:
    """State of one idempotency record: in progress (owner, lease) or completed (result).

    TASK is a registered idempotent task and KEY its idempotency key (the
    per-call idempotency_key, or what its idempotency_key template gives).
    For a record made in code: --namespace NS KEY.
    """
    target = _target(ctx, url, prefix)
    if namespace is not None:
        if key is not None:
            raise click.UsageError("with --namespace, give only the KEY")
        try:
            idem = target.kv.idempotency(namespace)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--namespace") from None
        key = task_or_key
    else:
        if key is None:
            raise click.UsageError("give TASK and KEY, or --namespace NS KEY")
        idem = _task_idempotency(target, _task(app_of(ctx), task_or_key))
        key = short_key(key)
    try:
        state = idem.state(key)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY") from None
    if state.status == "absent":
        raise click.ClickException(
            f"no idempotency record for key {key!r} in namespace {idem.namespace!r} "
            f"under '{target.kv.prefix}:' (never seen, or expired)"
        )
    data = {"namespace": idem.namespace, "key": key, **asdict(state),
            "task_id": task_id_of(state.owner)}
    if as_json:
        emit_json(data)
        return
    click.echo(table(["FIELD", "VALUE"], [
        ("namespace", idem.namespace), ("key", key), ("status", state.status),
        ("owner task id", data["task_id"]), ("owner token", state.owner),
        ("fingerprint", state.fingerprint),
        ("lease left", _seconds(state.lease_left) if state.status == "in_progress" else "-"),
        ("kept for", _seconds(state.ttl_left) if state.status == "completed" else "-"),
        ("result", json.dumps(state.result, default=str) if state.status == "completed"
         else "-"),
    ]))


# -- purge ---------------------------------------------------------------------------------------


def purge_prefix(kv: KV) -> int:
    """UNLINK every key under ``kv``'s prefix, SCAN batch by SCAN batch, node by node."""
    removed = 0
    for _name, node in _nodes(kv.client):
        for batch in _scan_prefix(node, kv.store.keys.pattern()):
            pipe = node.pipeline(transaction=False)
            for key in batch:
                pipe.unlink(key)  # one key per UNLINK: cluster keys of a batch span slots
            removed += sum(int(n) for n in pipe.execute())
    return removed


@kv.command()
@_common
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@_guarded
def purge(ctx: click.Context, url: str | None, prefix: str | None, as_json: bool,
          yes: bool) -> None:
    """Remove every key under the prefix (SCAN + UNLINK, never KEYS).

    Held locks, claims, limits, cached values and sessions all go. Only keys
    named '<prefix>:...' are touched; the broker's and other apps' keys stay.
    """
    target = _target(ctx, url, prefix)
    keyspace = target.kv.store.keys
    nodes = _nodes(target.kv.client)
    found = _count_keys(nodes, keyspace)["total"]
    if found and not yes:
        click.confirm(
            f"Remove {found} key(s) matching '{keyspace.pattern()}' from {target.where}?",
            abort=True, err=True,
        )
    removed = purge_prefix(target.kv) if found else 0
    if as_json:
        emit_json({"prefix": keyspace.prefix, "removed": removed})
    else:
        click.echo(f"removed {removed} key(s) under '{keyspace.prefix}:'")


__all__ = ["kv", "mask_url", "purge_prefix", "table"]
