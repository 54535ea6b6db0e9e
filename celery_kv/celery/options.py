"""Task options: read from the task class (decorator, ``task_annotations``) over the
``kv_*`` settings, checked once when the task is bound, and frozen into a ``TaskPolicy``.

Every error names the task, the option and the bad value, and is raised where the task
is defined.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..primitives.ratelimit import parse_rate
from .config import ALGORITHMS, Settings, on_unavailable_policy, seconds
from .keys import KeySpec, namespace_for, task_signature

SINGLETON_MODES = ("queued", "running")
ON_DUPLICATE = ("return_existing", "raise")
ON_LOCKED = ("retry", "skip", "raise")


@dataclass(frozen=True)
class SingletonPolicy:
    key: KeySpec | None
    mode: str
    lock_ttl: float
    queued_ttl: float
    on_duplicate: str
    on_locked: str


@dataclass(frozen=True)
class IdempotencyPolicy:
    key: KeySpec | None
    ttl: float
    lease: float
    queued_ttl: float


@dataclass(frozen=True)
class RateLimitPolicy:
    rates: tuple[str, ...]
    key: KeySpec | None
    algorithm: str
    max_delay: float


@dataclass(frozen=True)
class ConcurrencyPolicy:
    limit: int
    key: KeySpec | None
    lease: float


@dataclass(frozen=True)
class CachePolicy:
    ttl: float
    key: KeySpec | None
    version: str
    compute_timeout: float | None  # single-flight lease: the task's time limit, when set


@dataclass(frozen=True)
class TaskPolicy:
    """Everything celery-kv does for one task, decided at definition."""

    name: str
    signature: inspect.Signature
    namespace: str
    singleton: SingletonPolicy | None
    idempotency: IdempotencyPolicy | None
    rate_limit: RateLimitPolicy | None
    concurrency: ConcurrencyPolicy | None
    cache: CachePolicy | None
    on_unavailable: Mapping[str, str]
    enqueue_claim_ttl: float
    unavailable_max_delay: float
    wait_interval: float

    @property
    def claims_at_enqueue(self) -> bool:
        queued = self.singleton is not None and self.singleton.mode == "queued"
        return queued or self.idempotency is not None

    @property
    def coordinated(self) -> bool:
        return any((self.singleton, self.idempotency, self.rate_limit, self.concurrency,
                    self.cache))


class _Reader:
    """Reads one task's options and raises errors that name the task and option."""

    def __init__(self, task_cls: Any, settings: Settings) -> None:
        self.cls = task_cls
        self.name = str(task_cls.name)
        self.settings = settings
        try:
            self.signature = task_signature(task_cls)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"task {self.name!r}: cannot read its signature: {exc}") from None

    def raw(self, option: str) -> Any:
        return getattr(self.cls, option, None)

    def where(self, option: str, value: Any) -> str:
        return f"task {self.name!r}: option {option}={value!r}"

    def flag(self, option: str) -> bool:
        value = self.raw(option)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise TypeError(f"{self.where(option, value)} must be True or False")
        return value

    def seconds(self, option: str, default: float) -> float:
        value = self.raw(option)
        if value is None:
            return default
        return seconds(value, f"task {self.name!r}: option {option}")

    def choice(self, option: str, choices: tuple[str, ...], default: str) -> str:
        value = self.raw(option)
        if value is None:
            return default
        if value not in choices:
            raise ValueError(f"{self.where(option, value)} must be one of {choices}")
        return str(value)

    def key(self, option: str, enabled: bool, feature: str) -> KeySpec | None:
        value = self.raw(option)
        if value is None:
            return None
        if not enabled:
            raise ValueError(f"{self.where(option, value)} is set but {feature} is not enabled")
        return KeySpec(self.name, option, value, self.signature)


def _singleton(r: _Reader) -> SingletonPolicy | None:
    enabled = r.flag("singleton")
    key = r.key("singleton_key", enabled, "singleton")
    mode = r.choice("singleton_mode", SINGLETON_MODES, "queued")
    lock_ttl = r.seconds("lock_ttl", r.settings.lock_ttl)
    queued_ttl = r.seconds("queued_ttl", r.settings.queued_ttl)
    on_duplicate = r.choice("on_duplicate", ON_DUPLICATE, "return_existing")
    on_locked = r.choice("on_locked", ON_LOCKED, "retry")
    if not enabled:
        return None
    return SingletonPolicy(key, mode, lock_ttl, queued_ttl, on_duplicate, on_locked)


def _idempotency(r: _Reader) -> IdempotencyPolicy | None:
    enabled = r.flag("idempotent")
    key = r.key("idempotency_key", enabled, "idempotent")
    ttl = r.seconds("idempotency_ttl", r.settings.idempotency_ttl)
    lease = r.seconds("idempotency_lease", r.settings.idempotency_lease)
    if lease > ttl:
        raise ValueError(
            f"task {r.name!r}: idempotency_lease={lease!r} must not exceed idempotency_ttl={ttl!r}"
        )
    if not enabled:
        return None
    return IdempotencyPolicy(key, ttl, lease, r.seconds("queued_ttl", r.settings.queued_ttl))


def _rates(r: _Reader) -> tuple[str, ...]:
    value = r.raw("global_rate_limit")
    if value is None:
        return ()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"{r.where('global_rate_limit', value)} names no rate")
    for item in items:
        try:
            parse_rate(item)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{r.where('global_rate_limit', value)}: {exc}") from None
    return tuple(str(item) for item in items)


def _rate_limit(r: _Reader) -> RateLimitPolicy | None:
    rates = _rates(r)
    key = r.key("rate_limit_key", bool(rates), "global_rate_limit")
    algorithm = r.choice("rate_limit_algorithm", ALGORITHMS, r.settings.rate_limit_algorithm)
    max_delay = r.seconds("rate_limit_max_delay", r.settings.rate_limit_max_delay)
    if not rates:
        return None
    return RateLimitPolicy(rates, key, algorithm, max_delay)


def _concurrency(r: _Reader) -> ConcurrencyPolicy | None:
    limit = r.raw("concurrency_limit")
    key = r.key("concurrency_key", limit is not None, "concurrency_limit")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{r.where('concurrency_limit', limit)} must be an int >= 1")
    return ConcurrencyPolicy(limit, key, r.seconds("lock_ttl", r.settings.lock_ttl))


def _cache(r: _Reader) -> CachePolicy | None:
    enabled = r.flag("cached") or r.raw("cache_ttl") is not None
    key = r.key("cache_key", enabled, "cache (cache_ttl)")
    ttl = r.seconds("cache_ttl", r.settings.cache_ttl)
    version = r.raw("cache_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int))):
        raise TypeError(f"{r.where('cache_version', version)} must be a str or int")
    if version is not None and not enabled:
        raise ValueError(f"{r.where('cache_version', version)} is set but cache is not enabled")
    if not enabled:
        return None
    limits = [r.raw("time_limit"), r.raw("soft_time_limit")]
    timeout = next((float(v) for v in limits if isinstance(v, (int, float)) and v > 0), None)
    return CachePolicy(ttl, key, "" if version is None else str(version), timeout)


OPTIONS = frozenset({
    "singleton", "singleton_key", "singleton_mode", "lock_ttl", "queued_ttl", "on_duplicate",
    "on_locked", "idempotent", "idempotency_key", "idempotency_ttl", "idempotency_lease",
    "global_rate_limit", "rate_limit_key", "rate_limit_algorithm", "rate_limit_max_delay",
    "concurrency_limit", "concurrency_key", "cached", "cache_ttl", "cache_key", "cache_version",
    "on_unavailable",
})
_OUR_PREFIXES = ("singleton", "idempoten", "global_rate", "rate_limit_", "concurrency",
                 "cache_", "lock_", "queued_")


def _check_spelling(task_cls: Any, name: str) -> None:
    """A decorator option that looks like ours but is not one is a typo: say so now."""
    if not task_cls.__dict__.get("_decorated"):
        return  # a class-based task may have attributes of its own
    for attr in task_cls.__dict__:
        if attr.startswith(_OUR_PREFIXES) and attr not in OPTIONS:
            raise ValueError(
                f"task {name!r}: unknown celery-kv option {attr!r} "
                f"(options: {', '.join(sorted(OPTIONS))})"
            )


def build_policy(task_cls: Any, settings: Settings) -> TaskPolicy:
    """Check every celery-kv option of a task class and freeze them (definition time)."""
    r = _Reader(task_cls, settings)
    _check_spelling(task_cls, r.name)
    unavailable = r.raw("on_unavailable")
    policy = TaskPolicy(
        name=r.name,
        signature=r.signature,
        namespace=namespace_for(r.name),
        singleton=_singleton(r),
        idempotency=_idempotency(r),
        rate_limit=_rate_limit(r),
        concurrency=_concurrency(r),
        cache=_cache(r),
        on_unavailable=(settings.on_unavailable if unavailable is None else
                        on_unavailable_policy(unavailable, f"task {r.name!r}: option "
                                              "on_unavailable")),
        enqueue_claim_ttl=settings.enqueue_claim_ttl,
        unavailable_max_delay=settings.unavailable_max_delay,
        wait_interval=settings.wait_interval,
    )
    if getattr(task_cls, "_kv_requires_rate", False) and policy.rate_limit is None:
        raise ValueError(f"task {r.name!r}: RateLimitedTask needs global_rate_limit='N/s|m|h'")
    return policy
