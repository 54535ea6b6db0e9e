"""The coordination keys of one task call, and the primitives that hold them.

A feature is a thin policy over a primitive: the singleton is a ``Lock`` named
``(task name, key)``, the idempotency claim a record in the task's namespace, the
concurrency limit a ``Semaphore``, the rate limit ``RateLimit`` objects charged
together, the cache a ``Cache`` namespace. Owner tokens are task ids: ``<id>``
while the message is queued, ``<id>#run:<nonce>`` while one execution runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..kv import KV
from ..primitives.cache import Cache
from ..primitives.idempotency import Idempotency
from ..primitives.lock import Lock
from ..primitives.ratelimit import RateLimit
from ..primitives.semaphore import Semaphore
from .keys import Call, KeySpec, short_key
from .options import TaskPolicy

HEADER = "celery_kv"  # message header carrying the keys claimed at enqueue


@dataclass(frozen=True)
class Keys:
    """The singleton and idempotency keys of one call (the ones claimed at enqueue)."""

    singleton: str | None = None
    idempotency: str | None = None
    fingerprint: str | None = None

    def header(self) -> dict[str, str]:
        fields = {"s": self.singleton, "i": self.idempotency, "f": self.fingerprint}
        return {name: value for name, value in fields.items() if value is not None}

    @classmethod
    def from_header(cls, policy: TaskPolicy, header: Mapping[str, Any]) -> Keys | None:
        """The keys a message carries, when it carries every key this task needs."""
        singleton, idem, fp = header.get("s"), header.get("i"), header.get("f")
        if policy.singleton is not None and not isinstance(singleton, str):
            return None
        if policy.idempotency is not None and not isinstance(idem, str):
            return None
        return cls(
            singleton if policy.singleton is not None else None,
            idem if policy.idempotency is not None else None,
            fp if isinstance(fp, str) else None,
        )


def render(spec: KeySpec | None, call: Call) -> str:
    return call.fingerprint if spec is None else spec.render(call)


def keys_for(policy: TaskPolicy, call: Call, explicit: str | None = None) -> Keys:
    """Compute the claimed keys of a call; ``explicit`` is a per-call idempotency_key."""
    singleton = render(policy.singleton.key, call) if policy.singleton else None
    idem = fp = None
    if policy.idempotency is not None:
        fp = call.fingerprint
        idem = short_key(explicit if explicit is not None else render(policy.idempotency.key,
                                                                       call))
    return Keys(singleton, idem, fp)


def check_explicit_key(task_name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"task {task_name!r}: idempotency_key={value!r} must be a non-empty string"
        )
    return value


class Coordination:
    """Builds the primitives of one task on the app's ``KV`` (cheap objects, cached)."""

    def __init__(self, kv_getter: Callable[[], KV], policy: TaskPolicy) -> None:
        self._kv = kv_getter
        self.policy = policy
        self._idem: Idempotency | None = None
        self._cache: Cache | None = None
        self._limits: list[RateLimit] | None = None

    @property
    def kv(self) -> KV:
        return self._kv()

    def lock_name(self, key: str) -> tuple[str, str]:
        return (self.policy.name, key)

    def lock(self, key: str, token: str, ttl: float, **options: Any) -> Lock:
        return self.kv.lock(self.lock_name(key), ttl=ttl, token=token, **options)

    def semaphore(self, key: str, token: str, **options: Any) -> Semaphore:
        policy = self.policy.concurrency
        assert policy is not None
        return self.kv.semaphore(
            (self.policy.name, key), limit=policy.limit, ttl=policy.lease, token=token,
            **options,
        )

    def idempotency(self) -> Idempotency:
        policy = self.policy.idempotency
        assert policy is not None
        if self._idem is None:
            self._idem = self.kv.idempotency(self.policy.namespace, policy.ttl, policy.lease)
        return self._idem

    def cache(self) -> Cache:
        policy = self.policy.cache
        assert policy is not None
        if self._cache is None:
            self._cache = self.kv.cache(self.policy.namespace, ttl=policy.ttl,
                                        lock_timeout=policy.compute_timeout)
        return self._cache

    def rate_limits(self) -> list[RateLimit]:
        """One limit per rate, all in the task's scope, charged together."""
        policy = self.policy.rate_limit
        assert policy is not None
        if self._limits is None:
            kind = "global" if policy.key is None else "per-key"
            many = len(policy.rates) > 1
            self._limits = [
                self.kv.rate_limit(
                    rate, algorithm=policy.algorithm,
                    name=f"{kind}-{i}" if many else kind, scope=self.policy.name,
                )
                for i, rate in enumerate(policy.rates)
            ]
        return self._limits

    def reset(self) -> None:
        """Forget the cached primitives (after a fork, or when the KV was replaced)."""
        self._idem = self._cache = None
        self._limits = None
