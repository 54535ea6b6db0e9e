"""``RateLimit`` and ``hit_all``: limits charged through one script call each.

Key of one identity: ``<prefix>:rl:{<scope>}:<name>:<identity>``, with the name
and the identity encoded by ``store.keys.identity`` (injective, tag-safe). When
the name is the scope (the default) it is left out, as the tag already says it:
``<prefix>:rl:{<name>}:<identity>``. That keeps a GCRA key within ~100 bytes of
MEMORY USAGE. The two forms never meet: an encoded name never starts with ``(``
and only an encoded tuple identity, which does, contains ``:``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...store import KeyLike, Store, identity
from .base import Algorithm
from .decision import Decision
from .fixed_window import FixedWindow
from .gcra import GCRA
from .rate import parse_rate
from .sliding_log import SlidingLog
from .sliding_window import SlidingWindow

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (GCRA, SlidingLog, SlidingWindow, FixedWindow)
}
_FIELDS = 4  # allowed, remaining, retry_after_us, reset_after_us


def _label(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"rate limit {what} {value!r} must be a non-empty string")
    return value


def _check_cost(cost: Any, limits: Sequence[RateLimit]) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise TypeError(f"cost {cost!r} must be an integer >= 1, not {type(cost).__name__}")
    if cost < 1:
        raise ValueError(f"cost {cost!r} must be an integer >= 1")
    for limit in limits:
        if cost > limit.capacity:
            raise ValueError(
                f"cost {cost!r} exceeds the capacity {limit.capacity} of rate limit "
                f"{limit.name!r}: it could never be admitted"
            )
    return cost


class RateLimit:
    """A global rate limit, counted in Redis on server time, per identity.

    ``algorithm`` is ``"gcra"`` (default), ``"sliding_log"``, ``"sliding_window"``
    or ``"fixed_window"``; ``burst`` (GCRA only) is how many units may be taken
    at once, by default the rate's limit. ``name`` labels the limit in a denied
    ``Decision``; ``scope`` is the cluster hash tag (default: the name). Limits
    charged together by ``hit_all`` must share their scope, and every identity
    of one scope lives in one cluster slot: pick scopes that spread the load
    (one per task, say) when a cluster has many busy limits. Name and scope
    identify the state: two limits built with the same ones share it.

    A denied hit consumes nothing, so a caller that keeps retrying is admitted
    as soon as ``retry_after`` has passed.
    """

    def __init__(
        self,
        store: Store,
        rate: Any,
        algorithm: str = "gcra",
        burst: int | None = None,
        *,
        name: str | None = None,
        scope: str | None = None,
    ) -> None:
        parsed = parse_rate(rate)
        cls = ALGORITHMS.get(algorithm) if isinstance(algorithm, str) else None
        if cls is None:
            raise ValueError(
                f"rate limit algorithm {algorithm!r} is unknown; "
                f"choose one of {', '.join(map(repr, ALGORITHMS))}"
            )
        self.strategy = cls(parsed, burst)
        self.store = store
        self.rate = parsed
        self.name = _label(self.strategy.label if name is None else name, "name")
        self.scope = _label(self.name if scope is None else scope, "scope")
        self._name_part = identity(self.name)

    @property
    def algorithm(self) -> str:
        return self.strategy.name

    @property
    def capacity(self) -> int:
        """The most this limit admits at once (the burst, for GCRA)."""
        return self.strategy.capacity

    def redis_key(self, key: KeyLike) -> str:
        """The Redis key holding the state of identity ``key``."""
        if self.name == self.scope:
            return self.store.keys.key("rl", self.scope, identity(key))
        return self.store.keys.key("rl", self.scope, self._name_part, identity(key))

    def hit(self, key: KeyLike, cost: int = 1) -> Decision:
        """Take ``cost`` units for ``key`` if they are all available; a denial takes none."""
        return _run([(self, key)], _check_cost(cost, [self]), "hit")

    def peek(self, key: KeyLike) -> Decision:
        """Would one unit be admitted now? Consumes nothing."""
        return _run([(self, key)], 1, "peek")

    def reset(self, key: KeyLike) -> None:
        """Forget everything counted for ``key`` (one UNLINK)."""
        redis_key = self.redis_key(key)
        # execute_command, not unlink(): RedisCluster would batch it through a pipeline
        self.store.command(
            "ratelimit.reset", lambda c: c.execute_command("UNLINK", redis_key), retry_safe=True
        )

    def chargeable_with(self, other: RateLimit) -> bool:
        """True when one script call can charge both: same store, algorithm and scope."""
        mine, theirs = (self.algorithm, self.scope), (other.algorithm, other.scope)
        return self.store is other.store and mine == theirs

    def __repr__(self) -> str:
        return f"RateLimit({str(self.rate)!r}, algorithm={self.algorithm!r}, name={self.name!r})"


def hit_all(charges: Sequence[tuple[RateLimit, KeyLike]], cost: int = 1) -> Decision:
    """Charge every (limit, key) pair ``cost`` units, all-or-nothing, in one script call.

    When every limit admits, all are charged and the Decision is that of the
    most constraining limit (least remaining). Otherwise none is charged and
    the Decision is the denying limit's with the longest ``retry_after``, its
    name in ``denied_by``. The limits must share one algorithm and one scope:
    one script charges them, and its keys must live in one cluster slot.
    """
    pairs = list(charges)
    if not pairs:
        raise ValueError("hit_all needs at least one (rate limit, key) pair")
    first = pairs[0][0]
    for limit, _ in pairs:
        if not isinstance(limit, RateLimit):
            raise TypeError(f"hit_all takes (RateLimit, key) pairs, not {limit!r}")
        if not limit.chargeable_with(first):
            raise ValueError(
                f"rate limits {first.name!r} ({first.algorithm}, scope {first.scope!r}) and "
                f"{limit.name!r} ({limit.algorithm}, scope {limit.scope!r}) cannot be charged "
                "together: limits charged together must share one store, algorithm and scope, "
                "so that one script updates them and their keys live in one cluster slot"
            )
    return _run(pairs, _check_cost(cost, [limit for limit, _ in pairs]), "hit")


def _run(pairs: Sequence[tuple[RateLimit, KeyLike]], cost: int, mode: str) -> Decision:
    """One EVALSHA of the strategy's script over every pair's key."""
    keys = [limit.redis_key(key) for limit, key in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("hit_all got the same rate limit and key twice; charge it once")
    args: list[int | str] = [mode, cost]
    for limit, _ in pairs:
        args.extend(limit.strategy.arguments())
    first = pairs[0][0]
    reply = first.store.run(first.strategy.script, keys, args, read_only=mode == "peek")
    raw = [int(v) for v in reply]
    at = raw[0] / 1_000_000
    decisions = [
        Decision(
            allowed=bool(raw[1 + i * _FIELDS]),
            limit=limit.capacity,
            remaining=raw[2 + i * _FIELDS],
            retry_after=raw[3 + i * _FIELDS] / 1_000_000,
            reset_after=raw[4 + i * _FIELDS] / 1_000_000,
            denied_by=None if raw[1 + i * _FIELDS] else limit.name,
            at=at,
        )
        for i, (limit, _) in enumerate(pairs)
    ]
    denied = [d for d in decisions if not d.allowed]
    if denied:
        return max(denied, key=lambda d: d.retry_after)
    return min(decisions, key=lambda d: d.remaining)
