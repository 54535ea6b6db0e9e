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
    if cost == 1 and type(cost) is int:  # every limit admits 1
        return 1
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
        # Built once: a hit only appends the identity and sends these arguments.
        if self.name == self.scope:
            self._head = store.keys.head("rl", self.scope)
        else:
            self._head = store.keys.head("rl", self.scope, identity(self.name))
        self._arguments = self.strategy.arguments()
        self._capacity = self.strategy.capacity
        self._hit_one = ("hit", 1, *self._arguments)
        self._peek = ("peek", 1, *self._arguments)

    @property
    def algorithm(self) -> str:
        return self.strategy.name

    @property
    def capacity(self) -> int:
        """The most this limit admits at once (the burst, for GCRA)."""
        return self.strategy.capacity

    def redis_key(self, key: KeyLike) -> str:
        """The Redis key holding the state of identity ``key``."""
        return self._head + identity(key)

    def hit(self, key: KeyLike, cost: int = 1) -> Decision:
        """Take ``cost`` units for ``key`` if they are all available; a denial takes none."""
        if cost == 1 and type(cost) is int:  # every limit admits 1: nothing to check
            return self._run_one(key, self._hit_one, False)
        cost = _check_cost(cost, [self])
        return self._run_one(key, ("hit", cost, *self._arguments), False)

    def peek(self, key: KeyLike) -> Decision:
        """Would one unit be admitted now? Consumes nothing."""
        return self._run_one(key, self._peek, True)

    def _run_one(self, key: KeyLike, args: tuple[Any, ...], peek: bool) -> Decision:
        """``_run`` for one pair, without the bookkeeping that only several pairs need."""
        reply = self.store.run(
            self.strategy.script, (self._head + identity(key),), args, read_only=peek
        )
        at, allowed, remaining, retry_us, reset_us = reply.split()
        ok = allowed == b"1" or allowed == "1"
        return Decision(
            ok,
            self._capacity,
            int(remaining),
            int(retry_us) / 1_000_000,
            int(reset_us) / 1_000_000,
            None if ok else self.name,
            int(at) / 1_000_000,
        )

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


def charge_call(
    pairs: Sequence[tuple[RateLimit, KeyLike]], cost: int, mode: str
) -> tuple[str, list[str], list[int | str]]:
    """The script, keys and arguments that charge every pair (``mode`` 'hit' or 'peek')."""
    keys = [limit._head + identity(key) for limit, key in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("hit_all got the same rate limit and key twice; charge it once")
    args: list[int | str] = [mode, cost]
    for limit, _ in pairs:
        args.extend(limit._arguments)
    return pairs[0][0].strategy.script, keys, args


def _run(pairs: Sequence[tuple[RateLimit, KeyLike]], cost: int, mode: str) -> Decision:
    """One EVALSHA of the strategy's script over every pair's key."""
    script, keys, args = charge_call(pairs, cost, mode)
    reply = pairs[0][0].store.run(script, keys, args, read_only=mode == "peek")
    return decision_of(pairs, reply)


def decision_of(pairs: Sequence[tuple[RateLimit, KeyLike]], reply: Any) -> Decision:
    """The Decision a charge script's reply (one string of integers) stands for."""
    if isinstance(reply, bytes):
        reply = reply.decode()
    raw = [int(v) for v in reply.split()]  # one string of integers, see the script
    # The answer: the denial with the longest retry_after, else the least remaining
    # (the first such pair on a tie); only that pair's Decision is built.
    chosen, denied = 0, False
    for i in range(len(pairs)):
        base = i * _FIELDS
        if not raw[1 + base]:
            if not denied or raw[3 + base] > raw[3 + chosen * _FIELDS]:
                chosen, denied = i, True
        elif not denied and raw[2 + base] < raw[2 + chosen * _FIELDS]:
            chosen = i
    limit, base = pairs[chosen][0], chosen * _FIELDS
    return Decision(
        allowed=not denied,
        limit=limit.capacity,
        remaining=raw[2 + base],
        retry_after=raw[3 + base] / 1_000_000,
        reset_after=raw[4 + base] / 1_000_000,
        denied_by=limit.name if denied else None,
        at=raw[0] / 1_000_000,
    )
