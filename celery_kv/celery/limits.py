"""Rate limits as data: per-identity overrides of a task's limits, set while workers run.

An override replaces one limit's rate for one identity (a tenant on a bigger plan, a
partner that asked for less). It lives in Redis, in a hash beside the limit's state
(same hash tag), and the start step's script reads it in the same round trip as the
charge, so running workers apply it from their next admission: no restart, no reload.

Overrides are operator data, so they persist (no TTL) until unset, unless set with a
``ttl``: the override then lapses by itself. For GCRA an override's burst is its limit.
``celery kv limits set|unset|list`` is the same API on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from ..kv import KV
from ..primitives.ratelimit import Rate, RateLimit, parse_rate
from ..store import KeyLike


@dataclass(frozen=True)
class Override:
    """One live override: the task's limit it changes, the state key it applies to, the
    rate, and the seconds it has left (None: until unset)."""

    task: str
    limit: str
    key: str
    rate: Rate
    ttl: float | None


def _feature(task: Any) -> Any:
    policy = getattr(task, "_kv_policy", None)
    feature = policy.feature("rate_limit") if policy is not None else None
    if feature is None:
        raise ValueError(f"task {getattr(task, 'name', task)!r} has no rate limit "
                         "(global_rate_limit or rate_limits)")
    return feature


def task_limit(task: Any, limit: str | int | None = None, kv: KV | None = None) -> RateLimit:
    """The task's limit named ``limit`` (or at that index in its declaration order:
    ``global_rate_limit``'s rates, then ``rate_limits``; default: its first), as its
    workers build it."""
    feature = _feature(task)
    limits: list[RateLimit] = feature.limits(kv or task.kv)
    if limit is None:
        return limits[0]
    if isinstance(limit, int) and not isinstance(limit, bool):
        if not 0 <= limit < len(limits):
            raise ValueError(f"task {task.name!r} has {len(limits)} rate limits, no index "
                             f"{limit}")
        return limits[limit]
    for found in limits:
        if found.name == limit:
            return found
    raise ValueError(f"task {task.name!r} has no rate limit named {limit!r}; its limits: "
                     f"{[found.name for found in limits]}")


def set_override(task: Any, identity: KeyLike, rate: Any, *, limit: str | int | None = None,
                 ttl: float | None = None, kv: KV | None = None) -> Rate:
    """Charge ``identity`` at ``rate`` on the task's limit ``limit`` (a name or an index;
    default: its first),
    on every worker from its next admission. A bad rate, or one whose capacity is below
    the limit's fixed cost (it could never admit a run), writes nothing."""
    chosen = task_limit(task, limit, kv)
    try:
        parsed = parse_rate(rate)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"task {task.name!r}: override of rate limit {chosen.name!r}: "
                        f"{exc}") from None
    spec = next(s for s in _feature(task).specs if s.name == chosen.name)
    if isinstance(spec.cost, int) and spec.cost > parsed.limit:
        raise ValueError(f"task {task.name!r}: override {rate!r} of rate limit "
                         f"{chosen.name!r} admits at most {parsed.limit} at once, below the "
                         f"task's rate_limit_cost={spec.cost}: no run could ever be admitted")
    return chosen.override(identity, parsed, ttl)


def unset_override(task: Any, identity: KeyLike, *, limit: str | int | None = None,
                   kv: KV | None = None) -> bool:
    """Go back to the limit's own rate for ``identity``; False when it had no override."""
    return task_limit(task, limit, kv).clear_override(identity)


def list_overrides(task: Any, kv: KV | None = None) -> list[Override]:
    """Every live override of the task's limits."""
    found = []
    for chosen in _feature(task).limits(kv or task.kv):
        for key, (rate, ttl) in sorted(chosen.overrides().items()):
            found.append(Override(task.name, chosen.name, key, rate, ttl))
    return found


def _exists(key: str, client: Any) -> bool:
    return bool(client.exists(key))


def identity_pairs(feature: Any, kv: KV, identity: KeyLike) -> list[tuple[RateLimit, KeyLike]]:
    """A task's limits (its rate-limit ``feature``), each with the identity it is charged
    for: ``identity`` for a keyed limit, '' for a task-wide one."""
    limits: list[RateLimit] = feature.limits(kv)
    return [(limit, identity if spec.key is not None else "")
            for limit, spec in zip(limits, feature.specs, strict=True)]


def peeked(kv: KV, pairs: list[tuple[RateLimit, KeyLike]]) -> list[dict[str, Any]]:
    """Each limit's state for its identity, as ``celery kv limits`` and the dashboard show
    it: peeked, so nothing is charged."""
    rows: list[dict[str, Any]] = []
    for limit, who in pairs:
        decision = limit.peek(who)
        redis_key = limit.redis_key(who)
        exists = kv.store.command("limit exists", partial(_exists, redis_key),
                                  retry_safe=True)
        rows.append({
            "limit": limit.name, "rate": str(limit.rate), "algorithm": limit.algorithm,
            "identity": who if not isinstance(who, bytes) else repr(who), "key": redis_key,
            "exists": bool(exists),
            "allowed_now": decision.allowed, "capacity": decision.limit,
            "remaining": decision.remaining, "retry_after": decision.retry_after,
            "reset_after": decision.reset_after,
        })
    return rows


__all__ = ["Override", "identity_pairs", "list_overrides", "peeked", "set_override",
           "task_limit", "unset_override"]
