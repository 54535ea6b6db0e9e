"""``KV``: the one object users hold. It builds every primitive on one ``Store``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .primitives.cache import Cache
from .primitives.idempotency import Idempotency
from .primitives.lock import Lock
from .primitives.ratelimit import Decision, RateLimit, hit_all
from .primitives.semaphore import Semaphore
from .primitives.sessions import Sessions
from .store import AnyRedis, KeyLike, RetryPolicy, Store, connect


class KV:
    """Coordination through one Redis client under one key prefix.

    ``KV(client=redis.Redis(...), prefix="myapp")`` takes any redis-py client,
    ``RedisCluster`` or fakeredis; ``KV.from_url(url, prefix=...)`` builds one.
    ``retry_deadline`` bounds, in seconds, how long a call retries a Redis that
    cannot be reached before it raises ``CoordinationUnavailable``.
    """

    def __init__(
        self, client: AnyRedis, prefix: str = "kv", *, retry_deadline: float = 5.0
    ) -> None:
        self.store = Store(client, prefix, RetryPolicy(deadline=retry_deadline))

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "kv", *, retry_deadline: float = 5.0, **options: Any
    ) -> KV:
        """Connect by URL: redis://, rediss://, unix://, redis+sentinel://, redis+cluster://."""
        return cls(connect(url, **options), prefix, retry_deadline=retry_deadline)

    @property
    def client(self) -> AnyRedis:
        return self.store.client

    @property
    def prefix(self) -> str:
        return self.store.prefix

    def ping(self) -> bool:
        """True when Redis answers; never raises."""
        try:
            return bool(self.store.client.ping())
        except Exception:
            return False

    def lock(
        self, name: KeyLike, ttl: float = 30.0, auto_renew: bool = False, **options: Any
    ) -> Lock:
        return Lock(self.store, name, ttl=ttl, auto_renew=auto_renew, **options)

    def rate_limit(
        self, rate: str, algorithm: str = "gcra", burst: int | None = None, **options: Any
    ) -> RateLimit:
        return RateLimit(self.store, rate, algorithm=algorithm, burst=burst, **options)

    def hit_all(
        self, charges: Sequence[tuple[RateLimit, KeyLike]], cost: int = 1
    ) -> Decision:
        """Charge several limits all-or-nothing in one script call."""
        return hit_all(charges, cost=cost)

    def semaphore(
        self, name: KeyLike, limit: int, ttl: float = 30.0, **options: Any
    ) -> Semaphore:
        return Semaphore(self.store, name, limit=limit, ttl=ttl, **options)

    def cache(self, namespace: str, ttl: float = 300.0, **options: Any) -> Cache:
        return Cache(self.store, namespace, ttl=ttl, **options)

    def idempotency(
        self, namespace: str, ttl: float = 86400.0, lease: float = 60.0, **options: Any
    ) -> Idempotency:
        return Idempotency(self.store, namespace, ttl=ttl, lease=lease, **options)

    def sessions(
        self, namespace: str, ttl: float = 3600.0, max_lifetime: float | None = None
    ) -> Sessions:
        return Sessions(self.store, namespace, ttl=ttl, max_lifetime=max_lifetime)

    def __repr__(self) -> str:
        return f"KV(prefix={self.prefix!r}, client={self.store.client!r})"
