"""Rate limit: global limits per task, or per key, counted in Redis on server time.

The task's limits (``global_rate_limit`` and ``rate_limits``) are ``RateLimit`` objects
charged all-or-nothing, each its own cost, as the last step of the start phase (so
nothing is charged when another feature makes the run wait).

Over the limit, the same script reserves the run's own slot: the earliest time every
limit admits it (GCRA: every limit's TAT moves as if the run arrived then; windows: the
first window with room; the log: the first time after its newest unit with room). The
run is deferred once, to that slot, carrying the reservation in its header
(``rate_limit_reservation``: the slot and what each key was charged, and
``rate_limit_keys``: the keys, for a revoke, which has no arguments), and the server
keeps a record of it under the task id. When it comes back the start step admits it
without a new charge and deletes the record, so a reservation is used once (a copy that
comes back early is deferred to the slot again, charged nothing). A reservation that
is never used (a revoke, an expiry, a failure before the slot) is given back by the
final outcome where the algorithm allows it (``ratelimit_give_back.lua``).

A slot further than ``rate_limit_max_delay`` seconds away (minus the delay already
spent, summed in the header: no worker clock is compared) is not reserved and the task
fails with ``RateLimitExceeded``. A deferral holds no worker slot and does not use up
``max_retries``. Eager runs never reserve: they cannot wait.

Limits read per-identity overrides (``celery_kv.celery.limits``, ``celery kv limits
set``) and throttles (``self.kv_throttle``, ``raise Throttled``) in the same script.

Cluster: one script charges every limit of a task, so they share one hash tag, their
scope: the task name, or for a task that names a shared limit, that name (a shared
limit's state is one per name, whichever task charges it), or an explicit ``scope``.
Two different scopes on one task are refused where the task is defined.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ... import signals
from ...errors import CoordinationUnavailable, RateLimitExceeded, Throttled
from ...primitives._arguments import short, text, to_ms
from ...primitives.ratelimit import ALGORITHMS, Decision, RateLimit, parse_rate
from ...primitives.ratelimit.limiter import charge_call, decision_of
from ...store import Step, identity
from ..context import Context, Enqueue, Run
from ..keys import KeySpec
from ..options import Option, TaskDefinition, Where, choice, key_spec, seconds
from .base import Feature, Outcome, Wait

Cost = int | Callable[..., Any]
RESERVATION = "rate_limit_reservation"  # header mark: "slot_us mark1 amount1 ..."
KEYS = "rate_limit_keys"  # header mark: the state keys the reservation charged
_PENDING = "rate_limit:pending"  # run.state: a reservation taken by this run, not yet published
_ENTRY_KEYS = ("rate", "key", "name", "scope", "cost", "burst")


def _rates(value: Any, where: Where) -> tuple[str, ...]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"{where(value)} names no rate")
    for item in items:
        try:
            parse_rate(item)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where(value)}: {exc}") from None
    return tuple(str(item) for item in items)


def _cost(value: Any, where: Where) -> Cost:
    if callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where(value)} must be an int >= 1, or a callable taking the task's "
                         "arguments and returning one")
    return value


def _label(value: Any, what: Where) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what(value)} must be a non-empty string")
    return value


def _entries(value: Any, where: Where) -> tuple[dict[str, Any], ...]:
    """``rate_limits``: a list of dicts, each a rate and optionally its key, name, scope,
    cost and burst; checked here (keys against the signature), built per task."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where(value)} must be a non-empty list of dicts such as "
                         "{'rate': '10/s', 'key': '{tenant_id}'}")
    checked = []
    for i, entry in enumerate(value):
        at = Where(f"{where.text}[{i}]", where.task)
        if not isinstance(entry, Mapping):
            raise TypeError(f"{at(entry)} must be a dict with a 'rate'")
        unknown = sorted(set(entry) - set(_ENTRY_KEYS), key=str)
        if unknown:
            raise ValueError(f"{at(dict(entry))}: unknown field(s) {unknown}; "
                             f"known: {list(_ENTRY_KEYS)}")
        if "rate" not in entry:
            raise ValueError(f"{at(dict(entry))} has no 'rate'")
        item = dict(entry)
        item["rate"] = _rates(entry["rate"], Where(f"{at.text}.rate", where.task))[0]
        if entry.get("key") is not None:
            item["key"] = key_spec(entry["key"], Where(f"{at.text}.key", where.task))
        for field in ("name", "scope"):
            if entry.get(field) is not None:
                item[field] = _label(entry[field], Where(f"{at.text}.{field}", where.task))
        if entry.get("cost") is not None:
            item["cost"] = _cost(entry["cost"], Where(f"{at.text}.cost", where.task))
        checked.append(item)
    return tuple(checked)


RATES = Option("global_rate_limit", "`\"100/m\"`, or a list of rates charged together",
               _rates)
KEY = Option("rate_limit_key", "per-key limits (`\"{tenant_id}\"`); default: task-wide",
             key_spec)
LIMITS = Option("rate_limits", "several limits charged together, each `{\"rate\": \"10/s\"}` "
                "with optional `key`, `name` (state shared by every task naming it), `scope`, "
                "`cost`, `burst`", _entries)
COST = Option("rate_limit_cost", "units one run takes: an int >= 1, or a callable of the "
              "task's arguments", _cost, 1)
ALGORITHM = Option("rate_limit_algorithm", "`gcra`, `sliding_log`, `sliding_window` or "
                   "`fixed_window`", choice(*ALGORITHMS), "gcra", "kv_rate_limit_algorithm")
MAX_DELAY = Option("rate_limit_max_delay", "total rate-limit delay before the task fails "
                   "with `RateLimitExceeded`", seconds, 3600.0, "kv_rate_limit_max_delay")


def jitter(retry_after: float, denials: int) -> float:
    """Jitter added to ``retry_after`` when no slot could be reserved: its window widens
    with each denial, so waiting tasks do not all come back for every free slot."""
    return random.uniform(0, min(retry_after, 1.0) * min(2.0**denials, 32.0))


@dataclass(frozen=True)
class LimitSpec:
    """One limit of a task, as declared: its rate, identity key, cost and state's name."""

    rate: str
    name: str  # the RateLimit's name: a shared name, or one of the task's own
    key: KeySpec | None
    cost: Cost
    burst: int | None
    capacity: int


class RateLimitFeature(Feature):
    name = "rate_limit"
    counts = {
        "task_rate_limit_start": "ok>admitted;deny:2=early>deferred;deny:3?>denied,deferred;"
                                 "deny>denied",
    }
    options = (RATES, KEY, LIMITS, COST, ALGORITHM, MAX_DELAY)
    header_fields = ("rate_limited_for", "rate_limit_denials", RESERVATION, KEYS)
    final_phase = False  # a hit holds nothing: no final-outcome call, no completion mark

    def __init__(self, task: TaskDefinition, rates: tuple[str, ...],
                 entries: tuple[dict[str, Any], ...]) -> None:
        self.task_name = task.name
        self.rates = rates
        self.key: KeySpec | None = task.get(KEY)
        self.algorithm: str = task.get(ALGORITHM)
        self.max_delay: float = task.get(MAX_DELAY)
        self.max_defer = self.max_delay
        self.scope = self._scope(entries)
        self.specs = self._specs(task, task.get(COST), entries)
        self._limits: tuple[Any, list[RateLimit]] | None = None

    @classmethod
    def configure(cls, task: TaskDefinition) -> RateLimitFeature | None:
        rates = task.get(RATES) or ()
        entries = task.get(LIMITS) or ()
        on = bool(rates or entries)
        task.needs(KEY, bool(rates), "global_rate_limit")
        task.needs(COST, on, "global_rate_limit or rate_limits")
        return cls(task, rates, entries) if on else None

    # -- definition --------------------------------------------------------------------

    def _scope(self, entries: tuple[dict[str, Any], ...]) -> str:
        """The one hash tag of the task's limits (see the module docstring)."""
        tags: dict[str, str] = {}
        for entry in entries:
            tag = entry.get("scope") or entry.get("name")
            if tag is not None:
                tags.setdefault(tag, entry.get("name") or tag)
        if len(tags) > 1:
            raise ValueError(
                f"task {self.task_name!r}: option rate_limits: limits {sorted(tags.values())} "
                f"live under different scopes {sorted(tags)}: one script charges a task's "
                "limits, so on Redis Cluster they must share one hash tag; give them the same "
                "'scope' (every task naming them must then give it too) or split the task")
        return next(iter(tags), self.task_name)

    def _specs(self, task: TaskDefinition, cost: Cost,
               entries: tuple[dict[str, Any], ...]) -> tuple[LimitSpec, ...]:
        own = "" if self.scope == self.task_name else f"{self.task_name}:"
        kind = "global" if self.key is None else "per-key"
        made = [(rate, f"{own}{kind}-{i}" if len(self.rates) > 1 else own + kind, self.key,
                 cost, None) for i, rate in enumerate(self.rates)]
        made += [(e["rate"], e.get("name") or f"{own}limit-{i}", e.get("key"),
                  e.get("cost") or cost, e.get("burst")) for i, e in enumerate(entries)]
        names = [name for _, name, *_ in made]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.task_name!r}: option rate_limits names one limit "
                             f"twice: {names}")
        specs = []
        for rate, name, key, each, burst in made:
            where = f"task {self.task_name!r}: rate limit {name!r} ({rate})"
            try:
                capacity = ALGORITHMS[self.algorithm](parse_rate(rate), burst).capacity
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{where}: {exc}") from None
            if isinstance(each, int) and each > capacity:
                raise ValueError(f"{where}: rate_limit_cost={each!r} exceeds its capacity "
                                 f"{capacity}: it could never be admitted")
            specs.append(LimitSpec(rate, name, key, each, burst, capacity))
        return tuple(specs)

    # -- per call ----------------------------------------------------------------------

    def limits(self, kv: Any) -> list[RateLimit]:
        """One limit per spec, all in the task's scope, charged together (cached per KV)."""
        cached = self._limits
        if cached is None or cached[0] is not kv:
            built = [RateLimit(kv.store, spec.rate, self.algorithm, spec.burst,
                               name=spec.name, scope=self.scope, dynamic=True)
                     for spec in self.specs]
            cached = self._limits = (kv, built)
        return cached[1]

    def identities(self, ctx: Context) -> list[str]:
        return [spec.key.render(ctx.call) if spec.key is not None else ""
                for spec in self.specs]

    def describe(self, ctx: Context) -> dict[str, Any]:
        """The first limit's identity: the key its signals name ("" for a task-wide one)."""
        return {"rate_limit": self.identities(ctx)[0]}

    def _pairs(self, ctx: Context) -> list[tuple[RateLimit, str]]:
        return list(zip(self.limits(ctx.kv), self.identities(ctx), strict=True))

    def costs(self, ctx: Context) -> list[int]:
        """Each limit's cost for this call; a callable's result is checked here."""
        out = []
        called: dict[int, Any] = {}  # one call per callable, however many limits share it
        for spec in self.specs:
            cost = spec.cost
            if callable(cost):
                if id(cost) not in called:
                    called[id(cost)] = cost(*ctx.args, **ctx.kwargs)
                cost = called[id(cost)]
                if (isinstance(cost, bool) or not isinstance(cost, int)
                        or not 1 <= cost <= spec.capacity):
                    raise ValueError(
                        f"task {self.task_name!r}: rate_limit_cost for limit {spec.name!r} "
                        f"returned {short(cost)} for arguments {short(ctx.args)}, "
                        f"{short(ctx.kwargs)}: it must be an int from 1 to the limit's "
                        f"capacity {spec.capacity}")
            out.append(cost)
        return out

    def fill_header(self, ctx: Context) -> None:
        if isinstance(ctx, Enqueue) and any(callable(s.cost) for s in self.specs):
            self.costs(ctx)  # a bad cost fails apply_async, before anything is sent

    def record_key(self, ctx: Context) -> str:
        """The server's record of a reservation taken by this task id (used once)."""
        return ctx.kv.store.keys.key("rl", self.scope, "!r", identity(ctx.task_id))

    # -- execution ---------------------------------------------------------------------

    def start(self, run: Run) -> Step:
        pairs = self._pairs(run)
        run.state[self.name] = pairs
        held = str(run.mark(RESERVATION, "") or "")
        spent = float(run.mark("rate_limited_for", 0.0))
        horizon = 0.0 if run.eager else max(self.max_delay - spent - 0.001, 0.0)
        script, keys, args = charge_call(pairs, self.costs(run),
                                         "hit" if run.eager else "reserve",
                                         round(horizon * 1_000_000))
        keep = to_ms(max(self.max_delay, 60.0))
        return Step("task_rate_limit_start", (*keys, self.record_key(run)),
                    (script, held, keep, *args))

    def started(self, run: Run, reply: list[Any]) -> None:
        if text(reply[1]) == "reserved":  # admitted on its reservation: counted at its slot
            slot = int(reply[2]) / 1_000_000
            first = run.state[self.name][0][0]
            run.request.kv_rate_limit = Decision(True, first.capacity, 0, 0.0, 0.0, None, slot)
            return
        run.request.kv_rate_limit = decision_of(run.state[self.name], reply[1])

    def denied(self, run: Run, reply: list[Any]) -> Wait:
        pairs = run.state[self.name]
        key = pairs[0][1]
        if text(reply[1]) == "early":  # back before its slot: wait again, charged nothing
            left = int(reply[2]) / 1_000_000
            return Wait(RateLimitExceeded(key, left, self.task_name), countdown=left)
        decision = decision_of(pairs, reply[1])
        run.request.kv_rate_limit = decision
        denials = int(run.mark("rate_limit_denials", 0))
        over = RateLimitExceeded(key, decision.retry_after, self.task_name, decision.denied_by)
        marks: dict[str, Any] = {"rate_limit_denials": denials + 1, RESERVATION: "",
                                 KEYS: None}
        if len(reply) > 2:  # a slot was reserved: come back exactly then
            token = text(reply[2])
            run.state[_PENDING] = token
            countdown = max(int(token.split()[0]) / 1_000_000 - (decision.at or 0.0), 0.0)
            marks[RESERVATION] = token
            marks[KEYS] = [limit.redis_key(who) for limit, who in pairs]
        else:
            countdown = decision.retry_after + jitter(decision.retry_after, denials)
        signals.emit(signals.task_rate_limited, run.task, task_id=run.task_id, key=key,
                     limit=decision.denied_by, retry_after=decision.retry_after,
                     countdown=countdown, reserved=bool(marks[RESERVATION]))
        return Wait(over, countdown=countdown, budget="rate_limited_for",
                    max_total=self.max_delay, marks=marks)

    def finish(self, run: Run, outcome: Outcome, revoke: str = "") -> Step | None:
        """Give back a reservation this run will not use: one it took and could not
        publish, or the one its message carries when it ends without running."""
        token, keys = run.state.get(_PENDING), None
        if token is None and self.name not in run.held:
            # a revoke has the message's header but not its arguments: the keys are there
            token, keys = run.header.get(RESERVATION), run.header.get(KEYS)
        if not token:
            return None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            try:
                keys = [limit.redis_key(who) for limit, who in self._pairs(run)]
            except (TypeError, ValueError):
                return None  # no keys: the record lapses, and the slot is not given back
        return Step("task_rate_limit_give_back", (*keys, self.record_key(run)),
                    (self.algorithm, str(token)))

    # -- throttles ---------------------------------------------------------------------

    def limit_named(self, run: Context, name: str | int | None) -> tuple[RateLimit, str]:
        """The limit called ``name`` (or at that index; default: the first) and the
        identity this call charges it for."""
        pairs = self._pairs(run)
        if name is None:
            return pairs[0]
        if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(pairs):
            return pairs[name]
        for limit, who in pairs:
            if limit.name == name:
                return limit, who
        raise ValueError(f"task {self.task_name!r} has no rate limit named {name!r}; "
                         f"its limits: {[limit.name for limit, _ in pairs]}")

    def throttle(self, run: Context, retry_after: float, name: str | int | None = None
                 ) -> float:
        """No admission of the named limit (default: the first) for this run's identity
        before ``retry_after`` seconds from now, on every worker."""
        limit, who = self.limit_named(run, name)
        return limit.throttle(who, retry_after)

    def throttled(self, run: Run, exc: Throttled) -> Wait:
        """The body raised ``Throttled``: throttle the limit and defer the run by
        ``retry_after`` (counted in the rate-limit delay budget, not in max_retries)."""
        # unreachable Redis: the other workers are not told; this run still waits
        with contextlib.suppress(CoordinationUnavailable):
            self.throttle(run, exc.retry_after, exc.limit)
        key = self.limit_named(run, exc.limit)[1]
        denials = int(run.mark("rate_limit_denials", 0))
        signals.emit(signals.task_rate_limited, run.task, task_id=run.task_id, key=key,
                     limit=exc.limit, retry_after=exc.retry_after, countdown=exc.retry_after,
                     reserved=False)
        over = RateLimitExceeded(key, exc.retry_after, self.task_name, exc.limit)
        return Wait(over, countdown=exc.retry_after, budget="rate_limited_for",
                    max_total=self.max_delay,
                    marks={"rate_limit_denials": denials + 1, RESERVATION: "", KEYS: None})
