"""Singleton: at most one queued-or-running instance per key (``mode="running"``: at most
one running; duplicates queue).

A lock named ``(task name, key)`` whose owner is a task id: the bare id while its message
is queued, ``<id>#run:<nonce>`` while one execution runs. Its fence is handed to the body
as ``self.fence``. A run that enqueues its own successor (a polling loop) records it in
the lock: the successor is published and takes the key when the run ends.
"""

from __future__ import annotations

import logging
from typing import Any

from ... import signals
from ...errors import DuplicateTask, LockNotAcquired
from ...primitives._arguments import text, to_ms
from ...primitives.lock import DEFAULT_FENCE_TTL
from ...store import Step
from ..context import Context, Enqueue, Run
from ..keys import KeySpec, task_id_of
from ..options import Option, TaskDefinition, choice, flag, key_spec, seconds
from .base import Duplicate, Feature, Outcome, Skip, Wait

log = logging.getLogger("celery_kv.celery")

FENCE_MS = to_ms(DEFAULT_FENCE_TTL)

ENABLED = Option("singleton", "at most one instance per key (`True`/`False`)", flag, False)
KEY = Option("singleton_key", "template (`\"{tenant_id}\"`) or callable; default: all "
             "arguments", key_spec)
MODE = Option("singleton_mode", "`\"queued\"`: one queued-or-running; `\"running\"`: "
              "duplicates queue but never run at once; `\"latest\"`: one running and one "
              "pending, a newer call replaces the pending one's arguments (keep-latest)",
              choice("queued", "running", "latest"), "queued")
LOCK_TTL = Option("lock_ttl", "running lease of singleton and concurrency slots, renewed "
                  "by a heartbeat; a SIGKILLed worker frees its keys within about this long",
                  seconds, 30.0, "kv_lock_ttl")
ON_DUPLICATE = Option("on_duplicate", "a duplicate `apply_async`: `\"return_existing\"` "
                      "(the holder's `AsyncResult`) or `\"raise\"` (`DuplicateTask`)",
                      choice("return_existing", "raise"), "return_existing")
ON_LOCKED = Option("on_locked", "a run finding the key held: `\"retry\"` (wait), `\"skip\"` "
                   "(return None) or `\"raise\"` (`LockNotAcquired`)",
                   choice("retry", "skip", "raise"), "retry")


class Singleton(Feature):
    name = "singleton"
    options = (ENABLED, KEY, MODE, LOCK_TTL, ON_DUPLICATE, ON_LOCKED)
    header_fields = ("singleton_key",)

    def __init__(self, task: TaskDefinition) -> None:
        self.task_name = task.name
        self.key: KeySpec | None = task.get(KEY)
        self.mode: str = task.get(MODE)
        self.lease = task.get(LOCK_TTL)
        self.on_duplicate: str = task.get(ON_DUPLICATE)
        self.on_locked: str = task.get(ON_LOCKED)
        self.claims_at_enqueue = self.mode == "queued"

    @classmethod
    def configure(cls, task: TaskDefinition) -> Singleton | None:
        enabled = bool(task.get(ENABLED))
        task.needs(KEY, enabled, "singleton")
        feature = cls(task)  # checks every option, even when off
        if feature.mode == "latest":
            return None  # a burst of one pending run: the debounce feature runs it
        return feature if enabled else None

    # -- keys ---------------------------------------------------------------------------

    def fill_header(self, ctx: Context) -> None:
        if not isinstance(ctx.header.get("singleton_key"), str):
            call = ctx.call
            ctx.header["singleton_key"] = (call.fingerprint if self.key is None
                                           else self.key.render(call))

    def describe(self, ctx: Context) -> dict[str, Any]:
        return {"singleton": ctx.header["singleton_key"]}

    def _keys(self, ctx: Context) -> tuple[str, str]:
        found: tuple[str, str] | None = ctx.state.get("singleton_keys")
        if found is None:
            name = (self.task_name, ctx.header["singleton_key"])
            lock = ctx.kv.store.keys.key("lock", name)
            found = ctx.state["singleton_keys"] = (lock, lock + ":fence")
        return found

    # -- enqueue ------------------------------------------------------------------------

    def claim(self, ctx: Enqueue) -> Step | None:
        if not self.claims_at_enqueue:
            return None
        return Step("task_singleton_claim", self._keys(ctx), (
            ctx.task_id, ctx.nonce, to_ms(ctx.policy.enqueue_claim_ttl), FENCE_MS,
            ctx.running_id or ""))

    def confirm(self, ctx: Enqueue) -> Step | None:
        if not self.claims_at_enqueue:
            return None
        lock, _ = self._keys(ctx)
        return Step("task_singleton_confirm", (lock,),
                    (ctx.task_id, to_ms(ctx.policy.queued_ttl + ctx.delay)))

    def duplicate(self, ctx: Enqueue, reply: list[Any]) -> Duplicate:
        key = ctx.header["singleton_key"]
        holder = task_id_of(text(reply[1])) or ctx.task_id
        refuse = None
        if self.on_duplicate == "raise" and holder != ctx.task_id:
            refuse = DuplicateTask(key, holder, self.task_name)
        return Duplicate(self.name, key, holder, refuse=refuse)

    # -- execution ----------------------------------------------------------------------

    def _run_args(self, run: Run, hold: float) -> tuple[Any, ...]:
        assert self.lease is not None
        return (run.token, run.task_id, to_ms(self.lease), FENCE_MS, to_ms(hold), self.mode)

    def start(self, run: Run) -> Step:
        return Step("task_singleton_start", self._keys(run),
                    self._run_args(run, run.policy.undo_hold))

    def started(self, run: Run, reply: list[Any]) -> None:
        fence = text(reply[1])
        run.request.kv_fence = int(fence) if fence else None

    def denied(self, run: Run, reply: list[Any]) -> Wait | Skip:
        key = run.header["singleton_key"]
        owner, pttl, why = text(reply[1]), int(reply[2]), text(reply[3])
        holder = task_id_of(owner)
        signals.emit(signals.lock_contended, run.task, task_id=run.task_id, key=key,
                     holder=holder, feature=self.name)
        busy = LockNotAcquired(key, holder, self.task_name)
        hint = pttl / 1000.0 if pttl >= 0 else None
        # An earlier delivery of this same task id, or the successor the holder enqueued,
        # or a message a caller holds the id of: wait, whatever on_locked says.
        if why or run.must_resolve or self.on_locked == "retry":
            return Wait(busy, hint=hint, quiet=why == "self")
        if self.on_locked == "skip":
            log.info("task %s[%s]: skipped, key %r is held by %s", self.task_name,
                     run.task_id, key, holder)
            return Skip()
        raise busy

    def renew(self, run: Run) -> Step:
        lock, _ = self._keys(run)
        assert self.lease is not None
        return Step("task_singleton_renew", (lock,), (run.token, to_ms(self.lease)))

    def hand_back(self, run: Run, hold: float) -> Step:
        return Step("task_singleton_hand_back", self._keys(run), self._run_args(run, hold))

    def finish(self, run: Run, outcome: Outcome, revoke: str = "") -> Step:
        return Step("task_singleton_finish", self._keys(run), (
            "" if revoke else run.token, run.task_id, to_ms(run.policy.queued_ttl), FENCE_MS,
            "1" if revoke == "terminated" else ""))
