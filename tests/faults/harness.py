"""The fault harness: two prefork workers, a few hundred tasks with every feature on, a
coordination Redis kept apart from the broker, and a ledger that is never faulted.

A ``Scenario`` owns one family of workers (``tests.celery.conftest.Worker``) whose
``kv_redis_url`` is the Redis under test (direct, through a ``CuttableProxy``, or a
Sentinel URL). Broker, result backend and ledger live on another ``redis-server`` that
no fault touches. The test sends a mixed stream of calls, injects its fault at a known
moment (``wait_moment``: so many bodies completed, a slow one running), lets it settle,
sends every idempotent call again (a client retrying after the fault), and reads the
ledger back into ``Figures``: tasks sent, ran once, ran twice, lost, keys left.

Debounced and keep-latest calls (``BURSTS``) come in bursts per group: their value is
whichever run covered them, so each is held to the README's rule instead of a fixed
value (``check_bursts``): the run it resolved to started after the call, with its ``i``
or a later one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from celery.states import READY_STATES

from celery_kv.celery.install import installed
from tests.celery.conftest import Env, Worker
from tests.conftest import wait_for
from tests.faults.tasks import (
    ALL_CONCURRENCY,
    ALL_RATE,
    CONCURRENCY,
    DEFERRED,
    RATE,
    ledger_key,
    register,
)

#: settings of every scenario: the library's retry deadline (5 s), short leases so that
#: a dead holder frees its keys within seconds, and the fault tasks in the workers
BASE_CONF: dict[str, Any] = {
    "kv_retry_deadline": 5.0,
    "kv_lock_ttl": 3.0,
    "kv_idempotency_lease": 3.0,
    "kv_wait_interval": 0.2,
    "imports": ["tests.faults.worker_tasks"],
}

#: calls per kind in the main stream; every idempotent one ("idem", "all") is sent again
MIX: dict[str, int] = {"idem": 100, "slow": 8, "single": 40, "conc": 30, "rate": 30,
                       "cached": 30, "all": 40, "slow_all": 4}
SLOW = 1.0  # seconds of a slow body: two are running when the fault comes
IDEMPOTENT = ("idem", "all")
BURSTS = ("debounce", "latest")  # a call's value is the run that covered it (check_bursts)
#: (group, first position in the stream, calls, stride): the calls of one burst are sent
#: ``stride`` positions apart (at 60 calls/s: 0.13 s for debounce, under its 0.3 s, so the
#: burst holds together; the 10-call one spans 1.2 s, past its maximum wait of 1 s)
DEBOUNCE_BURSTS = ((0, 20, 5, 8), (1, 60, 10, 8), (2, 120, 5, 8), (0, 180, 5, 8),
                   (1, 250, 5, 8))
LATEST_BURSTS = ((0, 10, 5, 3), (1, 80, 5, 3), (2, 115, 5, 3), (0, 160, 5, 3),
                 (1, 220, 5, 3), (2, 300, 5, 3))
SETTLE_TIMEOUT = 90.0


@dataclass(frozen=True)
class Call:
    """One ``apply_async`` the producer makes, and what its result must be."""

    kind: str
    task: str
    args: tuple[Any, ...]
    expected: Any
    unit: str | None = None  # the idempotency unit in the ledger; None: the task id
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sent:
    call: Call
    phase: str  # "main" or "again" (the client's retry after the fault)
    began: float  # time.monotonic() when apply_async was called
    began_at: float  # time.time() then: the ledger's clock (its server's TIME, this host)
    result: Any = None
    error: BaseException | None = None
    state: str = "PENDING"
    value: Any = None

    @property
    def unit(self) -> str | None:
        """What must have run: the idempotency unit, else the task id it got back."""
        if self.call.unit is not None:
            return self.call.unit
        return None if self.result is None else str(self.result.id)


@dataclass
class Figures:
    """What a scenario printed: the issue's figures, and the detail behind them."""

    scenario: str
    seconds: float = 0.0
    sent: int = 0
    refused: int = 0  # apply_async raised (a clear error to the caller)
    ran_once: int = 0
    ran_twice: int = 0  # units whose body completed more than once
    lost: int = 0
    failed: int = 0  # results that ended in FAILURE
    wrong: int = 0  # results that ended in SUCCESS with another value
    forgotten: int = 0  # burst calls answered by an older run: their burst was forgotten
    keys_left: int = 0
    no_ttl: int = 0
    twice: list[str] = field(default_factory=list)
    lost_detail: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    forgotten_detail: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    HEADERS = ("scenario", "sent", "ran once", "ran twice", "lost", "failed", "refused",
               "forgotten", "keys left", "no TTL", "seconds")

    def row(self) -> tuple[Any, ...]:
        return (self.scenario, self.sent, self.ran_once, self.ran_twice, self.lost,
                self.failed, self.refused, self.forgotten, self.keys_left, self.no_ttl,
                f"{self.seconds:.1f}")

    def table(self) -> str:
        return render([self])

    def detail(self) -> str:
        parts = [self.table()]
        for name in ("twice", "lost_detail", "failures", "refusals", "forgotten_detail",
                     "violations", "notes"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name} ({len(items)}): " + "; ".join(items[:8]))
        return "\n".join(parts)


def render(figures: list[Figures]) -> str:
    rows = [Figures.HEADERS, *(f.row() for f in figures)]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(Figures.HEADERS))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))
                     for r in rows)


def plan(tag: str, mix: dict[str, int] | None = None, seed: int = 7) -> list[Call]:
    """The main stream: every kind interleaved (a fixed shuffle), so a fault hits each;
    the slow calls go in pairs (an idempotent one, one with every feature) every 30 calls
    from the 60th, so that both are running at the moment of the fault; the bursts
    (``DEBOUNCE_BURSTS``, ``LATEST_BURSTS``) at their positions, spread over the stream."""
    mix = mix or MIX
    calls: list[Call] = []
    for i in range(mix.get("idem", 0)):
        calls.append(Call("idem", "f.idem", (tag, i), i * 2, f"idem:{i}",
                          {"idempotency_key": f"order-{i}"}))
    for i in range(mix.get("single", 0)):
        calls.append(Call("single", "f.single", (tag, i % 4, i), i))
    for i in range(mix.get("conc", 0)):
        calls.append(Call("conc", "f.conc", (tag, i), i))
    for i in range(mix.get("rate", 0)):
        calls.append(Call("rate", "f.rate", (tag, i), i))
    for i in range(mix.get("cached", 0)):
        x = i % 6
        calls.append(Call("cached", "f.cached", (tag, x), {"x": x, "square": x * x}))
    for i in range(mix.get("all", 0)):
        calls.append(Call("all", "f.all", (tag, i % 4, i), i + 1000, f"all:{i}",
                          {"idempotency_key": f"all-{i}"}))
    random.Random(seed).shuffle(calls)
    slow: list[list[Call]] = [[] for _ in range(max(mix.get("slow", 0),
                                                    mix.get("slow_all", 0)))]
    for k in range(mix.get("slow", 0)):
        i = 1000 + k
        slow[k].append(Call("idem", "f.idem", (tag, i, SLOW), i * 2, f"idem:{i}",
                            {"idempotency_key": f"order-{i}"}))
    for k in range(mix.get("slow_all", 0)):
        i = 1000 + k
        slow[k].append(Call("all", "f.all", (tag, k, i, SLOW), i + 1000, f"all:{i}",
                            {"idempotency_key": f"all-{i}"}))
    for k, pair in reversed(list(enumerate(slow))):
        calls[60 + 30 * k:60 + 30 * k] = pair
    placed = burst_calls(tag, "debounce", DEBOUNCE_BURSTS) + burst_calls(
        tag, "latest", LATEST_BURSTS)
    for position, call in sorted(placed, key=lambda pc: pc[0]):
        calls.insert(position, call)  # in increasing order: each lands at its position
    return calls


def burst_calls(tag: str, kind: str, bursts: tuple[tuple[int, int, int, int], ...]
                ) -> list[tuple[int, Call]]:
    """(position, call) of every call of ``bursts``; ``i`` grows in the order they are
    sent, so a later call of a group always carries a larger ``i``."""
    placed = sorted((first + n * stride, group) for group, first, count, stride in bursts
                    for n in range(count))
    assert len({p for p, _ in placed}) == len(placed), f"two {kind} calls at one position"
    return [(position, Call(kind, f"f.{kind}", (tag, group, i), None))
            for i, (position, group) in enumerate(placed)]


def parallel(*fns: Callable[[], Any]) -> list[Any]:
    with ThreadPoolExecutor(len(fns)) as pool:
        return [f.result() for f in [pool.submit(fn) for fn in fns]]


def start_workers(env: Env, count: int) -> list[Worker]:
    """``count`` workers started side by side; if one fails, the others are stopped."""
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(Worker, env) for _ in range(count)]
    started = [f.result() for f in futures if f.exception() is None]
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        for worker in started:
            worker.stop()
        raise failed[0]  # type: ignore[misc]
    return started


class Scenario:
    """Workers, a producer and the ledger of one fault scenario."""

    def __init__(self, name: str, infra_url: str, kv_url: str, coordination: redis.Redis,
                 conf: dict[str, Any] | None = None, workers: int = 2,
                 broker: str | None = None) -> None:
        self.name = name
        self.tag = "f" + uuid.uuid4().hex[:8]
        base = infra_url.rsplit("/", 1)[0]
        self.env = Env(broker=broker or f"{base}/1", backend=f"{base}/2", kv=kv_url,
                       fx=f"{base}/4", prefix="fault" + uuid.uuid4().hex[:6],
                       conf={**BASE_CONF, **(conf or {})})
        self.coordination = coordination  # a direct client, for the key checks
        self.ledger = redis.Redis.from_url(self.env.fx, decode_responses=True)
        self.app: Celery = self.env.app(f"fault-{name}")
        register(self.app, self.env.fx)
        self.sent: list[Sent] = []
        self._sent_lock = threading.Lock()
        self.started = self.started_producing = time.monotonic()
        self.workers = start_workers(self.env, workers)
        self.figures = Figures(name)
        self.forgotten: list[Sent] = []  # burst calls answered by an older run (measure)

    # -- producing -----------------------------------------------------------------------

    def send(self, call: Call, phase: str = "main") -> Sent:
        sent = Sent(call, phase, time.monotonic(), time.time())
        try:
            sent.result = self.app.tasks[call.task].apply_async(call.args, **call.options)
        except Exception as exc:
            sent.error = exc
        with self._sent_lock:
            self.sent.append(sent)
        return sent

    @contextlib.contextmanager
    def producing(self, calls: list[Call], per_second: float = 60.0) -> Iterator[None]:
        """Send ``calls`` at a steady pace from a thread while the body injects a fault;
        on exit, wait for the last send."""
        done = threading.Event()

        def produce() -> None:
            try:
                for i, call in enumerate(calls):
                    pause = self.started_producing + i / per_second - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)  # the pace of the stream, not a condition
                    self.send(call)
            finally:
                done.set()

        self.started_producing = time.monotonic()
        thread = threading.Thread(target=produce, name=f"producer-{self.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            thread.join(timeout=SETTLE_TIMEOUT)
            assert done.is_set(), "the producer did not finish sending"

    def send_again(self) -> None:
        """The client retries every idempotent call after the fault (same key, same
        arguments): each must be answered from the record, never run again. Waits for
        their results."""
        for call in {s.call.unit: s.call for s in self.sent
                     if s.call.kind in IDEMPOTENT and s.phase == "main"}.values():
            self.send(call, "again")
        self.settle("again")

    # -- waiting -------------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.ledger.lrange(ledger_key(self.tag, "run"), 0, -1)]

    def starts(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.ledger.lrange(ledger_key(self.tag, "start"), 0, -1)]

    def stored_before(self, at: float) -> set[str]:
        """Task ids deferred into the delay store before ``at`` (ledger time)."""
        entries = (json.loads(e) for e in self.ledger.lrange(DEFERRED, 0, -1))
        return {e["id"] for e in entries if e["at"] < at}

    def running(self) -> list[dict[str, Any]]:
        """Bodies started and not completed (yet, or ever)."""
        done = {e["id"] for e in self.runs()}
        return [e for e in self.starts() if e["id"] not in done]

    def wait_moment(self, runs: int = 80, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The known moment of a fault: ``runs`` bodies have completed, and a slow
        idempotent body and a slow body with every feature are running (they will end
        while the fault lasts). Returns the slow bodies running then."""
        key = ledger_key(self.tag, "run")

        def moment() -> list[dict[str, Any]]:
            if self.ledger.llen(key) < runs:
                return []
            slow = [e for e in self.running() if e["duration"] >= SLOW]
            return slow if {e["task"] for e in slow} >= {"f.idem", "f.all"} else []

        slow = wait_for(moment, timeout, f"{runs} completed bodies and two slow ones running")
        assert isinstance(slow, list)
        return slow

    def fault_at(self) -> None:
        """Note the moment of the fault: how far the stream and the bodies had got (a
        fault that hit before or after the stream would prove little)."""
        running = self.running()
        slow = [e["unit"] for e in running if e["duration"] >= SLOW]
        self.figures.notes.append(
            f"fault after {len(self.sent)} sends, {len(self.runs())} bodies done, "
            f"{len(running)} running (slow: {', '.join(slow) or 'none'})")

    def poll(self, phase: str | None = None) -> list[Sent]:
        """Refresh the state of every result not final yet (of ``phase``, or all);
        return those still open."""
        with self._sent_lock:
            pending = [s for s in self.sent if s.result is not None and s.state not in
                       READY_STATES and phase in (None, s.phase)]
        for sent in pending:
            state = sent.result.state
            if state in READY_STATES:
                sent.value = sent.result.result
                sent.state = state
        return [s for s in pending if s.state not in READY_STATES]

    def settle(self, phase: str = "main", timeout: float = SETTLE_TIMEOUT,
               may_be_lost: Callable[[], set[str]] | None = None, quiet: float = 15.0) -> None:
        """Wait until every result of ``phase`` is final (or ``timeout``: what is left is
        lost). With ``may_be_lost`` (task ids a fault may lose: deferrals and waiters kept
        in the coordination Redis when it lost its data), stop as soon as only such ids are
        open and no result became final for ``quiet`` seconds: waiting out the timeout
        would change nothing the checks assert."""
        deadline = time.monotonic() + timeout
        open_ids: set[str] = set()
        changed = time.monotonic()
        while time.monotonic() < deadline:
            now_open = {str(s.result.id) for s in self.poll(phase) if s.result is not None}
            if not now_open:
                return
            if now_open != open_ids:
                open_ids, changed = now_open, time.monotonic()
            elif (may_be_lost is not None and time.monotonic() - changed > quiet
                  and open_ids <= may_be_lost()):
                return
            time.sleep(0.2)

    def succeeded_units(self) -> set[str]:
        """Idempotent units whose result already says SUCCESS (their record is written)."""
        self.poll()
        return {str(s.call.unit) for s in self.sent
                if s.call.kind in IDEMPOTENT and s.state == "SUCCESS"}

    # -- reading the outcome -------------------------------------------------------------

    def keys(self) -> dict[str, int]:
        """Every coordination key under the prefix (SCAN), with its PTTL."""
        client = self.coordination
        found = sorted(client.scan_iter(match=f"{self.env.prefix}:*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in found:
            pipe.pttl(key)
        return dict(zip(found, pipe.execute(), strict=True))

    def contents(self) -> dict[str, str]:
        """Every key under the prefix with its value as text (to find a holder's token)."""
        out = {}
        client = self.coordination
        for key in self.keys():
            kind = client.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            value: Any = {
                "string": lambda k: client.get(k),
                "hash": lambda k: client.hgetall(k),
                "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                "list": lambda k: client.lrange(k, 0, -1),
                "set": lambda k: client.smembers(k),
            }.get(kind, lambda k: None)(key)
            out[key if isinstance(key, str) else key.decode()] = repr(value)
        return out

    def live_claims(self, tokens: set[str]) -> list[tuple[str, str]]:
        """(kind, detail) of each key where one of ``tokens`` (run tokens,
        ``<task id>#run:<nonce>``) still holds a live claim: a lock or cache lease that
        has not expired, a semaphore slot whose lease ends later than now, an idempotency
        record in progress (one whose lease lapsed reads as "unknown": a memory of the
        run, not a claim), a running burst whose lease has not lapsed. ``kind`` is the
        key's kind: lock, sem, idem, cache, burst."""
        client = self.coordination
        store = installed(self.app).kv.store
        sec, usec = client.time()
        now_ms = sec * 1000 + usec // 1000
        found = []
        for key, value in self.contents().items():
            mine = [t for t in tokens if t in value]
            if not mine:
                continue
            kind, what = key.split(":")[1], client.type(key)
            if what == "zset":
                scores = [client.zscore(key, t) for t in mine]
                if any(score is not None and score > now_ms for score in scores):
                    found.append((kind, f"{key}: slot of {mine}"))
            elif kind == "burst" and what == "hash":  # only its running lease is a claim
                token, deadline = client.hmget(key, ["rtok", "rdl"])
                if token in mine and deadline is not None and int(deadline) > now_ms:
                    found.append((kind, f"{key}: running burst of {token}"))
            elif kind == "idem":
                status, owner = (x.decode() if isinstance(x, bytes) else str(x)
                                 for x in store.run("idempotency_state", [key])[:2])
                if status == "p" and owner in mine:
                    found.append((kind, f"{key}: idempotency claim of {owner}"))
            else:
                found.append((kind, f"{key} ({what}, PTTL {client.pttl(key)} ms): {value}"))
        return found

    def measure(self, *, exact: bool = True, forgets: bool = False) -> Figures:
        """Read the ledger and the results into figures. ``exact``: also hold the ledger
        to no overlap, the concurrency limits and the rate limits (scenarios that lose
        coordination state on purpose pass False and only report them). ``forgets``: a
        burst call answered by an older run counts as forgotten (an empty restart or
        eviction forgot its burst: ``self.forgotten`` lists them for the test to
        explain), not as a violation."""
        f = self.figures
        f.seconds = time.monotonic() - self.started
        self.poll()
        runs = self.runs()
        by_unit: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in runs:
            by_unit[entry["unit"]].append(entry)
        f.sent = len(self.sent)
        for sent in self.sent:
            label = f"{sent.call.task}{list(sent.call.args[1:])} ({sent.phase})"
            if sent.error is not None:
                f.refused += 1
                f.refusals.append(f"{label}: {type(sent.error).__name__}: {sent.error}")
            elif sent.state not in READY_STATES:
                f.lost += 1
                f.lost_detail.append(f"{label} {sent.result.id}: never finished")
            elif sent.state != "SUCCESS":
                f.failed += 1
                f.failures.append(f"{label} {sent.result.id}: {sent.state} "
                                  f"{type(sent.value).__name__}: {sent.value}")
            elif sent.call.kind not in BURSTS and sent.value != sent.call.expected:
                f.wrong += 1
                f.failures.append(f"{label}: returned {sent.value!r}, not {sent.call.expected!r}")
        # a SUCCESS is a body that ran (or the replay of one): it must be in the ledger
        must_run = {s.unit for s in self.sent if s.state == "SUCCESS"
                    and s.call.kind not in ("cached", *BURSTS)}  # bursts: check_bursts
        for unit in sorted(u for u in must_run if u is not None and u not in by_unit):
            f.lost += 1
            f.lost_detail.append(f"{unit}: succeeded, but its body never completed")
        counted = [u for u in by_unit if not u.startswith("cached:")]
        f.ran_once = sum(1 for u in counted if len(by_unit[u]) == 1)
        twice = sorted(u for u in counted if len(by_unit[u]) > 1)
        f.ran_twice = len(twice)
        f.twice = [f"{u} x{len(by_unit[u])}" for u in twice]
        computes = sum(len(v) for u, v in by_unit.items() if u.startswith("cached:"))
        f.notes.append(f"cache computes: {computes} for 6 values")
        unmatched, older = check_bursts(self.sent, runs)
        f.lost += len(unmatched)
        f.lost_detail += unmatched
        self.forgotten = [sent for sent, _ in older]
        if forgets:
            f.forgotten = len(older)
            f.forgotten_detail = [why for _, why in older]
        else:
            f.violations += [why for _, why in older]
        triggers = {kind: sum(e["triggers"] for e in runs if e["task"] == f"f.{kind}")
                    for kind in BURSTS}
        calls = {kind: sum(1 for s in self.sent if s.call.kind == kind) for kind in BURSTS}
        f.notes.append("bursts: " + ", ".join(
            f"{calls[k]} {k} calls, {sum(1 for e in runs if e['task'] == f'f.{k}')} runs "
            f"covering {triggers[k]} triggers" for k in BURSTS))
        violations = check_ledger(runs)
        if exact:
            f.violations += violations
        elif violations:
            f.notes.append(f"{len(violations)} coordination breaks (allowed here): "
                           + "; ".join(violations[:3]))
        warnings = sum(w.log_text().count("WARNING") for w in self.workers)
        f.notes.append(f"{warnings} warnings in the worker logs")
        keys = self.keys()
        f.keys_left = len(keys)
        f.no_ttl = sum(1 for ttl in keys.values() if ttl == -1)
        if f.no_ttl:
            f.violations.append("keys without TTL: " + ", ".join(
                str(k) for k, t in keys.items() if t == -1))
        return f

    def stop(self) -> None:
        parallel(*[w.stop for w in self.workers])
        queue = self.env.conf.get("task_default_queue")
        if queue and self.env.broker.startswith("amqp"):  # a queue of its own: drop it
            with self.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(f"--- {w.node}\n" + "\n".join(w.log_text().splitlines()[-lines:])
                         for w in self.workers)


def ride_out(s: Scenario, begin: Callable[[], None], end: Callable[[], None],
             seconds: float) -> Figures:
    """A fault that lasts ``seconds`` (a pause, a cut) at the scenario's moment; then the
    stream settles, the idempotent calls are sent again, and nothing may be lost, run
    twice, failed, refused or over a limit."""
    with s.producing(plan(s.tag)):
        s.wait_moment()
        s.fault_at()
        begin()
        try:
            time.sleep(seconds)  # the fault itself
        finally:
            end()
    s.settle()
    s.send_again()
    f = s.measure()
    assert f.lost == 0, f.detail()
    assert f.ran_twice == 0, f.detail()
    assert f.failed == f.wrong == f.refused == 0, f.detail()
    assert not f.violations, f.detail()
    return f


def check_bursts(sent: list[Sent], runs: list[dict[str, Any]]
                 ) -> tuple[list[str], list[tuple[Sent, str]]]:
    """Each debounced or keep-latest call that succeeded against the ledger (README,
    Guarantees: the id it got "resolves to the run that covers it; that run starts after
    the call, with the call's arguments or newer ones"). Returns the calls whose value no
    run of their group ran (lost: what answered them?), and those answered by an older
    run: with an ``i`` below their own, or by no run that started after them (allowed
    only where a burst is forgotten)."""
    ran: dict[tuple[str, str, Any], list[dict[str, Any]]] = defaultdict(list)
    for entry in runs:
        if "i" in entry:
            ran[(entry["task"], entry["group"], entry["i"])].append(entry)
    unmatched: list[str] = []
    older: list[tuple[Sent, str]] = []
    for s in sent:
        if s.call.kind not in BURSTS or s.state != "SUCCESS":
            continue
        _tag, group, i = s.call.args
        label = f"{s.call.task}(group {group}, i {i}) {s.result.id}"
        found = ran.get((s.call.task, f"{s.call.kind}:{group}", s.value), [])
        if not found:
            unmatched.append(f"{label}: returned {s.value!r}, which no run of its group ran")
            continue
        after = [e for e in found if e["start"] >= s.began_at]
        if s.value < i or not after:
            ids = ", ".join(sorted({e["id"] for e in found}))
            start = min(e["start"] for e in found) - s.began_at
            older.append((s, f"{label}: returned {s.value!r}, the i of run {ids}, which "
                             f"started {start:+.3f} s from the call"))
    return unmatched, older


def check_ledger(runs: list[dict[str, Any]]) -> list[str]:
    """The coordination invariants, held against the ledger: no two runs of one singleton
    group (or debounce or keep-latest key) overlap, never more than the concurrency limit
    at once, never more than the rate in any one-second window of admission times
    (sliding_log)."""
    problems: list[str] = []
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in runs:
        by_task[entry["task"]].append(entry)
    for task in ("f.single", "f.all", "f.debounce", "f.latest"):
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in by_task[task]:
            groups[entry["group"]].append(entry)
        for group, entries in groups.items():
            if most_at_once(entries) > 1:
                what = "burst" if task in ("f.debounce", "f.latest") else "singleton"
                problems.append(f"{what} {group}: two runs overlap")
    for task, limit in (("f.conc", CONCURRENCY), ("f.all", ALL_CONCURRENCY)):
        seen = most_at_once(by_task[task])
        if seen > limit:
            problems.append(f"{task}: {seen} running at once, limit {limit}")
    for task, limit in (("f.rate", RATE), ("f.all", ALL_RATE)):
        seen = most_in_a_second([e["at"] for e in by_task[task] if e["at"] is not None])
        if seen > limit:
            problems.append(f"{task}: {seen} admitted within one second, limit {limit}")
    return problems


def most_at_once(entries: list[dict[str, Any]]) -> int:
    """The most [start, end] intervals open at one instant (an end before a start)."""
    edges = sorted(itertools.chain(((e["start"], 1) for e in entries),
                                   ((e["end"], -1) for e in entries)),
                   key=lambda edge: (edge[0], edge[1]))
    most = level = 0
    for _, step in edges:
        level += step
        most = max(most, level)
    return most


def most_in_a_second(times: list[float]) -> int:
    ordered = sorted(times)
    most = first = 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most
