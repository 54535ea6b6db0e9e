"""``RateLimit`` and ``hit_all``: limits charged through one script call each.

Key of one identity: ``<prefix>:rl:{<scope>}:<name>:<identity>``, with the name
and the identity encoded by ``store.keys.identity`` (injective, tag-safe). When
the name is the scope (the default) it is left out, as the tag already says it:
``<prefix>:rl:{<name>}:<identity>``. That keeps a GCRA key within ~100 bytes of
MEMORY USAGE. The two forms never meet: an encoded name never starts with ``(``
and only an encoded tuple identity, which does, contains ``:``.

Beside the state, in the same hash tag (``!`` starts no encoded name or identity but
the empty one, which is exactly ``!``): ``<state key>:!t``, the identity's "throttled
until" (``throttle``), and ``<prefix>:rl:{<scope>}:!o``, the scope's per-identity
overrides (``override``). A limit built with ``dynamic=True`` reads both in the same
script call as its state (one HGET and one GET more per key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...store import KeyLike, Store, identity
from .._arguments import is_seconds
from .base import Algorithm
from .decision import Decision
from .fixed_window import FixedWindow
from .gcra import GCRA
from .rate import Rate, parse_rate
from .sliding_log import SlidingLog
from .sliding_window import SlidingWindow

MAX_THROTTLE = 366 * 86400.0  # the longest throttle, override ttl or reservation wait
ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (GCRA, SlidingLog, SlidingWindow, FixedWindow)
}
_FIELDS = 6  # allowed, remaining, retry_after_us, reset_after_us, mark, amount
_HEAD = 2  # now_us, slot_us


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
    ``dynamic``: every call also reads the identity's override and throttle (see
    ``override`` and ``throttle``; they are written either way).

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
        dynamic: bool = False,
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
        self._hit_one = ("hit", 0, 1, *self._arguments)
        self._peek = ("peek", 0, 1, *self._arguments)
        self.dynamic = dynamic
        self.overrides_key = store.keys.key("rl", self.scope, "!o")

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
        return self._run_one(key, ("hit", 0, cost, *self._arguments), False)

    def peek(self, key: KeyLike) -> Decision:
        """Would one unit be admitted now? Consumes nothing."""
        return self._run_one(key, self._peek, True)

    def _run_one(self, key: KeyLike, args: tuple[Any, ...], peek: bool) -> Decision:
        """``_run`` for one pair, without the bookkeeping that only several pairs need."""
        if self.dynamic:
            return _run([(self, key)], [int(args[2])], str(args[0]))
        reply = self.store.run(
            self.strategy.script, (self._head + identity(key),), args, read_only=peek
        )
        at, _, allowed, remaining, retry_us, reset_us, _, _ = reply.split()
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

    def reserve(self, key: KeyLike, cost: int = 1, max_wait: float = 3600.0) -> Reservation:
        """Take ``cost`` units now, or at the earliest later slot within ``max_wait``
        seconds (the units count at that slot: come back then). Unlike ``hit``, a caller
        that must wait is charged now for its future slot, so waiters are served in
        order and none retries; ``give_back`` returns a slot that will not be used."""
        return reserve_all([(self, key)], cost, max_wait)

    def throttle_key(self, key: KeyLike) -> str:
        """The key holding identity ``key``'s "throttled until" (server microseconds)."""
        return self.redis_key(key) + ":!t"

    def throttle(self, key: KeyLike, seconds: float) -> float:
        """Admit nothing for ``key`` before ``seconds`` from now (a partner's 429
        Retry-After), on every client whose limit is ``dynamic``. Only ever moves later.
        Returns the server time (epoch seconds) it is throttled until."""
        if not is_seconds(seconds, MAX_THROTTLE) and seconds != 0:
            raise ValueError(f"throttle of rate limit {self.name!r}: {seconds!r} must be "
                             f"a finite number of seconds from 0 to {MAX_THROTTLE:.0f}")
        until = self.store.run("ratelimit_throttle", (self.throttle_key(key),),
                               (round(seconds * 1_000_000),))
        return int(until) / 1_000_000

    def override(self, key: KeyLike, rate: Any, ttl: float | None = None) -> Rate:
        """Use ``rate`` for identity ``key`` instead of this limit's (for ``ttl`` seconds,
        or until ``clear_override``), read by ``dynamic`` limits on their next call.
        For GCRA the override's burst is its limit, and the identity's debt is rescaled
        to the new rate (the units it owes stay the same). A bad rate writes nothing."""
        try:
            parsed = parse_rate(rate)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"override of rate limit {self.name!r}: {exc}") from None
        if ttl is not None and not is_seconds(ttl, MAX_THROTTLE):
            raise ValueError(f"override of rate limit {self.name!r}: ttl {ttl!r} must be a "
                             f"finite number of seconds > 0 (at most {MAX_THROTTLE:.0f})")
        ttl_us = 0 if ttl is None else max(round(ttl * 1_000_000), 1)
        self.store.run("ratelimit_override", (self.overrides_key, self.redis_key(key)),
                       ("set", *self._own(), parsed.limit, parsed.period_us, ttl_us))
        return parsed

    def _own(self) -> tuple[str, int]:
        """The override script's view of this limit: its algorithm, and for GCRA its own
        emission interval (a change of rate rescales a GCRA identity's debt)."""
        own = self._arguments[0] if isinstance(self.strategy, GCRA) else 0
        return self.algorithm, own

    def clear_override(self, key: KeyLike) -> bool:
        """Go back to this limit's own rate for ``key``; False when it had no override."""
        return bool(self.store.run("ratelimit_override", (self.overrides_key,
                                                          self.redis_key(key)),
                                   ("unset", *self._own(), 0, 0, 0)))

    def overrides(self) -> dict[str, tuple[Rate, float | None]]:
        """This limit's live overrides: state key -> (rate, seconds left or None)."""
        raw = self.store.command(
            "ratelimit.overrides", lambda c: c.hgetall(self.overrides_key), retry_safe=True)
        now = self.store.command("ratelimit.time", lambda c: c.time(), retry_safe=True)
        now_us = int(now[0]) * 1_000_000 + int(now[1])
        found: dict[str, tuple[Rate, float | None]] = {}
        for field, value in raw.items():
            field = field.decode() if isinstance(field, bytes) else field
            value = value.decode() if isinstance(value, bytes) else value
            if not field.startswith(self._head):
                continue
            limit, period_us, until = (int(v) for v in value.split()[:3])
            if until and until <= now_us:
                continue
            left = (until - now_us) / 1_000_000 if until else None
            found[field] = (Rate(limit, period_us / 1_000_000), left)
        return found

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
    _check_pairs(pairs)
    checked = _check_cost(cost, [limit for limit, _ in pairs])
    return _run(pairs, [checked] * len(pairs), "hit")


def _check_pairs(pairs: Sequence[tuple[RateLimit, KeyLike]]) -> None:
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


@dataclass(frozen=True)
class Reservation:
    """What ``reserve_all`` took: ``decision`` (as of now), and when a slot was taken,
    ``slot`` (server epoch seconds the units count at) and ``token`` (for ``give_back``).

    ``admitted``: the units were charged now. ``reserved``: charged at ``slot`` later,
    ``delay`` seconds from the decision. Neither: nothing was charged (the slot lay
    beyond ``max_wait``, or an override made a cost unadmittable).
    """

    decision: Decision
    slot: float | None = None
    token: str = ""

    @property
    def admitted(self) -> bool:
        return self.decision.allowed and self.slot is not None

    @property
    def reserved(self) -> bool:
        return not self.decision.allowed and self.slot is not None

    @property
    def delay(self) -> float:
        at = self.decision.at or 0.0
        return 0.0 if self.slot is None else max(self.slot - at, 0.0)


def reserve_all(charges: Sequence[tuple[RateLimit, KeyLike]], costs: int | Sequence[int] = 1,
                max_wait: float = 3600.0) -> Reservation:
    """Charge every pair now, or at the earliest slot within ``max_wait`` seconds at which
    every pair admits (all-or-nothing, one script call). ``costs``: one for all, or one
    per pair. See ``RateLimit.reserve``."""
    pairs = list(charges)
    _check_pairs(pairs)
    given: list[Any] = list(costs) if isinstance(costs, (list, tuple)) else [costs] * len(pairs)
    if len(given) != len(pairs):
        raise ValueError(f"{len(given)} costs for {len(pairs)} rate limits")
    each = [_check_cost(c, [limit]) for c, (limit, _) in zip(given, pairs, strict=True)]
    if not is_seconds(max_wait, MAX_THROTTLE) and max_wait != 0:
        raise ValueError(f"max_wait {max_wait!r} must be a finite number of seconds >= 0")
    script, keys, args = charge_call(pairs, each, "reserve", round(max_wait * 1_000_000))
    reply = pairs[0][0].store.run(script, keys, args)
    return reservation_of(pairs, reply)


def reservation_of(pairs: Sequence[tuple[RateLimit, KeyLike]], reply: Any) -> Reservation:
    """The Reservation a charge script's reply in 'reserve' mode stands for."""
    if isinstance(reply, bytes):
        reply = reply.decode()
    raw = reply.split()
    decision = decision_of(pairs, reply)
    if raw[1] == "0":
        return Reservation(decision)
    marks = [v for i in range(len(pairs)) for v in raw[_HEAD + i * _FIELDS + 4:
                                                       _HEAD + i * _FIELDS + 6]]
    return Reservation(decision, int(raw[1]) / 1_000_000, " ".join([raw[1], *marks]))


def give_back(charges: Sequence[tuple[RateLimit, KeyLike]], reservation: Reservation) -> int:
    """Return a reserved slot that will not be used, where the algorithm allows it
    (GCRA: only while no later charge stacked on it; see ``ratelimit_give_back.lua``).
    Call it once per reservation. Returns how many limits took their share back."""
    pairs = list(charges)
    _check_pairs(pairs)
    if not reservation.token:
        return 0
    keys = [limit._head + identity(key) for limit, key in pairs]
    args = [pairs[0][0].algorithm, *reservation.token.split()]
    return int(pairs[0][0].store.run("ratelimit_give_back", keys, args))


def charge_call(
    pairs: Sequence[tuple[RateLimit, KeyLike]], costs: int | Sequence[int], mode: str,
    horizon_us: int = 0,
) -> tuple[str, list[str], list[int | str]]:
    """The script, keys and arguments that charge every pair (``mode`` 'hit', 'reserve'
    or 'peek'; ``costs`` one for all or one per pair). Limits built ``dynamic`` add their
    throttle keys and their scope's overrides hash."""
    keys = [limit._head + identity(key) for limit, key in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("hit_all got the same rate limit and key twice; charge it once")
    each = [costs] * len(pairs) if isinstance(costs, int) else costs
    args: list[int | str] = [mode, horizon_us]
    for (limit, _), cost in zip(pairs, each, strict=True):
        args.append(cost)
        args.extend(limit._arguments)
    if pairs[0][0].dynamic:
        keys += [key + ":!t" for key in keys]
        keys.append(pairs[0][0].overrides_key)
    return pairs[0][0].strategy.script, keys, args


def _run(pairs: Sequence[tuple[RateLimit, KeyLike]], costs: Sequence[int], mode: str) -> Decision:
    """One EVALSHA of the strategy's script over every pair's key."""
    script, keys, args = charge_call(pairs, costs, mode)
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
        base = _HEAD + i * _FIELDS
        if not raw[base]:
            if not denied or raw[2 + base] > raw[_HEAD + 2 + chosen * _FIELDS]:
                chosen, denied = i, True
        elif not denied and raw[1 + base] < raw[_HEAD + 1 + chosen * _FIELDS]:
            chosen = i
    limit, base = pairs[chosen][0], _HEAD + chosen * _FIELDS
    return Decision(
        allowed=not denied,
        limit=limit.capacity,
        remaining=raw[1 + base],
        retry_after=raw[2 + base] / 1_000_000,
        reset_after=raw[3 + base] / 1_000_000,
        denied_by=limit.name if denied else None,
        at=raw[0] / 1_000_000,
    )
