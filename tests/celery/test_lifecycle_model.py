"""A model-based test of the Celery lifecycle engine, played against the real Redis scripts.

No worker runs: a hypothesis state machine drives ``apply_async`` (its publishes are
captured, never sent), delivers the captured messages the way a worker would (a real
``celery.worker.request.Request`` built from the message, then the traced request
context), and calls the phases of ``Execution`` one at a time so that bodies of
different task ids interleave: start, then later a success, a failure, a retry, a
SIGKILL (the run never finishes; its message is redelivered, as with ``acks_late``) and
its leases running out, revokes (with and without terminate), broker redeliveries,
``send_task`` messages that skip ``apply_async``, duplicates (same arguments, same
explicit ``idempotency_key``, a caller-given task id), calls made from inside a running
body (a singleton's successor), ``self.replace(...)`` (by the task itself, or by a task
that is not coordinated, which then succeeds or fails: celery-kv's settle callbacks run),
a publish that raises, a worker that takes a message before the producer's publish
returns (before the enqueue confirm), and eager ``apply()``. The tasks: a singleton
(queued mode), a singleton in running mode, an idempotent task, and an idempotent
singleton, over two keys; and three burst tasks over the same keys: keep-latest
(``singleton_mode="latest"``), a trailing debounce and a leading one (``debounce=0.001``:
the due time passes at once, so the model needs no clock). Every burst trigger carries an
increasing sequence number as its argument; it comes through ``apply_async`` (absorbed, or
starting a burst), with a caller-given id or a callback (a follower, published with
``duplicate_of``), through ``send_task`` (armed at the worker), eagerly, or with a publish
that raises. The model records which burst each trigger joined and in what order (a
send_task message joins when a worker takes it), each burst body admitted and the trigger
whose arguments it runs, and each final outcome (kept in the result backend, where a
follower reads it). Burst runs are finished, retried, SIGKILLed (their lease lapses when
the model moves ``rdl`` into the past), redelivered and revoked (a pending burst's id, a
running one with and without terminate), not replaced. Time passes for a pending burst's
message (the model moves ``pexp`` into the past) and the next trigger adopts the burst:
its id is published again with a new nonce, and the old message is stale.

Two more singletons (queued mode) where a newer call wins: ``on_duplicate="replace"`` and
``on_duplicate="supersede"``, called with increasing sequence numbers (plain, with a
countdown, with a caller-given id or a callback, through send_task); their runs are
finished, retried, SIGKILLed, redelivered and revoked like the others, their heartbeat is
run once on demand (a superseded run learns it there), and a supersede task's body calls
``kv_checkpoint()``.

After every step it checks, on the model and on Redis:

1. never two live bodies for one singleton key, and every live body holds its keys
   (and its fencing token is above every earlier holder's);
2. an idempotency key's body completes at most once across all its deliveries, and every
   replay hands back the value of that one completion;
3. every task id handed to a caller was published and is queued, running or finished
   (or is a ``ReplayedResult`` that already holds the value); a duplicate is handed the
   id that holds the key;
4. every key under the prefix has a TTL (and claims handed back by a retry last its
   countdown plus the queued TTL);
6. every held claim belongs to a task id that is queued, or to a run that is live (or
   dead, until its lease runs out): no id holds a key that nothing will ever release; an
   idempotency record whose run's lease ran out says "ran, result unknown": duplicates
   are refused (``IdempotencyOutcomeUnknown``), only a redelivery of its id runs it.

At the end of each example every message is run to its end and the dead runs' leases
run out; then every handed-out id has resolved and nothing is held (5): no lock, no
in-progress idempotency record (completed records and completion marks stay, with TTLs).

For the bursts, after every step: one live body per burst key, and it is the running
burst of its hash (1); a burst body runs the arguments of the latest trigger that joined
its burst before it fired, and a takeover (after a retry or a lapsed lease) the same ones
(2); a follower ends with the outcome of the run it followed, and a message whose burst
was covered by a newer one never runs the body (4; a finished id's message never runs
again: the completion mark); every pending burst's message is queued and every running
burst's run is live or dead (6). At the end: every trigger joined a burst (or its caller
was told it failed), every join is covered by a body of its key that started after it
with its arguments or a later trigger's (3), and no burst hash holds a pending or running
burst (5).

Replace: a body runs the arguments of the latest call its id was handed for (a replace
re-publishes the id with the newer call's); a stale message (its id re-published by a
newer call: a replace, or an adopted burst) never runs the body and changes neither the
key's hash nor the id's result (a burst's stale copy may wait while its id's run goes).
Supersede: the newer call's id holds the key with a fence above every one seen before;
a superseded id's message never runs the body and ends REVOKED; a superseded run is told
at its next renewal, its ``kv_checkpoint()`` then raises and it ends REVOKED; whatever a
superseded run does (finish, retry, terminate) leaves the key as the newer holder has it;
and it is the one overlap allowed: two bodies of one key run at once only when all but
one were superseded. At the end, a call with a callback whose id succeeded had its
callback called.

The tests after the state machine replay, step by step, the engine bugs it found.
"""

from __future__ import annotations

import functools
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import redis
from celery import Celery, signature
from celery.app.task import Context
from celery.exceptions import Ignore, Retry
from celery.signals import task_revoked
from celery.worker.request import Request
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from kombu.message import Message

from celery_kv import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    IdempotencyOutcomeUnknown,
    KVTask,
    LockNotAcquired,
    install,
)
from celery_kv.celery.context import Run
from celery_kv.celery.enqueue import ReplayedResult
from celery_kv.celery.execution import SETTLE, SETTLE_FAILED, Execution, _Finished
from celery_kv.celery.features.base import FAILED
from celery_kv.celery.install import installed
from celery_kv.celery.keys import RUN_MARK, task_id_of
from celery_kv.errors import Superseded
from celery_kv.testing import RedisServer
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

DB = 12  # a database of the session's redis-server that no other test uses
TASKS = ("single", "idem", "idem_single", "single_running")
# the burst tasks (keep-latest, trailing debounce, leading debounce): their calls carry a
# sequence number as ``x``, so that "latest" can be checked
BURSTS = ("latest", "deb", "lead")
# singletons where a newer call wins (on_duplicate "replace" and "supersede"); their calls
# carry a sequence number as ``x`` too
NEWER = ("repl", "sup")
KV_TASKS = {f"m.{task}" for task in (*TASKS, *BURSTS, *NEWER)}
SETTLES = (SETTLE, SETTLE_FAILED)
KEYS = ("a", "b")
EXPLICIT = (None, "K1", "K2")
HOST = "model@local"
COUNTDOWNS = (0, 1.5, 60)
DRAIN_STEPS = 400


@dataclass(frozen=True)
class Call:
    """One logical call: what a caller asked for (the model's own idea of its keys)."""

    task: str  # one of TASKS
    k: str
    x: int
    key: str | None = None  # an explicit idempotency_key

    @classmethod
    def of(cls, task: str, k: str, x: int, key: str | None) -> Call:
        """A call with an explicit idempotency key, when the task takes one."""
        return cls(task, k, x, key if task in ("idem", "idem_single") else None)

    @property
    def name(self) -> str:
        return f"m.{self.task}"

    @property
    def burst(self) -> bool:
        """A debounced or keep-latest task: its key is a burst hash, not a lock."""
        return self.task in BURSTS

    @property
    def lock(self) -> tuple[str, str] | None:
        """The singleton (or burst) key (per task), or None."""
        return None if self.task == "idem" else (self.task, self.k)

    @property
    def idem(self) -> tuple[Any, ...] | None:
        """The idempotency key (per task), or None."""
        if self.task in ("single", "single_running", *NEWER) or self.burst:
            return None
        return (self.task, "key", self.key) if self.key else (self.task, "args", self.k, self.x)

    def options(self) -> dict[str, Any]:
        return {"idempotency_key": self.key} if self.key else {}


@dataclass
class Msg:
    """One published message, as the broker holds it (JSON round-tripped)."""

    no: int
    name: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]
    headers: dict[str, Any]
    properties: dict[str, Any]
    call: Call | None = None  # of a coordinated task: the logical call it runs

    def __repr__(self) -> str:
        kv = self.headers.get("celery_kv")
        return (f"Msg#{self.no}({self.name}[{self.task_id[:8]}] {self.args} "
                f"retries={self.headers.get('retries')} kv={'yes' if kv else 'no'})")


@dataclass
class Live:
    """One execution whose start phase admitted the body."""

    no: int
    msg: Msg
    call: Call
    execution: Execution
    request: Context
    leases: set[str] = field(default_factory=set)  # of a dead run: not yet run out

    @property
    def task_id(self) -> str:
        return self.msg.task_id

    @property
    def token(self) -> str:
        return self.execution.run.token

    def __repr__(self) -> str:
        return f"Run#{self.no}({self.call.task} {self.call.k}/{self.call.x} [{self.task_id[:8]}])"


@dataclass
class Handed:
    """A result handed to a caller."""

    result: Any
    call: Call
    how: str


@dataclass
class Recorded:
    """Completed bodies per idempotency key, and the value the first one stored."""

    successes: Counter[Any] = field(default_factory=Counter)
    values: dict[Any, tuple[str, Any]] = field(default_factory=dict)  # idem key -> (id, value)


@dataclass
class Trigger:
    """One trigger of a burst task (its sequence number is ``call.x``)."""

    call: Call
    how: str  # apply_async, explicit id, link, send_task, apply
    task_id: str | None = None  # of a send_task message: it joins a burst at the worker
    joined: int = 0  # how many times it was absorbed into a burst
    refused: bool = False  # its caller was told it failed (publish raised, apply() refused)

    @property
    def seq(self) -> int:
        return self.call.x


@dataclass
class Join:
    """A trigger absorbed into a burst, in the order the bursts' scripts saw them (a
    send_task message joins at the worker, when it is delivered)."""

    no: int
    trigger: Trigger
    burst: str  # the burst's task id
    made: int  # how many burst bodies had started before it joined
    window: bool = False  # absorbed by the leading window of a run that already started


@dataclass
class Body:
    """One admission of a burst body (a first firing, a takeover, or an eager run), with
    the join whose arguments it runs."""

    no: int
    join: Join
    task_id: str


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Note that a step failed, so the teardown only cleans up (it must not mask it)."""

    @functools.wraps(fn)
    def wrapper(self: LifecycleModel, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except BaseException:
            self.broken = True
            raise

    return wrapper


def make_app(url: str, prefix: str, model: LifecycleModel) -> Celery:
    app = Celery("lifecycle-model", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        kv_redis_url=url, kv_prefix=prefix, kv_enqueue_claim_ttl=2.0, kv_wait_interval=0.05,
        kv_retry_deadline=2.0,
        kv_delay_store=False,  # the model is the broker: its countdowns are its own
    )
    install(app)

    # Leases are long: no lease runs out by itself during an example (a dead run's lease
    # runs out when the model says so), and no heartbeat fires.
    @app.task(base=KVTask, shared=False, name="m.single", bind=True, singleton=True,
              singleton_key="{k}", lock_ttl=60.0, max_retries=None)
    def single(self: Any, k: str, x: int) -> Any:
        return model.eager_body(self, Call("single", k, x))

    @app.task(base=KVTask, shared=False, name="m.single_running", bind=True, singleton=True,
              singleton_key="{k}", singleton_mode="running", lock_ttl=60.0, max_retries=None)
    def single_running(self: Any, k: str, x: int) -> Any:
        return model.eager_body(self, Call("single_running", k, x))

    @app.task(base=KVTask, shared=False, name="m.idem", bind=True, idempotent=True,
              idempotency_lease=60.0, max_retries=None)
    def idem(self: Any, k: str, x: int) -> Any:
        return model.eager_body(self, Call("idem", k, x))

    @app.task(base=KVTask, shared=False, name="m.idem_single", bind=True, idempotent=True,
              singleton=True, singleton_key="{k}", lock_ttl=60.0, idempotency_lease=60.0,
              max_retries=None)
    def idem_single(self: Any, k: str, x: int) -> Any:
        return model.eager_body(self, Call("idem_single", k, x))

    @app.task(base=KVTask, shared=False, name="m.latest", bind=True, singleton=True,
              singleton_key="{k}", singleton_mode="latest", lock_ttl=60.0, max_retries=None)
    def latest(self: Any, k: str, x: int) -> Any:
        return model.eager_body(self, Call("latest", k, x))

    # 1 ms: the due time passes at once, so the model needs no clock (a delivery that
    # still comes early is re-published, and that copy is delivered like any other)
    @app.task(base=KVTask, shared=False, name="m.deb", bind=True, debounce=0.001,
              debounce_key="{k}", lock_ttl=60.0, max_retries=None)
    def deb(self: Any, k: str, x: int) -> Any:
        return model.eager_body(self, Call("deb", k, x))

    @app.task(base=KVTask, shared=False, name="m.lead", bind=True, debounce=0.001,
              debounce_key="{k}", debounce_edge="leading", lock_ttl=60.0, max_retries=None)
    def lead(self: Any, k: str, x: int) -> Any:
        return model.eager_body(self, Call("lead", k, x))

    @app.task(base=KVTask, shared=False, name="m.repl", bind=True, singleton=True,
              singleton_key="{k}", on_duplicate="replace", lock_ttl=60.0, max_retries=None)
    def repl(self: Any, k: str, x: int) -> Any:
        return model.eager_body(self, Call("repl", k, x))

    @app.task(base=KVTask, shared=False, name="m.sup", bind=True, singleton=True,
              singleton_key="{k}", on_duplicate="supersede", lock_ttl=60.0, max_retries=None)
    def sup(self: Any, k: str, x: int) -> Any:
        return model.eager_body(self, Call("sup", k, x))

    @app.task(shared=False, name="m.plain")
    def plain(k: str, x: int, fail: bool = False) -> None:
        raise AssertionError("the model runs m.plain itself")

    return app


def roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


# What a dead run's lease running out does: a lock goes, unless someone else holds it; an
# idempotency record lapses into "ran, result unknown" (its lease deadline passes).
LAPSE_IF_OWNED = """
local lapsed = 0
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'l', 0)
  lapsed = 1
end
return lapsed
"""
EXPIRE_IF_OWNED = """
local gone = 0
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  gone = 1
end
return gone
"""

# A dead run's burst lease running out: the model's clock. Rather than wait lock_ttl, the
# running burst's deadline (rdl) is moved into the past; the hash itself stays (burst_expire
# remembers a lapsed run for the queued TTL), as it would when the time really passed.
LAPSE_BURST_IF_OWNED = """
local lapsed = 0
if redis.call('HGET', KEYS[1], 'rtok') == ARGV[1] then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'rdl', tonumber(t[1]) * 1000 - 1000)
  lapsed = 1
end
return lapsed
"""


# A pending burst's message overdue by the queued TTL: the model's clock moves the deadline
# (pexp) into the past rather than wait an hour (the next trigger adopts the burst).
OVERDUE_IF_PENDING = """
local overdue = 0
if redis.call('HGET', KEYS[1], 'pid') == ARGV[1] then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'pexp', tonumber(t[1]) * 1000 - 1000)
  overdue = 1
end
return overdue
"""


class BrokerDown(RuntimeError):
    pass


class LifecycleModel(RuleBasedStateMachine):
    url: ClassVar[str] = ""

    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.prefix = "lm" + uuid.uuid4().hex[:10]
        self.app = make_app(self.url, self.prefix, self)
        self.kv = installed(self.app).kv
        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        self.numbers = itertools.count(1)
        self.calling: Call | None = None  # the logical call being published or run eagerly
        # (task id, task name) -> the logical call (a replacement by another task shares
        # the replaced id), and every id a caller knows, oldest first
        self.ident: dict[tuple[str, str], Call] = {}
        self.ids: dict[str, None] = {}
        self.published: list[Msg] = []
        self.queue: list[Msg] = []  # published, not yet delivered (or to be redelivered)
        self.delivered: list[Msg] = []  # delivered at least once: may be redelivered
        self.live: list[Live] = []
        self.dead: list[Live] = []  # SIGKILLed, lease not yet run out
        self.terminated: list[Live] = []  # revoked with terminate=True
        self.revoked: set[str] = set()
        self.resolved: set[str] = set()  # ids with a final state (success, failure, revoked)
        self.handed: list[Handed] = []
        self.recorded = Recorded()
        self.eager_ran: Any = None
        self.fences: dict[tuple[str, str], tuple[str, int]] = {}  # lock -> last admission
        self.broker_down = False
        self.fast: tuple[float | None] | None = None  # (retry countdown or None,)
        self.fast_retried: tuple[Call, str, float] | None = None
        # bursts: every trigger, the triggers each burst absorbed before it fired, the
        # sequence number it fired with, every body admitted, and every final outcome
        self.seqs = itertools.count(1)
        self.triggers: list[Trigger] = []
        self.joins: list[Join] = []
        self.pending: dict[str, list[Join]] = {}  # burst id -> joins before it fired
        self.fired: dict[str, Join] = {}  # burst id -> the join whose arguments it ran
        self.bodies: list[Body] = []
        self.burst_ids: set[str] = set()
        # (task, key) -> the burst the hash holds as running (until its run's final outcome;
        # a killed run stays there, lapsed); and a lapsed run -> the burst that fired over it
        # (its triggers are covered by that one, whose result its messages end with)
        self.running_burst: dict[tuple[str, str], str] = {}
        self.covered: dict[str, str] = {}
        self.eager_trigger: Trigger | None = None
        self.outcomes: dict[str, tuple[bool, Any]] = {}
        self.refused: dict[str, Any] | None = None  # the header of a publish that raised
        # newer calls win (replace, supersede) and adopted bursts: the nonce of each task
        # id's latest message a caller published, the nonces a newer message made stale,
        # the ids a newer call superseded, the runs told so at a renewal, the highest fence
        # seen per key (claims and admissions), and the burst ids revoked
        self.current_msg: dict[str, str] = {}
        self.stale: set[str] = set()
        self.stale_bare: set[str] = set()  # replaced ids: their messages without a nonce
        self.superseded: set[str] = set()
        self.told: set[int] = set()
        self.top_fence: dict[tuple[str, str], int] = {}
        self.revoked_bursts: set[str] = set()
        self.links: list[tuple[Call, str]] = []  # a call with a callback, and its id
        self.succeeded: set[str] = set()  # ids of replace and supersede tasks that succeeded
        self.app.amqp.send_task_message = self._capture

    # -- the broker ------------------------------------------------------------------------

    def _capture(self, producer: Any, name: str, message: Any, **options: Any) -> None:
        """``amqp.send_task_message``: keep the message instead of sending it."""
        headers = dict(message.headers)
        headers.update(options.get("headers") or {})
        if self.broker_down:
            self.refused = roundtrip(headers.get("celery_kv") or {})
            raise BrokerDown("the broker refused the message")
        args, kwargs, embed = roundtrip(list(message.body))
        msg = Msg(next(self.numbers), name, headers["id"], args, kwargs, embed,
                  roundtrip(headers), roundtrip(dict(message.properties)))
        if msg.name in KV_TASKS:
            known = self.ident.get((msg.task_id, msg.name))
            if known is None:  # a new call (or a replacement by another task, same id)
                assert self.calling is not None, f"{msg} published for a call the model never saw"
                known = self.ident[(msg.task_id, msg.name)] = self.calling
                self.ids[msg.task_id] = None
            elif self.calling is not None and self.calling.task == "repl":
                # on_duplicate="replace": a newer call's message under the queued holder's
                # id: the id now runs the newer call (its caller and every earlier one)
                known = self.ident[(msg.task_id, msg.name)] = self.calling
            msg.call = known
            self._track_nonce(msg)
            if known.burst:
                self.burst_ids.add(msg.task_id)
        self.published.append(msg)
        self.queue.append(msg)
        if self.fast is not None:  # a fast worker takes it before publish() returns
            (retry,), self.fast = self.fast, None
            self.queue.remove(msg)
            self.delivered.append(msg)
            self._deliver(msg, redelivered=False)
            run = next((run for run in self.live if run.msg is msg), None)
            if retry is not None and run is not None:
                self._retry(run, retry)
                self.fast_retried = (run.call, run.task_id, retry)

    def _track_nonce(self, msg: Msg) -> None:
        """A message a caller publishes under an id that has one already (a replace, an
        adopted burst) carries a new nonce: the id's earlier messages are stale."""
        header = msg.headers.get("celery_kv") or {}
        nonce = header.get("singleton_msg") or header.get("burst_msg")
        if not nonce:
            return
        if header.get("singleton_msg") and self.calling is not None and any(
                m.task_id == msg.task_id and m is not msg
                for m in [*self.queue, *self.delivered]):
            # a replace: the id's earlier messages without a nonce (a send_task, or a retry
            # of one) are older than this one, so stale too
            self.stale_bare.add(msg.task_id)
        current = self.current_msg.get(msg.task_id)
        if current is None:
            self.current_msg[msg.task_id] = nonce
        elif self.calling is not None and current != nonce:
            self.stale.add(current)
            self.current_msg[msg.task_id] = nonce

    def _is_stale(self, msg: Msg) -> bool:
        header = msg.headers.get("celery_kv") or {}
        nonce = header.get("singleton_msg") or header.get("burst_msg")
        if not nonce:
            return msg.call is not None and msg.call.task == "repl" \
                and msg.task_id in self.stale_bare
        return nonce in self.stale

    def _message(self, msg: Msg, redelivered: bool) -> Message:
        body = json.dumps([msg.args, msg.kwargs, msg.embed]).encode()
        return Message(body=body, content_type="application/json", content_encoding="utf-8",
                       headers=roundtrip(msg.headers), properties=roundtrip(msg.properties),
                       delivery_info={"exchange": "", "routing_key": "celery",
                                      "redelivered": redelivered})

    def _request(self, msg: Msg, redelivered: bool) -> Request:
        return Request(self._message(msg, redelivered), app=self.app,
                       task=self.app.tasks[msg.name], hostname=HOST)

    def _traced_context(self, msg: Msg, redelivered: bool) -> Context:
        """The request context a worker's tracer pushes for this message."""
        request_dict = self._request(msg, redelivered).request_dict
        args, kwargs = request_dict["args"], request_dict["kwargs"]
        request_dict.update({"args": args, "kwargs": kwargs, "hostname": HOST,
                             "is_eager": False}, **(msg.embed or {}))
        return Context(request_dict, args=args, called_directly=False, kwargs=kwargs)

    def _new_messages(self, before: int) -> list[Msg]:
        return self.published[before:]

    # -- helpers ---------------------------------------------------------------------------

    def _task(self, name: str) -> Any:
        return self.app.tasks[name]

    def _value(self, task_id: str) -> dict[str, Any]:
        return {"id": task_id, "n": next(self.numbers)}

    def _completed(self, call: Call, task_id: str, value: Any) -> None:
        """A body ran to a successful end (the final outcome stored it)."""
        key = call.idem
        if key is None:
            return
        self.recorded.successes[key] += 1
        assert self.recorded.successes[key] <= 1, (
            f"idempotency key {key} completed a second time, by {task_id} "
            f"(first by {self.recorded.values[key][0]})")
        self.recorded.values[key] = (task_id, value)

    def _check_replay(self, call: Call, holder: str | None, value: Any, where: str) -> None:
        key = call.idem
        assert key is not None, f"{where}: a replay for {call}, which is not idempotent"
        assert key in self.recorded.values, (
            f"{where}: replayed {value!r} for {key}, which never completed")
        producer, stored = self.recorded.values[key]
        assert value == stored, f"{where}: replayed {value!r}, but {key} completed with {stored!r}"
        if holder is not None:
            assert holder == producer, f"{where}: replay names {holder}, not {producer}"

    def _lock_key(self, lock: tuple[str, str]) -> str:
        task = self._task(f"m.{lock[0]}")
        return str(self.kv.store.keys.key("lock", (task.name, lock[1])))

    def _burst_key(self, lock: tuple[str, str]) -> str:
        return str(self.kv.store.keys.key("burst", (f"m.{lock[0]}", lock[1])))

    def _burst(self, lock: tuple[str, str]) -> dict[str, str]:
        return self.r.hgetall(self._burst_key(lock))

    def _now_ms(self) -> int:
        seconds, micros = self.r.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def _record_key(self, call: Call) -> str:
        task = self._task(call.name)
        keys = task.kv_keys((call.k, call.x), idempotency_key=call.key)
        return str(self.kv.store.keys.key("idem", (task.kv_namespace, keys.idempotency)))

    def _holders(self, call: Call) -> set[str | None]:
        """The task ids that hold a call's keys now (a lock's successor included)."""
        holders: set[str | None] = set()
        if call.burst:  # absorbed by the pending burst or by a leading window
            assert call.lock is not None
            return set(self.r.hmget(self._burst_key(call.lock), "pid", "wid")) - {None}
        if call.lock is not None:
            owner, successor = self.r.hmget(self._lock_key(call.lock), "owner", "next")
            holders |= {task_id_of(owner), successor}
        if call.idem is not None:
            status, owner = self.r.hmget(self._record_key(call), "s", "o")
            if status == "p":
                holders.add(task_id_of(owner))
        return holders - {None}

    def _scan(self, pattern: str) -> list[str]:
        return sorted(self.r.scan_iter(match=pattern, count=1000))

    def _snapshot(self) -> dict[str, tuple[int, dict[str, str]]]:
        """Every key under the prefix (SCAN), with its PTTL and, for a lock or an
        idempotency record, its fields: two round trips."""
        keys = self._scan(self.kv.store.keys.pattern())
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
            if self._is_claim(key):
                pipe.hgetall(key)
        replies = iter(pipe.execute())
        return {key: (next(replies), next(replies) if self._is_claim(key) else {})
                for key in keys}

    def _is_claim(self, key: str) -> bool:
        if key.startswith((f"{self.prefix}:lock:", f"{self.prefix}:burst:")):
            return not key.endswith((":fence", ":superseded"))
        return key.startswith(f"{self.prefix}:idem:")

    # -- running a message -----------------------------------------------------------------

    def _deliver(self, msg: Msg, redelivered: bool) -> None:
        task = self._task(msg.name)
        if msg.task_id in self.revoked:  # the worker discards it, and fires task_revoked
            self._announce_revoked(task, msg, terminated=False)
            self.resolved.add(msg.task_id)
            if msg.call is not None and msg.call.burst:
                self._burst_revoked(msg)
            return
        if msg.name not in KV_TASKS:
            self._run_plain(task, msg)
            return
        call = msg.call
        assert call is not None
        request = self._traced_context(msg, redelivered)
        execution = Execution(Run(task, request, request.args, request.kwargs))
        stale = self._is_stale(msg)
        state = self._state_of(call, msg.task_id) if stale else None
        before = len(self.published)
        verdict, value = self._start(task, request, execution)
        new = self._new_messages(before)
        if stale:
            self._stale_delivered(msg, request, execution, verdict, new, state)
            return
        if call.task in NEWER and self._newer_delivered(msg, verdict, new):
            return
        if call.burst:
            self._burst_delivered(msg, request, execution, (verdict, value), new)
            if self._came_early(msg, new):
                # Its 1 ms countdown passes: the copy is delivered now, so that a step's
                # outcome does not depend on how fast the step ran (hypothesis replays it).
                # (the copy is not added to the delivered messages: a broker redelivers the
                # original, so the messages a step leaves do not depend on its speed either)
                self.queue.remove(new[0])
                self._deliver(new[0], redelivered=False)
            return
        if verdict in ("deferred", "quiet"):
            assert [m.task_id for m in new] == [msg.task_id], (
                f"a deferred {msg} must re-publish its own id once, published {new}")
            assert new[0].headers["retries"] == msg.headers["retries"], (
                f"a deferral of {msg} used up a retry: {new[0]}")
            return
        assert not new, f"start of {msg} ({verdict}) published {new}"
        if verdict == "running":
            try:
                self._check_free_for(call, msg.task_id)
                self._check_fence(call, msg.task_id, getattr(request, "kv_fence", None))
            finally:  # live even when a check fails: the teardown stops its heartbeat
                self.live.append(Live(next(self.numbers), msg, call, execution, request))
            if call.task in NEWER:  # the id's latest call (a replace took the newer's)
                latest = self.ident[(msg.task_id, msg.name)]
                assert int(request.args[1]) == latest.x, (
                    f"{msg} ran call {request.args[1]}, but the latest call handed "
                    f"{msg.task_id} is {latest.x}")
        elif verdict == "replayed":
            self._check_replay(call, None, value, f"start of {msg}")
            self.resolved.add(msg.task_id)
            self._call_back(msg, value)
        elif verdict == "already finished":
            assert msg.task_id in self.resolved, (
                f"{msg}: the completion mark says finished, but it never reached an outcome")
        else:
            assert verdict == "failed", verdict
            if isinstance(value, IdempotencyOutcomeUnknown):
                assert self._lapsed(call), f"start of {msg}: {value}, but nothing lapsed"
            else:
                assert isinstance(value, IdempotencyKeyReused), f"start of {msg}: {value!r}"
            self.resolved.add(msg.task_id)
            self._call_back(msg, failed=True)

    # -- newer calls win: replace, supersede, adopted bursts --------------------------------

    def _state_of(self, call: Call, task_id: str) -> tuple[Any, ...]:
        """What a delivery of ``task_id`` could write: its key's hash (and tombstones), and
        the id's state in the result backend."""
        assert call.lock is not None
        if call.burst:
            fields: Any = self.r.hgetall(self._burst_key(call.lock))
            marks: Any = ()
        else:
            key = self._lock_key(call.lock)
            fields, marks = self.r.hgetall(key), self.r.smembers(key + ":superseded")
        return fields, marks, self.app.AsyncResult(task_id).state

    def _stale_delivered(self, msg: Msg, request: Context, execution: Execution, verdict: str,
                         new: list[Msg], state: Any) -> None:
        """A message whose id a newer caller published again (a replace, an adopted burst)
        is stale: dropped without its body, writing no state (a burst's stale copy may
        also wait while its id's run goes: it re-publishes itself, unchanged)."""
        call = msg.call
        assert call is not None
        if verdict == "running":  # live, so that the teardown stops its heartbeat
            self.live.append(Live(next(self.numbers), msg, call, execution, request))
            raise AssertionError(f"stale {msg} ran the body with {request.args}: a newer "
                                 f"message of {msg.task_id} was published")
        waited = call.burst and verdict == "quiet" and [m.task_id for m in new] == [msg.task_id]
        assert verdict in ("quiet", "already finished") and (not new or waited), (
            f"stale {msg} ended {verdict}, publishing {new}: it must be dropped")
        after = self._state_of(call, msg.task_id)
        assert after == state, f"stale {msg} wrote state: {state} -> {after}"

    def _newer_delivered(self, msg: Msg, verdict: str, new: list[Msg]) -> bool:
        """A replace or supersede task's message (not a stale one): a superseded id never
        runs its body and ends REVOKED; a current message is never dropped. True when the
        delivery is handled."""
        if verdict == "superseded" or msg.task_id in self.superseded:
            assert msg.task_id in self.superseded, (
                f"{msg} ended superseded, but no newer call took its key")
            assert verdict in ("superseded", "already finished"), (
                f"{msg}: its id was superseded, but its delivery ended {verdict} ({new})")
            assert not new, f"{msg}, superseded, published {new}"
            if verdict == "superseded":
                state = self.app.AsyncResult(msg.task_id).state
                assert state == "REVOKED", f"superseded {msg} ended {state}, not REVOKED"
                self.resolved.add(msg.task_id)
            return True
        assert verdict != "quiet" or new, (
            f"{msg} was dropped as stale, but it is the latest message of its id")
        return False

    def _superseded_run(self, run: Live) -> bool:
        """A run whose key a newer call took: it may still run beside the newer holder."""
        return run.call.task == "sup" and run.task_id in self.superseded

    def _burst_revoked(self, msg: Msg) -> None:
        """A discarded delivery of a revoked burst id: the worker records it REVOKED (a
        follower reads that), and a send_task trigger that never joined was refused."""
        if msg.task_id not in self.outcomes or self.outcomes[msg.task_id][0] is False:
            self.outcomes[msg.task_id] = (False, None)
            self.app.backend.mark_as_revoked(msg.task_id, "revoked")
        self.revoked_bursts.add(msg.task_id)
        for trigger in self.triggers:
            if trigger.task_id == msg.task_id and not trigger.joined:
                trigger.refused = True

    # -- bursts ----------------------------------------------------------------------------

    def _burst_delivered(self, msg: Msg, request: Context, execution: Execution,
                         started: tuple[str, Any], new: list[Msg]) -> None:
        """A delivery of a burst task's message: the burst it fires or takes over, the burst
        a send_task message joins, or the run a follower ends with."""
        verdict, value = started
        call = msg.call
        assert call is not None
        header = msg.headers.get("celery_kv") or {}
        if verdict == "quiet" and not new:  # Drop: a message of an older nonce
            assert header.get("burst_msg"), f"{msg} dropped, but it carries no nonce"
            return
        if verdict in ("deferred", "quiet"):
            assert [m.task_id for m in new] == [msg.task_id], (
                f"a deferred {msg} must re-publish its own id once, published {new}")
            assert new[0].headers["retries"] == msg.headers["retries"], (
                f"a deferral of {msg} used up a retry: {new[0]}")
            if not header:  # a send_task message: armed at this delivery
                again = new[0].headers.get("celery_kv") or {}
                if again.get("published_duplicate"):
                    self._join_at_worker(msg, str(again["duplicate_of"]))
                elif again.get("burst_msg"):
                    self._join_at_worker(msg, msg.task_id)
            return
        assert not new, f"start of {msg} ({verdict}) published {new}"
        holder = header.get("duplicate_of") if header.get("published_duplicate") else None
        if holder is None:
            holder = self.covered.get(msg.task_id)
        if verdict == "running":
            try:
                self._burst_admitted(msg, request, holder)
            finally:  # live even when a check fails: the teardown stops its heartbeat
                self.live.append(Live(next(self.numbers), msg, call, execution, request))
        elif verdict == "replayed":  # a follower, handed the value of the run it followed
            assert holder is not None, (
                f"{msg} ({header}) ended with {value!r} without its body, following nothing")
            assert self.outcomes.get(holder) == (True, value), (
                f"follower {msg} ended with {value!r}, but {holder} ended with "
                f"{self.outcomes.get(holder)!r}")
            self._ended(msg.task_id, True, value)
            self._call_back(msg, value)
        elif verdict == "already finished":
            assert msg.task_id in self.resolved, (
                f"{msg}: the completion mark says finished, but it never reached an outcome")
        else:
            assert verdict == "failed", verdict
            assert holder is not None and self.outcomes.get(holder, (True,))[0] is False, (
                f"{msg} failed at its start ({value!r}); it follows {holder}, which ended "
                f"with {self.outcomes.get(holder or '')!r}")
            self._ended(msg.task_id, False, None)
            self._call_back(msg, failed=True)

    def _burst_admitted(self, msg: Msg, request: Context, holder: str | None) -> None:
        """Invariants 1, 2 and 4 as a burst body is admitted."""
        call = msg.call
        assert call is not None
        # a follower runs only its own id's burst: a send_task message delivered again
        # after it joined another burst joins anew, and may start a burst of its own id
        assert holder is None or msg.task_id in self.pending or msg.task_id in self.fired, (
            f"{msg}, a follower of {holder}, ran the body")
        assert msg.task_id not in self.covered, (
            f"{msg} ran the body, but burst {self.covered[msg.task_id]} fired over its "
            "lapsed run with newer arguments")
        if "celery_kv" not in msg.headers and msg.task_id not in self.fired \
                and msg.task_id not in self.pending:
            self._join_at_worker(msg, msg.task_id)  # armed at the worker, and due at once
        self._check_free_for(call, msg.task_id)
        self._check_fence(call, msg.task_id, getattr(request, "kv_fence", None))
        self._fired(call, msg.task_id, int(request.args[1]))

    @staticmethod
    def _came_early(msg: Msg, new: list[Msg]) -> bool:
        """The delivery came before its burst's due time: re-published for that time (with
        a countdown, not a backoff: no wait is counted, and it follows nothing)."""
        if len(new) != 1:
            return False
        before, after = msg.headers.get("celery_kv") or {}, new[0].headers.get("celery_kv") or {}
        return (bool(after.get("burst_msg")) and not after.get("published_duplicate")
                and after.get("waits") == before.get("waits"))

    def _new_trigger(self, task: str, k: str, how: str) -> Trigger:
        trigger = Trigger(Call(task, k, next(self.seqs)), how)
        self.triggers.append(trigger)
        return trigger

    def _window_closed(self, call: Call) -> None:
        """Wait for the 1 ms leading window of the key to close, so that whether a trigger
        falls into it does not depend on how fast the last steps ran."""
        if call.task == "lead":
            assert call.lock is not None
            key = self._burst_key(call.lock)
            wait_for(lambda: int(self.r.hget(key, "wend") or 0) < self._now_ms(),
                     what=f"the leading window of {key} to close", interval=0.001)

    def _join(self, trigger: Trigger, burst: str) -> Join:
        """The trigger was absorbed into ``burst`` (pending, or a leading window)."""
        join = Join(len(self.joins) + 1, trigger, burst, len(self.bodies))
        if burst in self.fired:  # only a leading window absorbs into a run that started
            assert trigger.call.task == "lead", (
                f"{trigger} joined burst {burst}, which already fired with "
                f"{self.fired[burst].trigger}")
            join.window = True
        else:
            self.pending.setdefault(burst, []).append(join)
        trigger.joined += 1
        self.joins.append(join)
        return join

    def _join_at_worker(self, msg: Msg, burst: str) -> None:
        trigger = next(t for t in self.triggers if t.task_id == msg.task_id)
        self._join(trigger, burst)

    def _fired(self, call: Call, task_id: str, seq: int) -> None:
        """A burst body was admitted with the arguments of trigger ``seq``: the latest join
        before it fired (a leading edge too: the model lets its window close before each
        trigger, so no trigger is dropped by it); a takeover keeps them. A burst that
        fires over a lapsed run covers that run."""
        fired = self.fired.get(task_id)
        lapsed = self.running_burst.get(call.lock or ("", ""))
        if fired is None and lapsed is not None and lapsed != task_id:
            self.covered[lapsed] = task_id  # it fired over a lapsed run (a killed worker)
        self.running_burst[call.lock or ("", "")] = task_id
        if fired is None:
            joins = self.pending.pop(task_id, [])
            assert joins, f"burst {task_id} ({call.task} {call.k}) fired, but nothing joined it"
            fired = joins[-1]
            assert seq == fired.trigger.seq, (
                f"burst {task_id} ({call.task} {call.k}) fired with trigger {seq}, but the "
                f"triggers it absorbed were {[j.trigger.seq for j in joins]}")
            self.fired[task_id] = fired
        else:
            assert seq == fired.trigger.seq, (
                f"burst {task_id} ({call.task} {call.k}) fired with trigger "
                f"{fired.trigger.seq}, but a later delivery ran it with trigger {seq}")
        self.bodies.append(Body(len(self.bodies) + 1, fired, task_id))

    def _ended(self, task_id: str, succeeded: bool, value: Any, run: Live | None = None
               ) -> None:
        """A burst task id's final outcome, kept in the result backend (followers read it)."""
        if run is not None and self.running_burst.get(run.call.lock or ("", "")) == task_id:
            del self.running_burst[run.call.lock or ("", "")]  # the finish step deleted it
        self.resolved.add(task_id)
        self.outcomes[task_id] = (succeeded, value)
        if succeeded:
            self.app.backend.store_result(task_id, value, "SUCCESS")
        else:
            self.app.backend.mark_as_failure(task_id, RuntimeError(f"{task_id} failed"))

    def _call_back(self, msg: Msg, value: Any = None, failed: bool = False) -> None:
        """After a final outcome the worker calls the message's ``link`` callbacks with the
        result, or its ``link_error`` ones with the task id (old-style errbacks)."""
        for callback in msg.embed.get("errbacks" if failed else "callbacks") or ():
            sig = signature(callback, app=self.app)
            sig.apply_async((msg.task_id,) if failed else (value,))

    def _run_plain(self, task: Any, msg: Msg) -> None:
        """A task that is not coordinated: a replacement (``m.plain``, which fails when told
        to), or celery-kv's settle callbacks, which finish a replaced id's claims."""
        if msg.name == "m.plain":
            self.resolved.add(msg.task_id)  # the replaced id's result is the replacement's
            if msg.args[2]:
                self._call_back(msg, failed=True)
            else:
                self._call_back(msg, self._value(msg.task_id))
            return
        assert msg.name in SETTLES, msg
        replaced = msg.kwargs["task_id"]
        call = self.ident[(replaced, msg.kwargs["task"])]
        before = self.r.hget(self._record_key(call), "s") if call.idem else None
        task(*msg.args, **msg.kwargs)
        if msg.name == SETTLE and call.idem is not None and before == "p":
            record = self.r.hgetall(self._record_key(call))
            if record.get("s") == "c":  # the replacement's result completed the key
                self._completed(call, replaced, json.loads(record["r"]))

    def _start(self, task: Any, request: Context, execution: Execution) -> tuple[str, Any]:
        """``Execution.execute`` up to the body, with its handling of the start's outcomes."""
        task.request_stack.push(request)
        request._kv_run = execution
        try:
            try:
                body, value = execution.start()
            except _Finished:
                return "already finished", None
            except Retry as exc:
                execution.hand_back(execution.retry_delay(exc.when))
                return "deferred", exc
            except Ignore:
                if not execution.replaced:
                    execution.finish(FAILED)
                return "quiet", None
            except Superseded as exc:  # a superseded id's message: REVOKED, unrun
                execution.finish(FAILED)
                try:
                    execution._revoked(exc)
                except Ignore:
                    return "superseded", exc
                raise AssertionError("_revoked did not end the run") from exc
            except Exception as exc:
                execution.finish(FAILED)
                return "failed", exc
            if body:
                return "running", None
            outcome = execution.outcome(value)
            execution.finish(outcome)
            assert not outcome.error, outcome.error
            return "replayed", value
        finally:
            request._kv_run = None
            task.request_stack.pop()

    def _check_free_for(self, call: Call, task_id: str) -> None:
        """Invariant 1 at the moment a body is admitted."""
        if call.lock is None:
            return
        others = [run for run in self.live
                  if run.call.lock == call.lock and not self._superseded_run(run)]
        assert not others, f"{call.lock}: body of {task_id} admitted while {others} run"

    def _check_fence(self, call: Call, task_id: str, fence: int | None) -> None:
        """The fencing token only goes up across holders of a key (the same task id,
        re-entering after a retry, keeps its own)."""
        if call.lock is None:
            return
        assert isinstance(fence, int), f"{call.lock}: {task_id} admitted without a fence"
        last = self.fences.get(call.lock)
        if last is not None:
            last_id, last_fence = last
            assert fence > last_fence or (fence == last_fence and task_id == last_id), (
                f"{call.lock}: {task_id} admitted with fence {fence} after {last_id} had "
                f"{last_fence}")
        self.fences[call.lock] = (task_id, fence)
        self.top_fence[call.lock] = max(fence, self.top_fence.get(call.lock, fence))

    def _pick(self, items: list[Any], i: int) -> Any:
        return items[i % len(items)]

    # -- rules: callers --------------------------------------------------------------------

    def _apply_async(self, call: Call, explicit_id: bool, inside: Live | None = None,
                     broker_down: bool = False, fast: tuple[float | None] | None = None,
                     options: dict[str, Any] | None = None) -> Any:
        """``apply_async``, checked; the result handed out, or None when it raised."""
        task = self._task(call.name)
        task_id = uuid.uuid4().hex if explicit_id else None
        before = len(self.published)
        self.calling, self.broker_down, self.fast = call, broker_down, fast
        if inside is not None:
            task.request_stack.push(inside.request)
        try:
            result = task.apply_async((call.k, call.x), task_id=task_id, **call.options(),
                                      **(options or {}))
        except IdempotencyKeyReused:
            assert call.key is not None, f"{call}: IdempotencyKeyReused without an explicit key"
            assert not self._new_messages(before)
            return None
        except IdempotencyOutcomeUnknown as exc:
            assert self._lapsed(call), f"{call}: {exc}, but its record has not lapsed"
            assert not self._new_messages(before)
            return None
        except BrokerDown:
            assert broker_down and not self._new_messages(before)
            return None
        finally:
            if inside is not None:
                task.request_stack.pop()
            self.calling, self.broker_down, self.fast = None, False, None
        new = self._new_messages(before)
        if fast is not None:
            new = new[:1]  # a fast worker's own publishes follow the call's
        assert len(new) <= 1, f"one apply_async published {new}"
        if new:
            assert result.id == new[0].task_id, f"{call}: handed {result.id}, published {new}"
        if explicit_id:
            assert result.id == task_id and new, (
                f"{call}: a caller-given id must be published (got {result.id}, {new})")
        if isinstance(result, ReplayedResult):
            assert not new and result.state == "SUCCESS", (result, result.state)
            self._check_replay(call, result.id, result.result, f"apply_async{call}")
        elif not new:
            holders = self._holders(call)
            assert result.id in holders, (
                f"duplicate apply_async{call} handed out {result.id}, but its keys are held "
                f"by {holders}")
        self.handed.append(Handed(result, call, "apply_async"))
        return result

    @rule(target=calls, task=st.sampled_from(TASKS), k=st.sampled_from(KEYS),
          x=st.integers(0, 1), key=st.sampled_from(EXPLICIT), explicit_id=st.booleans())
    @guarded
    def enqueue(self, task: str, k: str, x: int, key: str | None, explicit_id: bool) -> Call:
        call = Call.of(task, k, x, key)
        self._apply_async(call, explicit_id)
        return call

    @rule(call=calls, explicit_id=st.booleans())
    @guarded
    def enqueue_again(self, call: Call, explicit_id: bool) -> None:
        """A duplicate: the same arguments (and the same explicit idempotency key)."""
        self._apply_async(call, explicit_id)

    @rule(task=st.sampled_from(TASKS), k=st.sampled_from(KEYS), x=st.integers(0, 1),
          key=st.sampled_from(EXPLICIT), explicit_id=st.booleans())
    @guarded
    def enqueue_while_the_broker_is_down(self, task: str, k: str, x: int, key: str | None,
                                         explicit_id: bool) -> None:
        """The publish raises: the claims taken for it are removed (a duplicate is still
        answered, it publishes nothing)."""
        call = Call.of(task, k, x, key)
        self._apply_async(call, explicit_id, broker_down=True)

    @rule(task=st.sampled_from(TASKS), k=st.sampled_from(KEYS), x=st.integers(0, 1),
          key=st.sampled_from(EXPLICIT), retry=st.sampled_from((None, *COUNTDOWNS)))
    @guarded
    def enqueue_taken_at_once(self, task: str, k: str, x: int, key: str | None,
                              retry: float | None) -> None:
        """A fast worker starts the message (and, with ``retry``, retries it) before the
        producer's publish returns, that is, before the enqueue confirm."""
        call = Call.of(task, k, x, key)
        try:
            self._apply_async(call, False, fast=(retry,))
        finally:
            retried, self.fast_retried = self.fast_retried, None
        if retried is not None:
            self._check_hold(*retried, "a retry before the enqueue confirm")

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 7), task=st.sampled_from(TASKS), x=st.integers(0, 1),
          same_key=st.booleans())
    @guarded
    def enqueue_from_a_run(self, i: int, task: str, x: int, same_key: bool) -> None:
        """A body enqueues a call (its own successor, when it is the same task and key)."""
        run = self._pick(self.live, i)
        k = run.call.k if same_key else next(k for k in KEYS if k != run.call.k)
        self._apply_async(Call(task, k, x), False, inside=run)

    @rule(task=st.sampled_from(TASKS), k=st.sampled_from(KEYS), x=st.integers(0, 1))
    @guarded
    def send_task(self, task: str, k: str, x: int) -> None:
        """A message that skips apply_async (``send_task``, beat, another service)."""
        self._send_task(Call(task, k, x))

    def _send_task(self, call: Call) -> str:
        k, x = call.k, call.x
        before = len(self.published)
        self.calling = call
        try:
            result = self.app.send_task(call.name, (k, x))
        finally:
            self.calling = None
        new = self._new_messages(before)
        assert [m.task_id for m in new] == [result.id]
        assert "celery_kv" not in new[0].headers
        self.handed.append(Handed(result, call, "send_task"))
        return str(result.id)

    @rule(task=st.sampled_from(TASKS), k=st.sampled_from(KEYS), x=st.integers(0, 1),
          key=st.sampled_from(EXPLICIT))
    @guarded
    def eager_apply(self, task: str, k: str, x: int, key: str | None) -> None:
        call = Call.of(task, k, x, key)
        self.calling, self.eager_ran = call, None
        before = len(self.published)
        try:
            result = self._task(call.name).apply((k, x), **call.options())
        finally:
            self.calling = None
        assert not self._new_messages(before), "apply() published a message"
        if result.state == "SUCCESS":
            if self.eager_ran is not None:
                assert result.result == self.eager_ran
                self._completed(call, result.id, result.result)
            else:
                self._check_replay(call, None, result.result, f"apply{call}")
        else:
            allowed = (LockNotAcquired, IdempotencyInProgress, IdempotencyKeyReused,
                       IdempotencyOutcomeUnknown)
            assert isinstance(result.result, allowed), f"apply{call}: {result.result!r}"
            assert self.eager_ran is None
            if isinstance(result.result, IdempotencyOutcomeUnknown):
                assert self._lapsed(call), f"apply{call}: {result.result}, nothing lapsed"
            if isinstance(result.result, IdempotencyKeyReused):
                assert call.key is not None

    def eager_body(self, task: Any, call: Call) -> Any:
        """The body of every test task; only ``apply()`` runs it (the model runs the rest)."""
        assert task.request.is_eager, "a body ran outside apply()"
        calling = self.calling
        assert calling is not None and (call.task, call.k, call.x) == (
            calling.task, calling.k, calling.x), (call, calling)
        call = calling
        self._check_free_for(call, task.request.id)
        self._check_fence(call, task.request.id, task.fence)
        self.eager_ran = self._value(task.request.id)
        if call.burst:  # apply() runs at once with its own arguments, when the key is free
            trigger = self.eager_trigger
            assert trigger is not None and trigger.call == call, (trigger, call)
            join = Join(len(self.joins) + 1, trigger, task.request.id, len(self.bodies))
            self.joins.append(join)
            trigger.joined += 1
            self.bodies.append(Body(len(self.bodies) + 1, join, task.request.id))
            # it took the running slot over any lapsed run, and its final outcome empties it
            self.running_burst.pop(call.lock or ("", ""), None)
        return self.eager_ran

    # -- rules: burst triggers -------------------------------------------------------------

    @rule(task=st.sampled_from(BURSTS), k=st.sampled_from(KEYS),
          how=st.sampled_from(("apply_async", "explicit id", "link")),
          broker_down=st.booleans())
    @guarded
    def trigger(self, task: str, k: str, how: str, broker_down: bool) -> None:
        """A trigger of a burst task through apply_async: it starts a burst (published under
        the burst's id, due after the debounce) or joins the pending one (absorbed: handed
        the burst's id, nothing published); one with a caller-given id or a callback is
        published anyway and follows the burst. ``broker_down``: the publish raises."""
        trigger = self._new_trigger(task, k, how)
        self._window_closed(trigger.call)
        options = {"link": self._task("m.plain").si(k, 0, False)} if how == "link" else {}
        before = len(self.published)
        self.refused = None
        result = self._apply_async(trigger.call, how == "explicit id", broker_down=broker_down,
                                   options=options)
        new = self._new_messages(before)
        if result is None:  # the publish raised: a burst it started was unarmed
            refused = self.refused or {}
            if refused.get("published_duplicate"):  # but a follower's arguments joined
                self._join(trigger, str(refused["duplicate_of"]))
            trigger.refused = True
            return
        header = new[0].headers.get("celery_kv") or {} if new else {}
        if header.get("published_duplicate"):
            assert result.id != header["duplicate_of"], header
            self._join(trigger, str(header["duplicate_of"]))
        else:
            assert not new or header.get("burst_msg"), f"{trigger} published {new[0]}"
            self._join(trigger, result.id)

    @rule(task=st.sampled_from(BURSTS), k=st.sampled_from(KEYS))
    @guarded
    def trigger_by_send_task(self, task: str, k: str) -> None:
        """A trigger that skips apply_async: it joins a burst when a worker takes it."""
        trigger = self._new_trigger(task, k, "send_task")
        self._window_closed(trigger.call)
        trigger.task_id = self._send_task(trigger.call)

    @rule(task=st.sampled_from(BURSTS), k=st.sampled_from(KEYS))
    @guarded
    def trigger_eagerly(self, task: str, k: str) -> None:
        """``apply()``: runs at once with its own arguments unless the key's run is going."""
        trigger = self._new_trigger(task, k, "apply")
        self._window_closed(trigger.call)
        self.calling, self.eager_ran, self.eager_trigger = trigger.call, None, trigger
        before = len(self.published)
        try:
            result = self._task(trigger.call.name).apply((k, trigger.seq))
        finally:
            self.calling, self.eager_trigger = None, None
        assert not self._new_messages(before), "apply() published a message"
        if result.state == "SUCCESS":
            assert self.eager_ran is not None and result.result == self.eager_ran
        else:
            assert isinstance(result.result, LockNotAcquired), f"apply{trigger}: {result.result!r}"
            assert self.eager_ran is None
            trigger.refused = True

    # -- rules: newer calls win (replace, supersede), adopted bursts -------------------------

    @rule(task=st.sampled_from(NEWER), k=st.sampled_from(KEYS),
          how=st.sampled_from(("apply_async", "countdown", "explicit id", "link", "send_task")),
          broker_down=st.booleans())
    @guarded
    def newer_call(self, task: str, k: str, how: str, broker_down: bool) -> None:
        """A call of a replace or supersede task, with the next sequence number: plain,
        with a countdown, with a caller-given id or a callback (never folded into another
        id: a plain duplicate), or through send_task (held to the key at the worker).
        Replace: a queued holder's id is published again with this call's arguments.
        Supersede: this call's id takes the key from its holder, with a higher fence."""
        call = Call(task, k, next(self.seqs))
        if how == "send_task":
            self._send_task(call)
            return
        assert call.lock is not None
        key = self._lock_key(call.lock)
        holder = task_id_of(self.r.hget(key, "owner"))
        options: dict[str, Any] = {}
        if how == "countdown":
            options["countdown"] = COUNTDOWNS[-1]
        if how == "link":
            options["link"] = self._task("m.plain").si(k, call.x, False)
        before = len(self.published)
        result = self._apply_async(call, how == "explicit id", broker_down=broker_down,
                                   options=options)
        if result is None:
            return
        if how == "link":
            self.links.append((call, result.id))
        new = self._new_messages(before)
        owner, fence = self.r.hmget(key, "owner", "fence")
        if how == "countdown" and new:
            self._check_hold(call, result.id, COUNTDOWNS[-1], "a call with a countdown")
        if task == "sup" and new and not (new[0].headers.get("celery_kv") or {}).get(
                "published_duplicate"):
            assert owner == result.id, f"{call}: published {result.id}, but {key} is {owner}"
            top = self.top_fence.get(call.lock)
            assert top is None or int(fence) > top, (
                f"{call}: {result.id} holds {key} with fence {fence}, not above {top}")
            self.top_fence[call.lock] = int(fence)
            if holder is not None and holder != result.id:
                self.superseded.add(holder)
        elif owner == result.id and fence:
            self.top_fence[call.lock] = max(int(fence), self.top_fence.get(call.lock, 0))

    @precondition(lambda self: any(self._beating(run) for run in self.live))
    @rule(i=st.integers(0, 7))
    @guarded
    def renew(self, i: int) -> None:
        """One heartbeat of a running body (its leases renewed): a run a newer call
        superseded learns it (``kv_superseded``); every other live run still holds its
        keys."""
        run = self._pick([run for run in self.live if self._beating(run)], i)
        beat = run.execution.beat
        assert beat is not None
        beat.beat()
        if self._superseded_run(run):
            assert run.execution.superseded is not None, (
                f"{run} was superseded, but its renewal did not say so")
            self.told.add(run.no)
        else:
            assert run.execution.superseded is None, f"{run}: {run.execution.superseded}"
            assert not beat.lost, f"{run} lost {run.execution.run.lost} at a renewal"

    @staticmethod
    def _beating(run: Live) -> bool:
        beat = run.execution.beat
        return beat is not None and not beat.lost

    @precondition(lambda self: any(run.call.task == "sup" for run in self.live))
    @rule(i=st.integers(0, 7))
    @guarded
    def checkpoint(self, i: int) -> None:
        """``self.kv_checkpoint()`` in a supersede task's body: it raises ``Superseded``
        once a renewal told the run; the body lets it propagate and ends REVOKED, freeing
        nothing the newer holder owns."""
        run = self._pick([run for run in self.live if run.call.task == "sup"], i)
        task = self._task(run.msg.name)
        task.request_stack.push(run.request)
        run.request._kv_run = run.execution
        try:
            assert task.kv_superseded == (run.no in self.told), (
                f"{run}: kv_superseded is {task.kv_superseded}")
            try:
                task.kv_checkpoint()
            except Superseded as exc:
                caught: Superseded | None = exc
            else:
                caught = None
        finally:
            run.request._kv_run = None
            task.request_stack.pop()
        assert (caught is not None) == (run.no in self.told), (
            f"{run}: kv_checkpoint() raised {caught!r}")
        if caught is None:
            return
        self.live.remove(run)

        def revoked() -> None:  # what Execution.execute does with it
            run.execution.finish(FAILED)
            with pytest.raises(Ignore):
                run.execution._revoked(caught)

        self._frees_nothing_if_superseded(run, revoked)
        state = self.app.AsyncResult(run.task_id).state
        assert state == "REVOKED", f"{run} stopped at its checkpoint, but ended {state}"
        self.resolved.add(run.task_id)

    def _frees_nothing_if_superseded(self, run: Live, end: Callable[[], Any]) -> Any:
        """A superseded run's end (its final phase, a retry's hand-back, a terminate)
        leaves the key as the newer holder has it."""
        if not self._superseded_run(run):
            return end()
        assert run.call.lock is not None
        key = self._lock_key(run.call.lock)
        before = self.r.hgetall(key)
        try:
            return end()
        finally:
            after = self.r.hgetall(key)
            assert after == before, f"superseded {run} changed {key}: {before} -> {after}"

    @precondition(lambda self: self.pending)
    @rule(i=st.integers(0, 7), how=st.sampled_from(("apply_async", "link")))
    @guarded
    def trigger_after_the_burst_message_is_lost(self, i: int, how: str,
                                                broker_down: bool = False) -> None:
        """Time passes for a pending burst's message (the model's clock: its deadline
        ``pexp`` moves into the past), so the next trigger presumes it lost and adopts the
        burst: the same id, published again with a new nonce. The old message is still
        queued; when it comes, it is stale. (Not with a caller-given id, nor with a
        publish that raises: the replay tests of findings 12 and 13 keep those.)"""
        burst = self._pick(list(self.pending), i)
        call = self.ident[next(key for key in self.ident if key[0] == burst)]
        assert call.lock is not None
        self.r.eval(OVERDUE_IF_PENDING, 1, self._burst_key(call.lock), burst)
        self.trigger(call.task, call.k, how, broker_down)

    # -- rules: the worker -----------------------------------------------------------------

    @precondition(lambda self: self.queue)
    @rule(i=st.integers(0, 7))
    @guarded
    def start(self, i: int) -> None:
        msg = self.queue.pop(i % len(self.queue))
        if msg not in self.delivered:
            self.delivered.append(msg)
        self._deliver(msg, redelivered=False)

    @precondition(lambda self: self.delivered)
    @rule(i=st.integers(0, 7))
    @guarded
    def redeliver(self, i: int) -> None:
        """A broker redelivery (visibility timeout, a lost ack) of a message already taken."""
        self._deliver(self._pick(self.delivered, i), redelivered=True)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 7))
    @guarded
    def finish_success(self, i: int) -> None:
        run = self.live.pop(i % len(self.live))
        value = self._value(run.task_id)
        outcome = run.execution.outcome(value)
        assert not outcome.error
        self._frees_nothing_if_superseded(run, lambda: run.execution.finish(outcome))
        self._completed(run.call, run.task_id, value)
        self.resolved.add(run.task_id)
        if run.call.task in NEWER:
            self.succeeded.add(run.task_id)
        if run.call.burst:
            self._ended(run.task_id, True, value, run)
        self._call_back(run.msg, value)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 7))
    @guarded
    def finish_failure(self, i: int) -> None:
        run = self.live.pop(i % len(self.live))
        self._frees_nothing_if_superseded(run, lambda: run.execution.finish(FAILED))
        self.resolved.add(run.task_id)
        if run.call.burst:
            self._ended(run.task_id, False, None, run)
        self._call_back(run.msg, failed=True)

    @precondition(lambda self: any(run.call.task in TASKS for run in self.live))
    @rule(i=st.integers(0, 7),
          by=st.sampled_from(("itself", "another", "plain", "plain that fails")))
    @guarded
    def replace(self, i: int, by: str) -> None:
        """``return self.replace(sig)`` in the body: the replacement takes over the task
        id (Celery freezes it with the same id) and the claims; celery-kv links its settle
        callbacks to it, which finish the claims with the replacement's outcome. ``by``:
        the task itself, another coordinated task, or a task that is not coordinated.
        (Not a burst's run, nor a replace or supersede task's: the model leaves their
        replacements out.)"""
        run = self._pick([run for run in self.live if run.call.task in TASKS], i)
        self.live.remove(run)
        task = self._task(run.msg.name)
        k, x = run.call.k, run.call.x
        other = TASKS[(TASKS.index(run.call.task) + 1) % len(TASKS)]
        if by == "itself":
            sig = task.si(k, x)
        elif by == "another":
            sig = self._task(f"m.{other}").si(k, x)
        else:
            sig = self._task("m.plain").si(k, x, by == "plain that fails")
        before = len(self.published)
        task.request_stack.push(run.request)
        run.request._kv_run = run.execution
        self.calling = run.call if by == "itself" else Call(other, k, x)
        try:
            with pytest.raises(Ignore):
                task.replace(sig)
        finally:
            self.calling = None
            run.request._kv_run = None
            task.request_stack.pop()
        assert run.execution.replaced  # so execute() runs no final outcome on its Ignore
        new = [(m.name, m.task_id) for m in self._new_messages(before)]
        queued = [(m.name, m.task_id) for m in self.queue]
        # published, unless the same replacement of this id is queued already (a duplicate)
        assert new == [(sig.task, run.task_id)] or (
            not new and (sig.task, run.task_id) in queued), new

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 7), countdown=st.sampled_from(COUNTDOWNS))
    @guarded
    def retry(self, i: int, countdown: float) -> None:
        """``self.retry(countdown=...)`` in the body: the same id is published again."""
        self._retry(self.live[i % len(self.live)], countdown)

    def _retry(self, run: Live, countdown: float) -> None:
        self.live.remove(run)
        task = self._task(run.msg.name)
        before = len(self.published)
        task.request_stack.push(run.request)
        run.request._kv_run = run.execution
        try:
            with pytest.raises(Retry) as caught:
                self._frees_nothing_if_superseded(
                    run, lambda: task.retry(countdown=countdown))
            run.execution.hand_back(run.execution.retry_delay(caught.value.when))
        finally:
            run.request._kv_run = None
            task.request_stack.pop()
        new = self._new_messages(before)
        assert [m.task_id for m in new] == [run.task_id], new
        assert new[0].headers["retries"] == run.request.retries + 1
        self._check_hold(run.call, run.task_id, countdown, "a retry")

    def _check_hold(self, call: Call, task_id: str, countdown: float, what: str) -> None:
        """Claims handed back to a queued task id last its countdown plus the queued TTL."""
        queued_ttl = self._task(call.name)._kv_policy.queued_ttl
        least = (countdown + queued_ttl) * 1000 - 5000
        if call.burst:
            assert call.lock is not None
            key = self._burst_key(call.lock)
            if self.r.hmget(key, "rid", "rtok") == [task_id, ""]:
                ttl = self.r.pttl(key)
                assert ttl >= least, f"after {what} ({countdown} s) the burst of {task_id} " \
                                     f"lives {ttl} ms, not {countdown} s + {queued_ttl} s"
            return
        if call.lock is not None:
            key = self._lock_key(call.lock)
            if self.r.hget(key, "owner") == task_id:
                ttl = self.r.pttl(key)
                assert ttl >= least, f"after {what} ({countdown} s) the lock of {task_id} " \
                                     f"lives {ttl} ms, not {countdown} s + {queued_ttl} s"
        if call.idem is not None:
            key = self._record_key(call)
            if self.r.hmget(key, "s", "o") == ["p", task_id]:
                ttl = self.r.pttl(key)
                assert ttl >= least, f"after {what} ({countdown} s) the record of " \
                                     f"{task_id} lives {ttl} ms, not {countdown} s + " \
                                     f"{queued_ttl} s"

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 7), redelivered=st.booleans())
    @guarded
    def kill(self, i: int, redelivered: bool) -> None:
        """SIGKILL: the body never finishes and its keys stay until their leases run out.
        With acks_late and reject_on_worker_lost the broker redelivers the message; else
        the worker marks the id failed (WorkerLostError)."""
        run = self.live.pop(i % len(self.live))
        run.execution._stop_heartbeat()
        run.leases = {"burst"} if run.call.burst else {
            name for name, held in (("lock", run.call.lock), ("record", run.call.idem))
            if held is not None}
        self.dead.append(run)
        if redelivered:
            self.queue.append(run.msg)
        else:  # marked failed by the worker, which calls the message's errbacks
            self.resolved.add(run.task_id)
            if run.call.burst:
                self._ended(run.task_id, False, None)
            self._call_back(run.msg, failed=True)

    @precondition(lambda self: self.dead)
    @rule(i=st.integers(0, 7), which=st.sampled_from(("lock", "record")))
    @guarded
    def lease_runs_out(self, i: int, which: str) -> None:
        """A dead run's lease on its lock or its idempotency record runs out (the two
        leases are separate TTLs: ``lock_ttl`` and ``idempotency_lease``)."""
        run = self._pick(self.dead, i)
        self._expire(run, which if which in run.leases else next(iter(run.leases)))

    def _expire(self, run: Live, which: str) -> None:
        call = run.call
        if which == "burst" and call.lock is not None:
            self.r.eval(LAPSE_BURST_IF_OWNED, 1, self._burst_key(call.lock), run.token)
        if which == "lock" and call.lock is not None and not call.burst:
            self.r.eval(EXPIRE_IF_OWNED, 1, self._lock_key(call.lock), "owner", run.token)
        if which == "record" and call.idem is not None:
            self.r.eval(LAPSE_IF_OWNED, 1, self._record_key(call), run.token)
        run.leases.discard(which)
        if not run.leases:
            self.dead.remove(run)

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 15))
    @guarded
    def revoke(self, i: int) -> None:
        """``revoke(id)``: every worker discards the id's messages from now on, and each
        discard fires ``task_revoked`` (a running body goes on). A burst's id: the triggers
        it absorbed end REVOKED with it (followers fail with it)."""
        # ids a caller knows (not celery-kv's settle callbacks), the last queued first
        queued = [m.task_id for m in reversed(self.queue) if m.task_id in self.ids]
        ids = list(dict.fromkeys([*queued, *self.ids]))
        self.revoked.add(self._pick(ids, i))

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 7), terminate=st.booleans())
    @guarded
    def revoke_running(self, i: int, terminate: bool) -> None:
        """``revoke(id, terminate=...)`` of a running id: with terminate=True the body is
        killed and ``task_revoked`` fires for it (a burst's run: the key's next burst may
        fire; followers fail with it)."""
        run = self._pick(self.live, i)
        self.revoked.add(run.task_id)
        if not terminate:
            return
        self.live.remove(run)
        run.execution._stop_heartbeat()
        self.terminated.append(run)
        self._frees_nothing_if_superseded(run, lambda: self._announce_revoked(
            self._task(run.msg.name), run.msg, terminated=True))
        self.resolved.add(run.task_id)
        if run.call.burst:
            lock = run.call.lock or ("", "")
            if self.running_burst.get(lock) == run.task_id:
                del self.running_burst[lock]  # task_revoked's finish deleted it
            self._burst_revoked(run.msg)

    def _announce_revoked(self, task: Any, msg: Msg, terminated: bool) -> None:
        """What ``Request._announce_revoked`` sends: the request's context, as the
        worker's main process has it (celery-kv's hook calls ``release_revoked``)."""
        context = self._request(msg, False)._context
        task_revoked.send(sender=task, request=context, terminated=terminated,
                          signum=15 if terminated else None, expired=False)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    @guarded
    def one_live_body_per_singleton_key(self) -> None:
        """Invariant 1; and a live body holds its lock and its idempotency record."""
        seen: dict[Any, Live] = {}
        snapshot = self._snapshot() if self.live else {}
        for run in self.live:
            lock = run.call.lock
            if lock is None:
                continue
            if self._superseded_run(run):  # the one overlap allowed: it stops when told
                owner = snapshot.get(self._lock_key(lock), (0, {}))[1].get("owner")
                assert owner != run.token, f"{run} was superseded, but holds {lock}"
                continue
            assert lock not in seen, f"{lock}: {seen[lock]} and {run} run at once"
            seen[lock] = run
            if run.call.burst:  # the burst hash's running burst is this run
                fields = snapshot.get(self._burst_key(lock), (0, {}))[1]
                running = (fields.get("rid"), fields.get("rtok"))
                assert running == (run.task_id, run.token), (
                    f"{run} runs, but the burst hash of {lock} says {running}")
                continue
            owner = snapshot.get(self._lock_key(lock), (0, {}))[1].get("owner")
            assert owner == run.token, f"{run} runs, but the lock {lock} is held by {owner!r}"
        for run in self.live:
            if run.call.idem is not None:
                record = snapshot.get(self._record_key(run.call), (0, {}))[1]
                status, owner = record.get("s"), record.get("o")
                assert (status, owner) == ("p", run.token), (
                    f"{run} runs, but its idempotency record is {status!r} by {owner!r}")

    @invariant()
    @guarded
    def idempotent_bodies_complete_once(self) -> None:
        """Invariant 2 (also checked as each body completes)."""
        over = {key: n for key, n in self.recorded.successes.items() if n > 1}
        assert not over, f"completed more than once: {over}"

    @invariant()
    @guarded
    def every_handed_id_resolves(self) -> None:
        """Invariant 3: no id handed out was never sent, or will never end."""
        published = {m.task_id for m in self.published}
        pending = {m.task_id for m in self.queue} | {run.task_id for run in self.live}
        for handed in self.handed:
            result = handed.result
            if isinstance(result, ReplayedResult):
                continue  # checked when handed out: it holds the stored value
            assert result.id in published, (
                f"{handed.how}{handed.call} handed out {result.id}, which was never published")
            assert result.id in pending | self.resolved, (
                f"{handed.how}{handed.call} handed out {result.id}: neither queued, running "
                f"nor finished")

    @invariant()
    @guarded
    def every_key_has_a_ttl(self) -> None:
        """Invariant 4 (SCAN of the example's prefix)."""
        for key, (ttl, _) in self._snapshot().items():
            # -1: no TTL (-2: gone since the SCAN; 0: expiring in under a millisecond, as a
            # leading window of 1 ms does)
            assert ttl != -1, f"{key} has no TTL ({ttl})"

    @invariant()
    @guarded
    def every_claim_has_an_owner_that_will_release_it(self) -> None:
        """Invariant 6: a claim's owner is a queued id (or one whose replacement runs), or
        a run that is live or dead (whose lease runs out); never an id that will not run
        again."""
        queued = {m.task_id for m in self.queue}
        queued |= {m.kwargs["task_id"] for m in self.queue if m.name in SETTLES}
        queued |= {run.task_id for run in self.live}  # a replacement settles them at its end
        tokens = {run.token for run in (*self.live, *self.dead)}
        for key, owner in self._claims():
            if RUN_MARK in owner:
                assert owner in tokens, f"{key} is held by {owner}, a run that is over"
            else:
                assert owner in queued, (
                    f"{key} is held by {owner} ({self._calls_of(owner)}), which is not queued"
                    f"{' (revoked)' if owner in self.revoked else ''}")
        for key, pending, running in self._bursts():
            assert pending is None or pending in queued, (
                f"{key}: pending burst {pending}, whose message is not queued")
            if running is not None:
                task_id, token = running
                if token:
                    assert token in tokens, f"{key}: running burst {task_id}, a run that is over"
                else:
                    assert task_id in queued, (
                        f"{key}: burst {task_id} handed back, but its message is not queued")

    def _bursts(self) -> list[tuple[str, str | None, tuple[str, str] | None]]:
        """(key, pending burst's id, (running burst's id, token)) of every burst hash; a
        running burst whose lease ran out counts as none (its message may come back, or
        not)."""
        now, found = self._now_ms(), []
        for key, (_, fields) in self._snapshot().items():
            if ":burst:" not in key or key.endswith(":fence"):
                continue
            running = None
            if "rid" in fields and int(fields["rdl"]) > now:
                running = (fields["rid"], fields["rtok"])
            found.append((key, fields.get("pid"), running))
        return found

    def _calls_of(self, task_id: str) -> list[Call]:
        return [call for (known, _), call in self.ident.items() if known == task_id]

    def _claims(self) -> list[tuple[str, str]]:
        """(key, owner) of every lock and in-progress idempotency record (and successor)."""
        found = []
        for key, (_, fields) in self._snapshot().items():
            if "owner" in fields:  # a lock
                found.append((key, fields["owner"]))
            if "next" in fields:
                found.append((key + " (successor)", fields["next"]))
            if fields.get("s") == "p" and "o" in fields and fields.get("l") != "0":
                found.append((key, fields["o"]))  # an idempotency record, not lapsed
        return found

    def _lapsed(self, call: Call) -> bool:
        """The call's idempotency record says "ran, result unknown" (a dead run lapsed)."""
        if call.idem is None:
            return False
        fields = self.r.hgetall(self._record_key(call))
        return fields.get("s") == "p" and fields.get("l") == "0"

    # -- the end of an example -------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if not self.broken:
                self._drain()
        finally:
            for run in self.live:
                run.execution._stop_heartbeat()
            keys = self._scan(self.kv.store.keys.pattern())
            if keys:
                self.r.delete(*keys)
            self.r.close()
            self.kv.store.client.close()

    def _drain(self) -> None:
        """Run everything to its end; then nothing may be held (invariant 5)."""
        while self.dead:
            self._expire(self.dead[0], next(iter(self.dead[0].leases)))
        for _ in range(DRAIN_STEPS):
            if self.live:
                self.finish_success(0)
            elif self.queue:
                self.start(0)
            else:
                break
            self.one_live_body_per_singleton_key()
            self.idempotent_bodies_complete_once()
            self.every_handed_id_resolves()
            self.every_claim_has_an_owner_that_will_release_it()
        else:
            raise AssertionError(f"still not drained after {DRAIN_STEPS} steps: "
                                 f"{self.queue[:5]}, claims {self._claims()}")
        unresolved = [(h.how, h.call, h.result.id) for h in self.handed
                      if not isinstance(h.result, ReplayedResult)
                      and h.result.id not in self.resolved]
        assert not unresolved, f"handed out, never resolved: {unresolved}"
        held = self._claims()
        assert not held, f"held after every message ended: {held}"
        self.every_key_has_a_ttl()
        self._every_trigger_ran()
        self._every_callback_ran()

    def _every_callback_ran(self) -> None:
        """A call of a replace or supersede task with a callback (``link``), handed an id
        that ended in success, had its callback called (an ``m.plain`` message of its
        sequence number)."""
        called = {(m.args[0], m.args[1]) for m in self.published if m.name == "m.plain"}
        for call, task_id in self.links:
            if task_id in self.succeeded:
                assert (call.k, call.x) in called, (
                    f"{call} was handed {task_id}, which succeeded, but its callback "
                    "never ran")

    def _every_trigger_ran(self) -> None:
        """Invariants 3 and 5 of the bursts, once everything ran: every trigger joined a
        burst (or its caller was told it failed); every join is covered by a body of its
        key that started after it joined and runs the arguments of that join or a later
        one (a leading window absorbs triggers into a run that started: that is its rule);
        no burst hash holds a pending or running burst."""
        for trigger in self.triggers:
            assert trigger.joined or trigger.refused, f"{trigger} never joined a burst"
        for join in self.joins:
            if join.window or (join.burst in self.revoked_bursts
                               and join.burst not in self.fired):
                continue  # absorbed by a leading window, or by a burst revoked unrun
            call = join.trigger.call
            covering = [body for body in self.bodies if body.no > join.made
                        and (body.join.trigger.call.task, body.join.trigger.call.k)
                        == (call.task, call.k) and body.join.no >= join.no]
            assert covering, (
                f"trigger {call.x} ({join.trigger.how}, {call.task} {call.k}, joined "
                f"{join.burst}) is lost: the bodies of its key after it ran "
                f"{[(b.task_id, b.join.trigger.seq) for b in self.bodies[join.made:]]}")
        left = [(key, pending, running) for key, pending, running in self._bursts()
                if pending or running]
        assert not left, f"bursts left after every message ended: {left}"


SETTINGS = settings(max_examples=200, stateful_step_count=40, deadline=None,
                    report_multiple_bugs=False,
                    phases=[p for p in Phase if p is not Phase.explain],  # explain: slow
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture
def model(redis_srv: RedisServer) -> Iterator[type[LifecycleModel]]:
    LifecycleModel.url = f"redis://127.0.0.1:{redis_srv.port}/{DB}"
    yield LifecycleModel
    LifecycleModel.url = ""


@pytest.mark.timeout(900)  # 40-70 s when it passes; shrinking a failure takes minutes
def test_lifecycle_model(model: type[LifecycleModel]) -> None:
    run_state_machine_as_test(model, settings=SETTINGS)


def play(model: type[LifecycleModel], *steps: tuple[str, dict[str, Any]]) -> None:
    """Replay one example of the state machine step by step, as hypothesis does: the
    invariants after every step, and the teardown (every message run to its end)."""
    state = model()
    invariants = [state.one_live_body_per_singleton_key, state.idempotent_bodies_complete_once,
                  state.every_handed_id_resolves, state.every_key_has_a_ttl,
                  state.every_claim_has_an_owner_that_will_release_it]
    try:
        for name, arguments in steps:
            getattr(state, name)(**arguments)
            for check in invariants:
                check()
    finally:
        state.teardown()


# -- what the state machine found, replayed step by step ----------------------------------
#
# 1. A revoke of a running task id without terminate (Celery's default) leaves the body
#    running. Another delivery of that id (a broker redelivery, or the copy the engine
#    itself re-publishes when a delivery finds its own id running) is discarded by the
#    worker, which fires task_revoked: the keys of the running body must stay its own.


def test_a_discarded_delivery_of_a_revoked_id_leaves_its_running_singleton_locked(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("enqueue", {"task": "single", "k": "a", "x": 0, "key": None, "explicit_id": False}),
         ("start", {"i": 0}),  # the body runs
         ("revoke_running", {"i": 0, "terminate": False}),  # and goes on running
         ("redeliver", {"i": 0}),  # discarded: task_revoked
         ("send_task", {"task": "single", "k": "a", "x": 1}),
         ("start", {"i": 0}))  # must wait: key 'a' is running


def test_a_discarded_delivery_of_a_revoked_id_leaves_its_running_idempotency_claim(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("enqueue", {"task": "idem", "k": "a", "x": 0, "key": None, "explicit_id": False}),
         ("start", {"i": 0}),
         ("revoke_running", {"i": 0, "terminate": False}),
         ("redeliver", {"i": 0}),  # discarded: task_revoked
         ("send_task", {"task": "idem", "k": "a", "x": 0}),  # the same idempotency key
         ("start", {"i": 0}))  # must wait, then replay: the key's body completes once


# 2. A worker can take a message before the producer's publish() returns. When that run
#    retries with a countdown, its hand-back keeps the claims for the countdown plus the
#    queued TTL; the producer's enqueue confirm, which comes after, must not cut that short.


@pytest.mark.parametrize("task", ["single", "idem"])
def test_the_enqueue_confirm_keeps_a_retry_hand_back(
    model: type[LifecycleModel], task: str
) -> None:
    play(model, ("enqueue_taken_at_once",
                 {"task": task, "k": "a", "x": 0, "key": None, "retry": 60}))


# 3. (Not a bug: the other side of 1.) A run revoked with terminate=True frees its keys,
#    computed from its arguments when its message carries no celery-kv header (send_task).


def test_a_terminated_run_of_a_send_task_message_frees_its_keys(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("send_task", {"task": "idem_single", "k": "a", "x": 0}),
         ("start", {"i": 0}),
         ("revoke_running", {"i": 0, "terminate": True}))


# 4. ``self.replace(self.si(...))``: the replacement re-enters the task id's claims. It is
#    published without the run's celery-kv header, so it computes its keys from its
#    arguments: a per-call ``idempotency_key`` is lost, and the replacement holds (and
#    completes) the arguments' default key, which belongs to other calls.


def test_a_replacement_by_itself_keeps_the_explicit_idempotency_key(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("enqueue", {"task": "idem", "k": "a", "x": 0, "key": "K1", "explicit_id": False}),
         ("start", {"i": 0}),
         ("replace", {"i": 0, "by": "itself"}),
         ("start", {"i": 0}))  # the replacement must hold K1's record


# 5. A replaced task id, revoked while its replacement (a task that is not coordinated)
#    is queued: the worker discards the replacement and fires task_revoked for *its* task,
#    which celery-kv ignores, and the settle callbacks never run (a revoke calls none). The
#    claims handed to the replacement stay until the queued TTL runs out (an hour).


@pytest.mark.parametrize("task", ["single", "idem", "idem_single"])
def test_revoking_a_replaced_id_frees_its_claims(model: type[LifecycleModel], task: str) -> None:
    play(model,
         ("enqueue", {"task": task, "k": "a", "x": 0, "key": None, "explicit_id": False}),
         ("start", {"i": 0}),
         ("replace", {"i": 0, "by": "plain"}),
         ("revoke", {"i": 0}),
         ("start", {"i": 0}))  # the replacement, discarded


# 6. The same, when the replacement is another coordinated task: task_revoked then frees
#    the replacement's own keys (release_revoked) but not the replaced id's claims, which
#    the replacement's header names (``replaces``): they stay for the queued TTL.


@pytest.mark.parametrize("task", ["single", "idem", "idem_single"])
def test_revoking_an_id_replaced_by_another_coordinated_task_frees_its_claims(
    model: type[LifecycleModel], task: str
) -> None:
    play(model,
         ("enqueue", {"task": task, "k": "a", "x": 0, "key": None, "explicit_id": False}),
         ("start", {"i": 0}),
         ("replace", {"i": 0, "by": "another"}),
         ("revoke", {"i": 0}),
         ("start", {"i": 0}))  # the replacement, discarded


# 7. A replacement by another coordinated task claims that task's keys at its enqueue,
#    under the replaced task id. If the replaced message is delivered again (an ack lost
#    in a crash) before the replacement runs, that delivery re-enters the id's claims,
#    runs and marks the id finished; the replacement is then acknowledged without running
#    (the completion mark), and nothing releases the keys it claimed: they stay for the
#    queued TTL, and duplicates of that call are handed the replaced id.


def test_a_replacement_refused_by_the_completion_mark_frees_what_it_claimed(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("enqueue", {"task": "single", "k": "a", "x": 0, "key": None, "explicit_id": False}),
         ("start", {"i": 0}),
         ("replace", {"i": 0, "by": "another"}),  # by m.idem: claims its key for the id
         ("redeliver", {"i": 0}),  # the replaced message again: it runs
         ("finish_success", {"i": 0}),  # the id is finished
         ("start", {"i": 0}))  # the replacement: acknowledged without running


# -- bursts (debounce, keep-latest): what the state machine found -------------------------
#
# 8. A leading-edge burst whose message has not run yet absorbs a trigger that comes after
#    its window closed (1 ms here) and drops that trigger's arguments: the burst runs the
#    first trigger's, and no body ever runs the second's. task_burst_arm.lua's header says a
#    pending burst takes the absorbed trigger's arguments; its code keeps them for 'leading'.


def test_a_pending_leading_burst_takes_the_arguments_of_a_trigger_after_its_window(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("trigger", {"task": "lead", "k": "a", "how": "apply_async", "broker_down": False}),
         # the window (1 ms) closes before this one: it joins the burst still pending
         ("trigger", {"task": "lead", "k": "a", "how": "apply_async", "broker_down": False}),
         ("start", {"i": 0}))  # must run trigger 2's arguments (runs trigger 1's)


# 9. A burst that fires over a lapsed run (a killed worker) covers that run's triggers, and
#    a redelivery of the lapsed run's message follows it (lid/lby). Not when the message
#    came from send_task: it carries no message nonce, so its redelivery is armed again as
#    a new trigger and runs the older arguments after the newer burst ran.


def test_a_redelivered_send_task_message_follows_the_burst_that_fired_over_it(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("trigger_by_send_task", {"task": "latest", "k": "a"}),  # trigger 1
         ("start", {"i": 0}),  # armed at the worker; its body runs with 1
         ("kill", {"i": 0, "redelivered": True}),
         ("lease_runs_out", {"i": 0, "which": "lock"}),  # the model's clock: rdl passes
         ("trigger", {"task": "latest", "k": "a", "how": "apply_async", "broker_down": False}),
         ("start", {"i": 1}),  # trigger 2's burst fires over the lapsed run
         ("finish_success", {"i": 0}),
         ("start", {"i": 0}))  # the killed run's message: must end with run 2's result


# 10. A follower (caller-given id, or a callback) of a burst whose run was SIGKILLed and not
#     redelivered (the worker marked it failed): the lapsed run stays in the burst hash
#     (remembered for kv_queued_ttl), and the follower answers 'follow' to it, re-published
#     on every backoff, although the run's outcome is in the result backend already: it
#     resolves only when the hash forgets the run (an hour by default) or a later burst of
#     the key fires.


def test_a_follower_of_a_lapsed_run_ends_with_its_outcome(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("trigger", {"task": "latest", "k": "a", "how": "apply_async", "broker_down": False}),
         ("trigger", {"task": "latest", "k": "a", "how": "explicit id", "broker_down": False}),
         ("start", {"i": 0}),  # the burst fires, with trigger 2's arguments
         ("kill", {"i": 0, "redelivered": False}),  # marked failed by the worker
         ("lease_runs_out", {"i": 0, "which": "lock"}),
         ("start", {"i": 0}))  # the follower: must fail with the run (waits, then drains out)


# 11. apply() of a burst task takes the running slot when the key's run is not going,
#     including over a run whose lease lapsed (a killed worker), without recording what it
#     replaced (a burst that fires over a lapsed run records lid/lby). The lapsed run's
#     redelivered message then finds no record of its burst and runs its own arguments
#     (the first trigger's), not the ones its burst fired with.


def test_a_lapsed_burst_taken_over_after_an_eager_run_keeps_its_arguments(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("trigger", {"task": "deb", "k": "a", "how": "apply_async", "broker_down": False}),
         ("trigger", {"task": "deb", "k": "a", "how": "apply_async", "broker_down": False}),
         ("start", {"i": 0}),  # the burst fires with trigger 2's arguments
         ("kill", {"i": 0, "redelivered": True}),
         ("lease_runs_out", {"i": 0, "which": "lock"}),
         ("trigger_eagerly", {"task": "deb", "k": "a"}),  # runs at once, over the lapsed run
         ("start", {"i": 0}))  # the killed burst's message: must run trigger 2's arguments


# -- replace, supersede, adopted bursts: what the state machine found ---------------------
#
# 12. A trigger that adopts a burst whose message is presumed lost (overdue by the queued
#     TTL) gives the burst a new message nonce before it publishes. When that publish
#     raises, task_burst_unarm leaves the new nonce in place (a replace's undo gives the
#     holder its previous nonce back), so the burst's own message, still queued after all,
#     is stale when it comes and is dropped: the burst never runs, and the id its callers
#     were handed never resolves (until another trigger adopts it again).


def test_an_adoption_whose_publish_raises_leaves_the_burst_its_message(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("trigger", {"task": "latest", "k": "a", "how": "apply_async", "broker_down": False}),
         # the burst's message is presumed lost; the adopting trigger's publish raises
         ("trigger_after_the_burst_message_is_lost",
          {"i": 0, "how": "apply_async", "broker_down": True}),
         ("start", {"i": 0}))  # the burst's message: must fire the burst (dropped as stale)


# 13. A trigger with a caller-given task id that adopts a burst is published under the
#     burst's id, not its own: apply_async hands the caller another id, and the caller's
#     own id is never published (never resolves). Adoption happens in task_burst_arm.lua,
#     which answers 'ok' with the burst's id whatever the call's id (the engine's
#     ``id_held`` is not consulted, as it is for a plain absorb, which is published as a
#     follower).


def test_an_adopting_trigger_with_a_caller_given_id_is_published_under_it(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("trigger", {"task": "latest", "k": "a", "how": "apply_async", "broker_down": False}),
         ("trigger_after_the_burst_message_is_lost", {"i": 0, "how": "explicit id"}))


# 14. on_duplicate="replace" over a queued holder whose message carries no nonce (a
#     send_task message, or a duplicate published because its id is held, after a retry
#     handed the key back to its bare id): the newer call publishes a new message of the
#     id, but the holder's retry message is not stale (no ``singleton_msg``: never stale),
#     so it runs the older arguments, the id is marked finished, and the newer message is
#     then acknowledged unrun ("already finished"): the replacing call's arguments never run.


def test_a_replace_over_a_retried_send_task_holder_runs_the_newer_arguments(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("newer_call", {"task": "repl", "k": "a", "how": "send_task", "broker_down": False}),
         ("start", {"i": 0}),  # runs call 1 (send_task: no nonce)
         ("retry", {"i": 0, "countdown": 60}),  # the key goes back to its bare id
         ("newer_call", {"task": "repl", "k": "a", "how": "apply_async", "broker_down": False}),
         ("start", {"i": 0}))  # the retry message: must not run call 1 (call 2 replaced it)


# 15. on_duplicate="replace" over a queued holder that was published with a callback
#     (``link``): the newer call's message replaces the holder's, without the callback; the
#     holder's message is stale and dropped, so the id ends in success (with the newer
#     arguments) and the first caller's callback never runs. (A call with a callback is
#     never folded into another id; but one can be folded into.)


def test_a_replaced_message_keeps_its_callbacks(model: type[LifecycleModel]) -> None:
    play(model,
         ("newer_call", {"task": "repl", "k": "a", "how": "link", "broker_down": False}),
         # the teardown runs the id: call 1's callback must be called
         ("newer_call", {"task": "repl", "k": "a", "how": "apply_async", "broker_down": False}))


# 16. A burst's stale message (its id was adopted and published again with a new nonce)
#     is dropped only while the burst is pending: task_burst_fire.lua checks the nonce in
#     the pending branch alone. Once the burst ran and was handed back (a retry) or its run
#     lapsed (a killed worker), the stale message takes the burst over and runs the body,
#     ahead of the retry's countdown (or for an id the worker already marked failed).


def test_a_stale_burst_message_never_takes_its_burst_over(
    model: type[LifecycleModel],
) -> None:
    play(model,
         ("trigger", {"task": "latest", "k": "a", "how": "apply_async", "broker_down": False}),
         ("trigger_after_the_burst_message_is_lost", {"i": 0, "how": "apply_async"}),
         ("start", {"i": 1}),  # the adopted message fires the burst
         ("retry", {"i": 0, "countdown": 60}),  # handed back to its id
         ("start", {"i": 0}))  # the stale message: must be dropped (takes the burst over)
