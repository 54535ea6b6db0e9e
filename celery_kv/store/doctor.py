"""Is this Redis fit to coordinate? The checks behind ``celery kv doctor`` and the
dashboard's banners: reachability, version, mode, eviction policy, persistence, scripts,
keys without a TTL. Each check is (name, status, detail); ``findings`` keeps the ones an
operator must act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.exceptions as rexc
from redis.sentinel import SentinelConnectionPool

from ..errors import KVError
from .acl import acl_rules
from .admin import count_keys, primaries
from .client import is_cluster
from .retry import acl_denial as denied

if TYPE_CHECKING:
    from ..kv import KV

_MIN_VERSION = (6, 2)  # GETEX, EXPIRE options and the scripts need Redis 6.2
_SAFE_POLICIES = ("noeviction",)


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
    acl: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))


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


def _info(report: Report, nodes: list[tuple[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """INFO of every primary; an ERROR check (and nothing) when this user may not read it."""
    try:
        return [(name, node.info()) for name, node in nodes]
    except rexc.NoPermissionError as exc:
        report.add("server", "ERROR", f"INFO denied to this user ({exc}): give it the ACL "
                   "rules below (+info)")
        return []


def _keys(report: Report, kv_: KV) -> None:
    try:
        report.keys = count_keys(kv_.store)
    except (rexc.RedisError, KVError) as exc:
        if denied(exc) is None:
            raise
        report.add("keys", "info", "not counted: this user may not SCAN (as the confined ACL "
                   "rules intend); run doctor as an operator user (the rules plus +scan)")
        return
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.keys["by_kind"].items()))
    report.add("keys", "ok", f"{report.keys['total']} under '{kv_.prefix}:*' (by SCAN)"
               + (f": {kinds}" if kinds else ""))
    if report.keys["without_ttl"]:
        report.add("keys without TTL", "WARNING",
                   f"{report.keys['without_ttl']} (e.g. {report.keys['without_ttl_sample'][0]}); "
                   "every celery-kv key has a TTL, so these were written by something else")


def diagnose(kv_: KV, where: str, rtt_ms: float) -> Report:
    """Every doctor check against one KV; ``where`` names it in the report (no password)."""
    client = kv_.client
    report = Report(where, kv_.prefix)
    report.acl = {"rules": acl_rules(kv_.prefix),
                  "operator_rules": acl_rules(kv_.prefix, operator=True)}
    report.add("reachable", "ok", f"PING answered in {rtt_ms:.1f} ms")
    nodes = primaries(client)
    infos = _info(report, nodes)
    if infos:
        _server(report, client, nodes, infos)
    try:
        kv_.store.run("noop", [])
        report.add("lua scripts", "ok", "EVALSHA works")
    except (rexc.RedisError, KVError) as exc:
        noperm = denied(exc)
        report.add("lua scripts", "ERROR", f"EVALSHA failed: {exc}" if noperm is None else
                   f"EVALSHA denied to this user ({noperm}): give it the ACL rules below")
    _keys(report, kv_)
    return report


def _server(report: Report, client: Any, nodes: list[tuple[str, Any]],
            infos: list[tuple[str, dict[str, Any]]]) -> None:
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


def findings(report: Report) -> list[tuple[str, str]]:
    """(level, message) of every check that is not ok: 'error', 'warning' or 'info'."""
    return [(c.status.lower(), f"{c.name}: {c.detail}") for c in report.checks
            if c.status != "ok"]


__all__ = ["Check", "Report", "diagnose", "findings"]
