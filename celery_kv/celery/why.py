"""``explain``: why a task id is not running, read from Redis and the result backend.

An operator has a task id (a caller got it back, a log names it) and asks what holds it
back. The answer reads, without KEYS:

1. where the task's message is: the delay store (a deferral: a busy key, a rate-limit
   slot, a debounce timer; one HSCAN of its bodies, O(deferred messages)), the parked
   waiters of the app's concurrency pools (their holders and messages, O(pool size)),
   and the result backend (its state; with ``result_extended``, the task's name and
   arguments);
2. the rate-limit reservation records of the app's rate-limited tasks (one GET each:
   ``rl:{scope}:!r:<task id>``);
3. when neither names the task and its arguments: a SCAN of the prefix for the lock and
   burst hashes it owns (O(keys under the prefix): an operator command, it needs
   ``+scan`` and costs a pass over a big keyspace);
4. then the task's own keys, computed from its name and arguments through its policy
   (what ``KVTask.kv_keys`` computes), each read directly: the holder, its TTL and
   fence, a pool's holders and the waiter's place in line, the rate limit's reservation
   or ``retry_after``, the burst's due time.

The verdict names the feature that holds the task back, the first that applies of:
debounced, waiting for a concurrency slot, rate limited, blocked by a singleton or an
idempotency key, deferred, running, queued, finished.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from celery import states

from ..kv import KV
from ..primitives._arguments import text
from ..primitives.fair_pool import FairPool, key_id, key_of
from ..store import Store, codec, identity, is_cluster
from ..store.admin import identity_of, primaries, scan
from ..store.bursts import Burst, list_bursts, read_burst
from .context import HEADER, Context
from .delays import delay_store, namespace_of
from .keys import RUN_MARK, as_mapping, task_id_of

MAX_ID = 255  # Celery ids are uuid4 (36 characters); anything longer is not an id


class UnknownTask(LookupError):
    """The id is nowhere in Redis and the result backend knows nothing of it."""


def check_task_id(task_id: Any) -> str:
    """A task id as Celery makes them: non-empty, printable, no whitespace, not huge."""
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("a task id must be a non-empty string")
    if len(task_id) > MAX_ID:
        raise ValueError(f"task id {task_id[:40]!r}... is {len(task_id)} characters long "
                         f"(at most {MAX_ID})")
    if not task_id.isprintable() or any(c.isspace() for c in task_id):
        raise ValueError(f"task id {task_id!r} holds whitespace or control characters")
    return task_id


@dataclass(frozen=True)
class KeyRow:
    """One key of the task: what it is, who holds it, for how long, its fence."""

    feature: str
    key: str
    state: str
    holder: str | None = None  # a task id (or a grant: 'grant:<ticket>')
    ttl: float | None = None  # seconds left (a lease, a due time, a reservation's slot)
    fence: int | None = None
    ours: bool = False  # held by (or describing) this task id


@dataclass(frozen=True)
class Explanation:
    """The answer to 'why is this task not running?'."""

    task_id: str
    task_name: str | None
    cause: str  # debounce, concurrency, rate_limit, singleton, idempotency, deferred,
    #             running, queued, finished, backend
    verdict: str  # one line
    holder: str | None = None
    backend_state: str | None = None
    deferred_in: float | None = None  # seconds until the delay store publishes it again
    found_in: list[str] = field(default_factory=list)
    keys: list[KeyRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Message:
    """What is known of the task's call: its name, arguments and celery-kv header."""

    name: str | None = None
    args: Any = None
    kwargs: Any = None
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.name is not None and self.args is not None

    def take(self, name: Any, args: Any, kwargs: Any, header: Any = None) -> None:
        if self.name is None and isinstance(name, str):
            self.name = name
        if self.args is None and isinstance(args, (list, tuple)):
            self.args = list(args)
            self.kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
        if not self.header and header:
            self.header = dict(as_mapping(header))


def _now_ms(client: Any) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def _node_of(store: Store, key: str) -> Any:
    """The client to run a one-slot pipeline on (a cluster's node that holds ``key``)."""
    client = store.client
    if is_cluster(client):
        return client.get_redis_connection(client.get_node_from_key(key))
    return client


def _snapshot(store: Store, slot_key: str, build: Any, what: str) -> list[Any]:
    """TIME and ``build``'s reads of one slot's keys, as one MULTI (one consistent view)."""
    node = _node_of(store, slot_key)

    def read(_client: Any) -> list[Any]:
        pipe = node.pipeline(transaction=True)
        pipe.time()
        build(pipe)
        return list(pipe.execute())

    return store.command(what, read, retry_safe=True)


class _Why:
    """One explanation: the lookups, then the task's keys, then the verdict."""

    def __init__(self, app: Any, kv: KV, task_id: str, task_name: str | None) -> None:
        self.app = app
        self.kv = kv
        self.store = kv.store
        self.task_id = task_id
        self.only = task_name
        self.message = _Message(name=task_name)
        self.found_in: list[str] = []
        self.rows: list[KeyRow] = []
        self.notes: list[str] = []
        self.deferred_in: float | None = None
        self.waiter: dict[str, Any] | None = None
        self.reservations: list[tuple[str, float]] = []  # (scope, slot in seconds)
        self.backend_state: str | None = None
        self.retry_afters: list[tuple[str, float]] = []
        self.burst: Burst | None = None
        self.rate_identity: str | None = None

    # -- the tasks of the app --------------------------------------------------------

    def tasks(self) -> Iterator[Any]:
        """The app's coordinated tasks (or the one named by ``--task``)."""
        for name, task in sorted(self.app.tasks.items()):
            policy = getattr(task, "_kv_policy", None)
            if policy is None or not policy.coordinated:
                continue
            if self.only is not None and name != self.only:
                continue
            yield task

    # -- where the message is ----------------------------------------------------------

    def from_delay_store(self) -> None:
        try:
            store = delay_store(self.kv, namespace_of(self.app))
        except Exception as exc:  # an app without celery-kv settings: no delay store known
            self.notes.append(f"delay store not read: {exc}")
            return
        needle = self.task_id.encode()

        def find(client: Any) -> tuple[str, bytes] | None:
            for entry, raw in client.hscan_iter(store.bodies_key, count=500):
                raw_bytes = raw if isinstance(raw, bytes) else str(raw).encode()
                if needle in raw_bytes:
                    body = codec.loads(raw_bytes.decode("utf-8", "replace"))
                    options = as_mapping(as_mapping(body).get("options"))
                    if options.get("task_id") == self.task_id:
                        return text(entry), raw_bytes
            return None

        found = self.store.command("why: delay store", find, retry_safe=True)
        if found is None:
            return
        entry, raw = found
        body = as_mapping(codec.loads(raw.decode("utf-8", "replace")))
        options = as_mapping(body.get("options"))
        header = as_mapping(as_mapping(options.get("headers")).get(HEADER))
        self.message.take(body.get("task"), body.get("args"), body.get("kwargs"), header)
        now, due = _snapshot(self.store, store.due_key,
                             lambda p: p.zscore(store.due_key, entry), "why: due")
        if due is not None:
            self.deferred_in = (float(due) - (int(now[0]) * 1000 + int(now[1]) // 1000)) / 1000
        self.found_in.append("delay store")

    def from_pools(self) -> None:
        """A parked waiter (its message) or a running holder in a concurrency pool."""
        needle = self.task_id.encode()
        mark = f"|{self.task_id}{RUN_MARK}".encode()
        for task in self.tasks():
            if task._kv_policy.feature("concurrency") is None:
                continue
            pool = FairPool(self.store, task.name)

            def find(client: Any, pool: FairPool = pool) -> tuple[Any, Any]:
                for member, score in client.zscan_iter(pool.keys[0], count=500):
                    if mark in _raw(member):
                        return (text(member), float(score)), None
                for _ticket, raw in client.hscan_iter(pool.keys[3], count=500):
                    raw_bytes = _raw(raw)
                    if needle in raw_bytes:
                        body = _waiting_body(raw_bytes)
                        if as_mapping(body.get("options")).get("task_id") == self.task_id:
                            return None, body
                return None, None

            holding, body = self.store.command("why: pool", find, retry_safe=True)
            if holding is not None:
                self.message.take(task.name, None, None)
                self.found_in.append(f"concurrency pool of {task.name}")
                self._holder_row(pool, *holding)
                return
            if body is not None:
                options = as_mapping(body.get("options"))
                header = as_mapping(as_mapping(options.get("headers")).get(HEADER))
                self.message.take(body.get("task"), body.get("args"), body.get("kwargs"),
                                  header)
                self.found_in.append(f"concurrency waiters of {task.name}")
                return

    def _holder_row(self, pool: FairPool, member: str, lease_end_ms: float) -> None:
        """This id's slot in a pool, found without its arguments."""
        (now,) = _snapshot(self.store, pool.keys[0], lambda p: None, "why: time")
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        kid = member.partition("|")[0]
        shown = f"{pool.keys[0].rsplit(':', 1)[0]} [{key_of(kid)!r}]"
        self.rows.append(KeyRow("concurrency", shown, "running", self.task_id,
                                (lease_end_ms - now_ms) / 1000.0, None, True))

    def from_reservations(self) -> None:
        """The reservation record a rate-limited task id keeps until its slot."""
        for task in self.tasks():
            feature = task._kv_policy.feature("rate_limit")
            if feature is None:
                continue
            record = self.store.keys.key("rl", feature.scope, "!r", identity(self.task_id))
            now, value = _snapshot(self.store, record, lambda p, r=record: p.get(r),
                                   "why: reservation")
            if value is None:
                continue
            slot_us = int(text(value).split()[0])
            now_us = int(now[0]) * 1_000_000 + int(now[1])
            self.reservations.append((feature.scope, (slot_us - now_us) / 1_000_000))
            self.message.take(task.name, None, None)
            self.found_in.append(f"rate-limit reservation of {task.name}")

    def from_backend(self) -> None:
        try:
            result = self.app.AsyncResult(self.task_id)
            self.backend_state = str(result.state)
            if self.backend_state != states.PENDING:
                self.found_in.append("result backend")
            meta = result._get_task_meta() or {}
        except Exception as exc:  # no backend configured, or it is out of reach
            if type(self.app.backend).__name__ == "DisabledBackend":
                self.notes.append("no result backend is configured: a finished task is "
                                  "not told from an unknown one")
                return
            self.notes.append(f"result backend not read: {type(exc).__name__}: {exc}"[:200])
            return
        self.message.take(meta.get("name"), meta.get("args"), meta.get("kwargs"))

    def from_scan(self) -> None:
        """SCAN the prefix's locks and bursts for one this id owns (operator cost)."""
        pattern = self.store.keys.pattern("lock")
        for _name, node in primaries(self.store.client):
            batches = self.store.command("why: lock scan", partial(_scan_on, node, pattern),
                                         retry_safe=True)
            for key in (k for batch in batches for k in batch if k.endswith("}")):
                owner = self._lock_owner(key)
                if owner is not None and task_id_of(owner) == self.task_id:
                    name = identity_of(key)
                    if isinstance(name, tuple) and len(name) == 2:
                        self.message.take(name[0], None, None)
                    self.rows.append(self._lock_row(key))
                    self.found_in.append("a lock (scan)")
        for burst in list_bursts(self.store):
            ids = {b.task_id for b in (burst.pending, burst.running) if b is not None}
            if self.task_id in ids:
                self.message.take(burst.task_name, None, None)
                self.burst = burst
                self.found_in.append("a debounce burst (scan)")

    # -- the task's keys ---------------------------------------------------------------

    def read_keys(self) -> None:
        task = self.app.tasks.get(self.message.name) if self.message.name else None
        policy = getattr(task, "_kv_policy", None)
        if policy is None or self.message.args is None:
            if self.burst is not None:
                self.rows.extend(_burst_rows(self.burst, self.task_id))
            if self.message.name is not None and policy is not None:
                self.notes.append("its arguments are not known (its message is in the broker "
                                  "or a worker; set result_extended=True to read them from "
                                  "the result backend): only the keys it holds are shown")
            return
        ctx = Context(task, self.task_id, self.message.args, self.message.kwargs,
                      dict(self.message.header))
        ctx.__dict__["kv"] = self.kv  # the target's Redis and prefix (--url, --prefix)
        try:
            ctx.fill_header()
        except (TypeError, ValueError) as exc:
            self.notes.append(f"keys not computed: {exc}"[:300])
            if self.burst is not None:
                self.rows.extend(_burst_rows(self.burst, self.task_id))
            return
        seen = {row.key for row in self.rows}
        for feature in policy.features:
            reader = getattr(self, f"_read_{feature.name}", None)
            if reader is not None:
                self.rows.extend(r for r in reader(feature, ctx) if r.key not in seen)
        if self.burst is not None and not any(r.feature == "debounce" for r in self.rows):
            self.rows.extend(_burst_rows(self.burst, self.task_id))

    def _lock_owner(self, key: str) -> str | None:
        try:
            reply = self.store.run("lock_info", [key])
        except Exception:  # not a lock hash: not ours to explain
            return None
        return text(reply[0]) if reply else None

    def _lock_row(self, key: str) -> KeyRow:
        reply = self.store.run("lock_info", [key])
        if not reply:
            return KeyRow("singleton", key, "free")
        owner, fence, pttl = text(reply[0]), text(reply[1]), int(reply[2])
        holder = task_id_of(owner)
        return KeyRow("singleton", key, "running" if RUN_MARK in owner else "queued",
                      holder, pttl / 1000.0 if pttl >= 0 else None,
                      int(fence) if fence.lstrip("-").isdigit() else None,
                      holder == self.task_id)

    def _read_singleton(self, feature: Any, ctx: Context) -> list[KeyRow]:
        key = self.store.keys.key("lock", (feature.task_name, ctx.header["singleton_key"]))
        return [self._lock_row(key)]

    def _read_debounce(self, feature: Any, ctx: Context) -> list[KeyRow]:
        burst = read_burst(self.store, feature.task_name, ctx.header["debounce_key"])
        if burst is None:
            return [KeyRow("debounce", self.store.keys.key(
                "burst", (feature.task_name, ctx.header["debounce_key"])), "idle")]
        self.burst = burst
        return _burst_rows(burst, self.task_id)

    def _read_idempotency(self, feature: Any, ctx: Context) -> list[KeyRow]:
        key = ctx.header["idempotency_key"]
        idem = feature.primitive(self.kv, ctx.policy.namespace)
        state = idem.state(key)
        redis_key = self.store.keys.key("idem", (ctx.policy.namespace, key))
        holder = task_id_of(state.owner)
        ttl = state.lease_left if state.status == "in_progress" else state.ttl_left
        if state.status == "in_progress" and state.owner and RUN_MARK not in state.owner:
            shown = "claimed (queued)"
        else:
            shown = state.status.replace("_", " ")
        return [KeyRow("idempotency", redis_key, shown, holder, ttl, None,
                       holder == self.task_id)]

    def _read_concurrency(self, feature: Any, ctx: Context) -> list[KeyRow]:
        slot_key = "" if feature.key is None else feature.key.render(ctx.call)
        kid = key_id(slot_key)
        pool = FairPool(self.store, feature.task_name)
        holders_key, waiters_key, messages_key = pool.keys[0], pool.keys[2], pool.keys[3]
        now, holders, waiters = _snapshot(self.store, holders_key, lambda p: (
            p.zrange(holders_key, 0, -1, withscores=True),
            p.zrangebylex(waiters_key, f"[{kid}|", f"({kid}}}")), "why: pool")
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        shown = f"{pool.keys[0].rsplit(':', 1)[0]} [{slot_key!r}]"
        rows: list[KeyRow] = []
        held: list[str] = []
        for member, score in holders:
            mine, _, token = text(member).partition("|")
            if mine != kid:
                continue
            grant = token.startswith("g:")
            holder = f"grant:{token[2:]}" if grant else task_id_of(token)
            held.append(holder or "?")
            rows.append(KeyRow("concurrency", shown, "granted" if grant else "running",
                               holder, (float(score) - now_ms) / 1000.0, None,
                               holder == self.task_id))
        tickets = [text(m).rsplit("|", 1)[-1] for m in waiters]
        bodies = self.store.command("why: waiters", lambda c: c.hmget(messages_key, tickets),
                                    retry_safe=True) if tickets else []
        for place, raw in enumerate(bodies, 1):
            body = _waiting_body(_raw(raw)) if raw is not None else {}
            if as_mapping(body.get("options")).get("task_id") == self.task_id:
                self.waiter = {"key": slot_key, "position": place, "waiting": len(tickets),
                               "held": held, "limit": feature.limit}
                rows.append(KeyRow("concurrency", shown, f"waiting {place} of {len(tickets)}",
                                   self.task_id, None, None, True))
        if not rows:
            rows.append(KeyRow("concurrency", shown, f"free (0/{feature.limit})"))
        return rows

    def _read_rate_limit(self, feature: Any, ctx: Context) -> list[KeyRow]:
        rows = []
        record = self.store.keys.key("rl", feature.scope, "!r", identity(self.task_id))
        slots = dict(self.reservations)
        for limit, who in zip(feature.limits(self.kv), feature.identities(ctx), strict=True):
            decision = limit.peek(who)
            if slots.get(feature.scope) is not None:
                state = f"reserved: slot in {slots[feature.scope]:.3f}s"
            elif decision.allowed:
                state = f"admits ({decision.remaining}/{decision.limit} left)"
            else:
                state = f"full: retry_after {decision.retry_after:.3f}s"
                self.retry_afters.append((who or limit.name, decision.retry_after))
            rows.append(KeyRow("rate_limit", limit.redis_key(who), state, None,
                               decision.reset_after, None, False))
        if feature.scope in slots:
            rows.append(KeyRow("rate_limit", record, "reservation", self.task_id,
                               slots[feature.scope], None, True))
        self.rate_identity = feature.identities(ctx)[0] or feature.specs[0].name
        return rows

    # -- the verdict -------------------------------------------------------------------

    def verdict(self) -> tuple[str, str, str | None]:
        """(cause, one line, holder)."""
        me = self.task_id
        burst = self.burst
        if burst is not None and burst.pending is not None and burst.pending.task_id == me:
            p = burst.pending
            wait = (f" (max wait {p.max_wait_in:.1f} s)" if p.max_wait_in is not None
                    else "")
            when = (f"fires in {p.due_in:.1f} s" if p.due_in >= 0
                    else f"overdue by {-p.due_in:.1f} s")
            after = ""
            if burst.running is not None:
                after = f", after run {burst.running.task_id} ({burst.running.status})"
            return ("debounce", f"debounced: burst {burst.key or burst.redis_key!r} {when}"
                    f"{wait}, {p.triggers} trigger{'s' if p.triggers != 1 else ''} absorbed"
                    f"{after}", burst.running.task_id if burst.running else None)
        if self.waiter is not None:
            w = self.waiter
            held = ", ".join(w["held"]) or "nobody (its grant is on its way)"
            return ("concurrency", f"waiting for a concurrency slot of {w['key']!r}: "
                    f"{len(w['held'])}/{w['limit']} held by {held}, position "
                    f"{w['position']} of {w['waiting']}", w["held"][0] if w["held"] else None)
        if self.reservations:
            scope, slot_in = self.reservations[0]
            name = (repr(self.rate_identity) if self.rate_identity is not None
                    else f"scope {scope!r}")
            return ("rate_limit", f"rate limited on {name}: reserved slot in "
                    f"{slot_in:.1f} s", None)
        deferred = "delay store" in self.found_in
        for row in self.rows:
            if row.feature in ("singleton", "idempotency") and row.holder and not row.ours \
                    and row.state not in ("free", "completed", "absent"):
                left = f", {row.ttl:.1f} s left" if row.ttl is not None else ""
                fence = f", fence {row.fence}" if row.fence is not None else ""
                return (row.feature, f"blocked by {row.feature} key {_name(row.key)!r}: held "
                        f"by {row.holder} ({row.state}{left}{fence})", row.holder)
        if self.retry_afters and deferred:
            who, retry = self.retry_afters[0]
            return ("rate_limit", f"rate limited on {who!r}: retry_after {retry:.1f} s",
                    None)
        if deferred:
            when = (f"in {self.deferred_in:.1f} s" if self.deferred_in is not None
                    and self.deferred_in >= 0 else "now (due)")
            return ("deferred", f"deferred: the delay store publishes it again {when}; "
                    "nothing holds it back now", None)
        ours = [r for r in self.rows if r.ours]
        running = [r for r in ours if r.state == "running"]
        if running or (burst and burst.running and burst.running.task_id == me):
            held = ", ".join(f"{r.feature} {_name(r.key)!r}"
                             + (f" (fence {r.fence})" if r.fence is not None else "")
                             for r in ours) or "its burst"
            return ("running", f"admitted: running, holds {held}", me)
        if ours:
            held = ", ".join(f"{r.feature} {_name(r.key)!r}" for r in ours)
            return ("queued", f"queued: holds {held}; its message waits in the broker for "
                    "a worker", me)
        state = self.backend_state
        if state in states.READY_STATES:
            return ("finished", f"finished: {state}", None)
        if state not in (None, states.PENDING):
            return ("backend", f"{state} in the result backend; nothing in Redis holds it "
                    "(its message is in the broker or a worker)", None)
        raise UnknownTask(f"no task with id {me} is known to celery-kv or the result backend "
                          "(a message still in the broker that holds no key looks the same)")


def _name(redis_key: str) -> str:
    """A key's readable name (the user's key inside the hash tag)."""
    found = identity_of(redis_key)
    if isinstance(found, tuple) and found:
        return str(found[-1])
    if isinstance(found, str | int):
        return str(found)
    return redis_key


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _waiting_body(raw: bytes) -> dict[str, Any]:
    """A parked waiter's record: ``<deadline>|<seq>|<grants>|<message JSON>``."""
    parts = raw.split(b"|", 3)
    try:
        return dict(as_mapping(json.loads(parts[3]))) if len(parts) == 4 else {}
    except ValueError:
        return {}


def _scan_on(node: Any, pattern: str, _client: Any) -> list[list[str]]:
    return list(scan(node, pattern))


def _burst_rows(burst: Burst, me: str) -> list[KeyRow]:
    rows = []
    if burst.pending is not None:
        p = burst.pending
        rows.append(KeyRow("debounce", burst.redis_key, f"pending ({p.triggers} triggers)",
                           p.task_id, p.due_in, None, p.task_id == me))
    if burst.running is not None:
        r = burst.running
        rows.append(KeyRow("debounce", burst.redis_key, r.status, r.task_id, r.lease_left,
                           r.fence, r.task_id == me))
    return rows


def explain(app: Any, kv: KV, task_id: str, task_name: str | None = None) -> Explanation:
    """Why ``task_id`` is not running: the feature that holds it back, and its keys.

    ``kv`` is where the keys live (the app's KV, or another URL/prefix); ``task_name``
    narrows the lookups to one task. Raises ``ValueError`` for a malformed id and
    ``UnknownTask`` when neither Redis nor the result backend knows the id.
    """
    check_task_id(task_id)
    if task_name is not None and task_name not in app.tasks:
        raise ValueError(f"no task named {task_name!r} in app {app.main!r}")
    why = _Why(app, kv, task_id, task_name)
    why.from_delay_store()
    if not why.message.complete:
        why.from_pools()
    why.from_reservations()
    why.from_backend()
    if not why.message.complete:
        why.from_scan()
    why.read_keys()
    cause, line, holder = why.verdict()
    return Explanation(task_id, why.message.name, cause, line, holder, why.backend_state,
                       why.deferred_in, why.found_in, why.rows, why.notes)


__all__ = ["Explanation", "KeyRow", "UnknownTask", "check_task_id", "explain"]
