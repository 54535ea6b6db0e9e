"""The ``kv_*`` settings: app-wide defaults read from ``app.conf``, validated once.

The engine's own settings are declared here; every feature's settings are declared with
its options (``features/``). Every setting is optional, and the task option of the same
meaning overrides it per task. The README's settings table is made from these
declarations (``python -m celery_kv.celery.features`` prints it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..store.keys import validate_prefix
from ..store.urls import mask_url
from .delays import OPTIONS as DELAY_OPTIONS
from .features import FEATURES
from .options import Option, Where, flag, read_settings, seconds

POLICIES = ("retry", "run", "raise")
FEATURE_NAMES = tuple(feature.name for feature in FEATURES)
DEFAULT_ON_UNAVAILABLE: Mapping[str, str] = MappingProxyType(
    {feature.name: feature.on_unavailable for feature in FEATURES}
)


def on_unavailable_policy(value: Any, where: Where | str) -> Mapping[str, str]:
    """A full per-feature policy from a string or a partial dict, over the defaults."""
    what = where.text if isinstance(where, Where) else where
    if isinstance(value, str):
        value = dict.fromkeys(FEATURE_NAMES, value)
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{what}={value!r} must be one of {POLICIES} or a dict of feature -> policy"
        )
    merged = dict(DEFAULT_ON_UNAVAILABLE)
    for feature, policy in value.items():
        if feature not in FEATURE_NAMES:
            raise ValueError(f"{what}: unknown feature {feature!r} (features: {FEATURE_NAMES})")
        if policy not in POLICIES:
            raise ValueError(
                f"{what}: policy {policy!r} for {feature!r} must be one of {POLICIES}"
            )
        merged[feature] = policy
    return MappingProxyType(merged)


def _url(value: Any, where: Where) -> str | None:
    if not isinstance(value, str):
        raise TypeError(f"{where.text} must be a URL string, not {type(value).__name__}")
    return value or None


def _prefix(value: Any, where: Where) -> str:
    try:
        return validate_prefix(value)
    except ValueError as exc:
        raise ValueError(f"{where.text}: {exc}") from None


def identities(value: Any, where: Where) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f"{where.text}={value!r} must be a list of identities (strings)")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise TypeError(f"{where.text}: {bad[0]!r} is not an identity (a non-empty string)")
    return frozenset(value)


def port_or_none(value: Any, where: Where) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{where.text}={value!r} must be a TCP port (1-65535) or None")
    return int(value)


ENGINE_OPTIONS: tuple[Option, ...] = (
    Option("redis_url", "the Redis that coordinates (default: the broker URL when it is "
           "`redis://` or `rediss://`)", _url, setting="kv_redis_url", task_option=False),
    Option("prefix", "prefix of every coordination key", _prefix, "kv", "kv_prefix",
           task_option=False),
    Option("retry_deadline", "seconds a Redis call retries before giving up", seconds, 5.0,
           "kv_retry_deadline", task_option=False),
    Option("on_unavailable", "when Redis cannot be reached: `\"retry\"`, `\"run\"` or "
           "`\"raise\"`, or a dict per feature (default `retry`, cache `run`; when features "
           "disagree the strictest wins: raise, then retry, then run)",
           on_unavailable_policy, DEFAULT_ON_UNAVAILABLE, "kv_on_unavailable",
           shown="`\"retry\"` (cache: `\"run\"`)"),
    Option("queued_ttl", "lifetime of a claim held by a queued message (freed sooner at its "
           "final outcome; a countdown or retry delay is added to it)", seconds, 3600.0,
           "kv_queued_ttl"),
    Option("enqueue_claim_ttl", "phase one of the enqueue claim, before the publish is "
           "confirmed", seconds, 10.0, "kv_enqueue_claim_ttl", task_option=False),
    Option("unavailable_max_delay", "total delay while Redis is down before "
           "`CoordinationUnavailable`", seconds, 3600.0, "kv_unavailable_max_delay",
           task_option=False),
    Option("wait_interval", "first countdown when a task waits for a busy key (doubles per "
           "wait, up to 20x)", seconds, 0.5, "kv_wait_interval", task_option=False),
    Option("completion_ttl", "how long a finished task id is remembered, so a redelivered "
           "message of it is acknowledged without running: cover the broker's redelivery "
           "window (the Redis broker's `visibility_timeout`, 1 h by default); each mark "
           "costs about 104 bytes", seconds, 3600.0, "kv_completion_ttl",
           task_option=False),
    Option("completion_deadline", "how long a worker keeps trying to store the outcome of "
           "an idempotent body that ran while Redis is out of reach or full; a lease that "
           "lapses meanwhile leaves \"ran, result unknown\" (duplicates refused), which "
           "the outcome then replaces; past the deadline it stays", seconds, 300.0,
           "kv_completion_deadline", task_option=False),
    *DELAY_OPTIONS,
    Option("otel", "add an OpenTelemetry span event `celery_kv.<signal>` for each "
           "coordination decision to the current span (`celery_kv.otel`; needs "
           "`celery-kv[otel]`)", flag, False, "kv_otel", task_option=False),
    Option("metrics", "count every coordination decision in per-minute counters kept by the "
           "decision scripts themselves (no extra round trip; `celery kv metrics` serves "
           "them)", flag, True, "kv_metrics", task_option=False),
    Option("metrics_ttl", "how long each minute's counters live", seconds, 7200.0,
           "kv_metrics_ttl", task_option=False),
    Option("metrics_identities", "keys and identities (a tenant id, a rate-limit identity) "
           "that get counters of their own; every other key is counted only in its task's "
           "totals, so the number of series stays bounded", identities, (),
           "kv_metrics_identities", task_option=False),
    Option("metrics_port", "a worker serves the Prometheus metrics on this port (from its "
           "main process); None: it does not", port_or_none, None, "kv_metrics_port",
           task_option=False),
)


def all_options() -> tuple[Option, ...]:
    """The engine's options, then every feature's, each once, in declaration order."""
    seen: dict[str, Option] = {}
    for option in (*ENGINE_OPTIONS, *(o for f in FEATURES for o in f.options)):
        seen.setdefault(option.name, option)
    return tuple(seen.values())


@dataclass(frozen=True)
class Settings:
    """The validated ``kv_*`` settings of one app, by setting name (``values``).

    Attribute access drops the prefix: ``settings.lock_ttl`` is ``kv_lock_ttl``.
    """

    values: Mapping[str, Any]

    @classmethod
    def from_conf(cls, conf: Any) -> Settings:
        """Read and check the settings; a bad one raises naming the setting and its value."""
        return cls(MappingProxyType(read_settings(conf, all_options())))

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[f"kv_{name}"]
        except KeyError:
            raise AttributeError(name) from None

    def coordination_url(self, broker_url: Any) -> str:
        """``kv_redis_url``, else the broker URL when the broker is Redis."""
        if self.redis_url:
            return str(self.redis_url)
        first = broker_url
        if isinstance(first, (list, tuple)):
            first = first[0] if first else None
        if isinstance(first, str):
            first = first.split(";")[0].strip()
            if first.split("://", 1)[0].lower() in ("redis", "rediss"):
                return first
        raise ValueError(
            f"kv_redis_url is not set and the broker ({mask_url(first)!r}) is not Redis: "
            "set app.conf.kv_redis_url = 'redis://host:6379/0'"
        )


def readme_tables() -> dict[str, str]:
    """The README's tables, made from the declarations: task options, and settings."""
    from .options import options_table, settings_table

    engine = [o for o in ENGINE_OPTIONS if o.task_option]
    grouped = [(f.name, f.options) for f in FEATURES] + [("every feature", engine)]
    shown_once: list[tuple[str, list[Option]]] = []
    seen: set[str] = set()
    for name, options in grouped:
        fresh = [o for o in options if o.name not in seen]
        seen.update(o.name for o in fresh)
        shown_once.append((name, fresh))
    return {"options": options_table(shown_once), "settings": settings_table(all_options())}
