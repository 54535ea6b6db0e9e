"""The ``kv_*`` settings: app-wide defaults read from ``app.conf``, validated once.

Every setting is optional. Task options of the same meaning (``lock_ttl``,
``idempotency_ttl``, ...) override these per task.

==============================  =============  ==============================================
setting                         default        meaning
==============================  =============  ==============================================
``kv_redis_url``                broker URL     Redis for coordination (the broker's URL when
                                               it is ``redis://`` or ``rediss://``)
``kv_prefix``                   ``"kv"``       key prefix of every coordination key
``kv_retry_deadline``           5.0            seconds a Redis call retries before giving up
``kv_on_unavailable``           see below      ``"retry"``, ``"run"`` or ``"raise"``, or a dict
                                               per feature
``kv_lock_ttl``                 30.0           running lease of singleton and concurrency
                                               slots, renewed by a heartbeat; a SIGKILLed
                                               worker frees its keys within about this long
``kv_queued_ttl``               3600.0         lifetime of a claim held by a queued message
                                               (freed sooner at its final outcome)
``kv_enqueue_claim_ttl``        10.0           phase one of the enqueue claim, before the
                                               publish is confirmed
``kv_idempotency_ttl``          86400.0        how long a completed result is replayed
``kv_idempotency_lease``        30.0           running lease of an idempotency claim
``kv_cache_ttl``                300.0          ``CachedTask`` default lifetime
``kv_rate_limit_algorithm``     ``"gcra"``     ``gcra``, ``sliding_log``, ``sliding_window``,
                                               ``fixed_window``
``kv_rate_limit_max_delay``     3600.0         a task rate limited for longer fails with
                                               ``RateLimitExceeded``
``kv_unavailable_max_delay``    3600.0         a task rescheduled because Redis is down for
                                               longer fails with ``CoordinationUnavailable``
``kv_wait_interval``            0.5            first countdown when a task waits for a busy
                                               key (doubles per wait, up to 20x)
==============================  =============  ==============================================

``kv_on_unavailable`` defaults to ``"retry"`` for singleton, idempotency, rate_limit
and concurrency, and ``"run"`` for cache. A string sets every feature; a dict sets
the features it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..primitives._arguments import MAX_SECONDS, is_seconds
from ..primitives.ratelimit import ALGORITHMS as _ALGORITHMS
from ..store.keys import validate_prefix

FEATURES = ("singleton", "idempotency", "rate_limit", "concurrency", "cache")
POLICIES = ("retry", "run", "raise")
ALGORITHMS = tuple(_ALGORITHMS)
DEFAULT_ON_UNAVAILABLE: Mapping[str, str] = MappingProxyType({
    "singleton": "retry",
    "idempotency": "retry",
    "rate_limit": "retry",
    "concurrency": "retry",
    "cache": "run",
})

_SECONDS = {
    "retry_deadline": 5.0,
    "lock_ttl": 30.0,
    "queued_ttl": 3600.0,
    "enqueue_claim_ttl": 10.0,
    "idempotency_ttl": 86400.0,
    "idempotency_lease": 30.0,
    "cache_ttl": 300.0,
    "rate_limit_max_delay": 3600.0,
    "unavailable_max_delay": 3600.0,
    "wait_interval": 0.5,
}


def seconds(value: Any, what: str) -> float:
    """A finite number of seconds > 0, or a ValueError that names ``what`` and the value."""
    if not is_seconds(value, MAX_SECONDS):
        raise ValueError(f"{what}={value!r} must be a finite number of seconds > 0")
    return float(value)


def on_unavailable_policy(value: Any, what: str) -> Mapping[str, str]:
    """A full per-feature policy from a string or a partial dict, over the defaults."""
    if isinstance(value, str):
        value = dict.fromkeys(FEATURES, value)
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{what}={value!r} must be one of {POLICIES} or a dict of feature -> policy"
        )
    merged = dict(DEFAULT_ON_UNAVAILABLE)
    for feature, policy in value.items():
        if feature not in FEATURES:
            raise ValueError(f"{what}: unknown feature {feature!r} (features: {FEATURES})")
        if policy not in POLICIES:
            raise ValueError(
                f"{what}: policy {policy!r} for {feature!r} must be one of {POLICIES}"
            )
        merged[feature] = policy
    return MappingProxyType(merged)


@dataclass(frozen=True)
class Settings:
    """The validated ``kv_*`` settings of one app."""

    redis_url: str | None
    prefix: str
    on_unavailable: Mapping[str, str]
    rate_limit_algorithm: str
    retry_deadline: float
    lock_ttl: float
    queued_ttl: float
    enqueue_claim_ttl: float
    idempotency_ttl: float
    idempotency_lease: float
    cache_ttl: float
    rate_limit_max_delay: float
    unavailable_max_delay: float
    wait_interval: float

    @classmethod
    def from_conf(cls, conf: Any) -> Settings:
        """Read and check the settings; a bad one raises naming the setting and its value."""
        times = {name: seconds(conf.get(f"kv_{name}", default), f"kv_{name}")
                 for name, default in _SECONDS.items()}
        algorithm = conf.get("kv_rate_limit_algorithm", "gcra")
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"kv_rate_limit_algorithm={algorithm!r} must be one of {ALGORITHMS}"
            )
        url = conf.get("kv_redis_url") or None
        if url is not None and not isinstance(url, str):
            raise TypeError(f"kv_redis_url={url!r} must be a URL string")
        prefix = conf.get("kv_prefix", "kv")
        try:
            validate_prefix(prefix)
        except ValueError as exc:
            raise ValueError(f"kv_prefix: {exc}") from None
        policy = on_unavailable_policy(
            conf.get("kv_on_unavailable", DEFAULT_ON_UNAVAILABLE), "kv_on_unavailable"
        )
        return cls(
            redis_url=url, prefix=prefix, on_unavailable=policy,
            rate_limit_algorithm=algorithm, **times,
        )

    def coordination_url(self, broker_url: Any) -> str:
        """``kv_redis_url``, else the broker URL when the broker is Redis."""
        if self.redis_url:
            return self.redis_url
        first = broker_url
        if isinstance(first, (list, tuple)):
            first = first[0] if first else None
        if isinstance(first, str):
            first = first.split(";")[0].strip()
            if first.split("://", 1)[0].lower() in ("redis", "rediss"):
                return first
        raise ValueError(
            f"kv_redis_url is not set and the broker ({first!r}) is not Redis: "
            "set app.conf.kv_redis_url = 'redis://host:6379/0'"
        )
