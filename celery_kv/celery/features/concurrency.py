"""Concurrency: at most N runs at once across all workers, per key, and fair between keys.

Each task has one ``FairPool`` (``primitives.fair_pool``): ``concurrency_limit`` slots per
``concurrency_key`` and, with ``concurrency_total``, N slots shared by all keys. A run
holds its slot on a lease (``lock_ttl``) renewed by the heartbeat, so a SIGKILLed
worker's slot comes back when its lease ends.

A run that finds no slot is parked in Redis, not polled: the start step stores the
message that will run it later (this delivery then ends without an outcome, ``Drop``).
When a slot frees, the finishing run's step grants it to the next waiter (weighted
round robin across keys, first come first served within a key) and this worker
publishes the waiter's message; its run turns the grant into its lease (the message
carries the grant's ticket). A grant whose message never comes lapses and its waiter
is granted again: every worker's maintenance tick runs the pump, so waiters move even
when no run ends. A second copy of a waiter's message is dropped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from ... import signals
from ...errors import ConcurrencyWaitersFull, LockNotAcquired
from ...primitives._arguments import text, to_ms
from ...primitives.fair_pool import FairPool, key_id
from ...store import Step, codec
from ..context import HEADER, Context, Run
from ..delays import publish_as_is
from ..keys import KeySpec, as_mapping
from ..options import Option, TaskDefinition, key_spec, positive_int
from .base import Drop, Feature, Outcome, Wait
from .singleton import LOCK_TTL

log = logging.getLogger("celery_kv.celery")

LIMIT = Option("concurrency_limit", "at most N running at once across all workers (per "
               "`concurrency_key`); the rest wait in Redis and start in turn", positive_int)
KEY = Option("concurrency_key", "per-key slots (`\"{tenant_id}\"`); default: task-wide",
             key_spec)
TOTAL = Option("concurrency_total", "at most N running at once across all keys of the task, "
               "shared fairly between keys (weighted round robin; see `set_weight`)",
               positive_int)
MAX_WAITING = Option("concurrency_max_waiting", "at most N runs waiting per key; one more "
                     "fails with `ConcurrencyWaitersFull`", positive_int)
TICKET = "concurrency_ticket"  # header field: the grant a parked message was published for
#: test hooks, called with the granted messages a final outcome is about to publish (a
#: test stalls here to kill the worker that should publish a grant)
before_publish: list[Callable[[list[Any]], None]] = []
#: hooks called with (task, task id) after a run was parked: the fault suite journals them,
#: to tell a waiter lost with the coordination Redis's data (an empty restart, eviction)
#: from a bug
after_park: list[Callable[[Any, str], None]] = []


class Concurrency(Feature):
    name = "concurrency"
    counts = {
        "task_concurrency_start": "ok>admitted;deny:2=spent>-;deny:2=full>denied;"
                                  "deny>contended,deferred",
        "task_concurrency_renew": "deny>lost",
    }
    options = (LIMIT, KEY, TOTAL, MAX_WAITING, LOCK_TTL)
    header_fields = (TICKET,)
    periodic: ClassVar[bool] = True  # the pump: waiters move when no run ends

    def __init__(self, task: TaskDefinition, limit: int) -> None:
        from ..config import ENGINE_OPTIONS  # config imports the features

        self.task_name = task.name
        self.limit = limit
        self.key: KeySpec | None = task.get(KEY)
        self.total: int = task.get(TOTAL) or 0
        self.max_waiting: int = task.get(MAX_WAITING) or 0
        self.lease = task.get(LOCK_TTL)
        queued = next(o for o in ENGINE_OPTIONS if o.name == "queued_ttl")
        self.queued_ttl: float = task.get(queued)
        self.max_defer = self.queued_ttl  # a waiter stays parked up to the queued TTL
        self._pool: tuple[Any, FairPool] | None = None

    @classmethod
    def configure(cls, task: TaskDefinition) -> Concurrency | None:
        limit = task.get(LIMIT)
        for option in (KEY, TOTAL, MAX_WAITING):
            task.needs(option, limit is not None, "concurrency_limit")
        task.needs(TOTAL, task.is_set(KEY), "concurrency_key")
        return None if limit is None else cls(task, limit)

    # -- keys ---------------------------------------------------------------------------

    def pool(self, kv: Any) -> FairPool:
        cached = self._pool
        if cached is None or cached[0] is not kv:
            cached = self._pool = (kv, FairPool(kv.store, self.task_name))
        return cached[1]

    def _slot_key(self, ctx: Context) -> str:
        found: str | None = ctx.state.get("concurrency_key")
        if found is None:
            found = "" if self.key is None else self.key.render(ctx.call)
            ctx.state["concurrency_key"] = found
        return found

    def describe(self, ctx: Context) -> dict[str, Any]:
        return {"concurrency": self._slot_key(ctx)}

    def _args(self, run: Run, mode: str, token: str | None = None,
              **extra: Any) -> tuple[Any, ...]:
        assert self.lease is not None
        lease = to_ms(self.lease)
        return self.pool(run.kv).args(
            token=run.token if token is None else token, kid=key_id(self._slot_key(run)),
            lease_ms=lease, limit=self.limit, total=self.total,
            queued_ms=to_ms(self.queued_ttl), grant_ms=lease, mode=mode, **extra)

    def _step(self, script: str, run: Run, args: tuple[Any, ...]) -> Step:
        return Step(script, self.pool(run.kv).keys, args)

    def _message(self, run: Run) -> tuple[str, str]:
        """The message that runs this task id later, under a new ticket (its JSON)."""
        ticket = uuid.uuid4().hex
        header = {**run.header, "attempt": run.request.retries, TICKET: ticket}
        headers = {**as_mapping(run.request.headers), HEADER: header}
        sig = run.task.signature_from_request(run.request, run.args, run.kwargs,
                                              retries=run.request.retries, headers=headers)
        what = f"message of task {self.task_name!r} (concurrency key {self._slot_key(run)!r})"
        return codec.dumps(dict(sig), what=what), ticket

    # -- execution ----------------------------------------------------------------------

    def start(self, run: Run) -> Step:
        message, new_ticket = ("", "") if run.eager else self._message(run)
        return self._step("task_concurrency_start", run, self._args(
            run, "start", ticket=str(run.mark(TICKET, "") or ""), message=message,
            max_waiting=self.max_waiting, new_ticket=new_ticket))

    def started(self, run: Run, reply: list[Any]) -> None:
        run.header.pop(TICKET, None)  # spent: a later message of this id carries none

    def denied(self, run: Run, reply: list[Any]) -> Wait | Drop:
        why, key = text(reply[1]), self._slot_key(run)
        if why == "full":
            raise ConcurrencyWaitersFull(key, int(reply[2]), self.task_name)
        if why == "spent":
            return Drop(f"concurrency key {key!r}: its ticket already ran or its waiter is "
                        "queued again (another copy of its message runs it)")
        signals.emit(signals.lock_contended, run.task, task_id=run.task_id, key=key,
                     holder=None, feature=self.name)
        if why == "busy":  # run eagerly: nothing to park
            ms = int(reply[2])
            return Wait(LockNotAcquired(f"concurrency:{key}", None, self.task_name),
                        hint=ms / 1000.0 if ms >= 0 else None)
        publish(run.task.app, reply[3:])
        for hook in after_park:
            try:
                hook(run.task, run.task_id)
            except Exception as exc:  # a hook never breaks a park
                log.warning("celery-kv: an after_park hook failed: %s", exc)
        return Drop(f"parked as waiter {int(reply[2])} of concurrency key {key!r}")

    def renew(self, run: Run) -> Step:
        return self._step("task_concurrency_renew", run, self._args(run, "renew"))

    def hand_back(self, run: Run, hold: float) -> Step:
        return self._step("task_concurrency_release", run, self._args(run, "hold"))

    def finish(self, run: Run, outcome: Outcome, revoke: str = "") -> Step | None:
        if self.name in run.held and not revoke:
            return self._step("task_concurrency_release", run, self._args(run, "grant"))
        # On a revoke the run token is not known: its lease runs out. A granted message
        # that ends without taking its slot (revoked, replayed, already finished) gives
        # its grant up at once, so the slot goes on to the next waiter.
        ticket = run.mark(TICKET, "")
        if not ticket:
            return None
        return self._step("task_concurrency_release", run,
                          self._args(run, "revoke", token=f"g:{ticket}"))

    def finished(self, run: Run, reply: list[Any], outcome: Outcome) -> None:
        messages = list(reply[1:])
        for hook in before_publish:
            hook(messages)
        publish(run.task.app, messages)

    # -- maintenance --------------------------------------------------------------------

    def tick(self, kv: Any, app: Any) -> None:
        """The pump: slots whose lease lapsed and free slots go to waiters."""
        assert self.lease is not None
        lease = to_ms(self.lease)
        publish(app, self.pool(kv).pump(self.limit, self.total, to_ms(self.queued_ttl), lease))


def publish(app: Any, messages: Iterable[Any]) -> None:
    """Publish granted waiters' messages. One that fails is not lost: its grant lapses and
    the waiter is granted again."""
    for raw in messages:
        try:
            publish_as_is(app, codec.loads(text(raw)))
        except Exception as exc:
            log.warning("celery-kv: could not publish a granted waiter's message (its grant "
                        "lapses and it is granted again): %s", exc)


# -- weights ----------------------------------------------------------------------------


def _feature(app: Any, task_name: str) -> Concurrency:
    task = app.tasks.get(task_name) if isinstance(task_name, str) else None
    if task is None:
        raise ValueError(f"no task named {task_name!r} in app {app.main!r}")
    policy = getattr(task, "_kv_policy", None)
    feature = policy.feature("concurrency") if policy is not None else None
    if feature is None:
        raise ValueError(f"task {task_name!r} has no concurrency_limit")
    return feature  # type: ignore[no-any-return]


def _pool(app: Any, task_name: str) -> FairPool:
    from ..install import install

    feature = _feature(app, task_name)
    return feature.pool(install(app))


def set_weight(app: Any, task_name: str, key: str, weight: float) -> float:
    """Give one concurrency key of a task its share of the task's pool (default 1): while
    keys wait, a key of weight 3 starts three runs for each run of a key of weight 1.
    ``key`` is the key as ``concurrency_key`` renders it. Kept in Redis, without a TTL."""
    pool = _pool(app, task_name)
    try:
        return pool.set_weight(key, weight)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"task {task_name!r}: {exc}") from None


def clear_weight(app: Any, task_name: str, key: str) -> bool:
    """Back to the default weight 1."""
    return _pool(app, task_name).clear_weight(key)


def weights(app: Any, task_name: str) -> dict[str, float]:
    """The weights set for a task's keys (the others have weight 1)."""
    return _pool(app, task_name).weights()


def pool_state(app: Any, task_name: str) -> dict[str, dict[str, int]]:
    """Per key: slots ``running`` (grants included) and runs ``waiting``."""
    return _pool(app, task_name).state()
