"""Singleton: at most one queued-or-running instance per key (``mode="running"``: at most
one running; duplicates queue).

A lock named ``(task name, key)`` whose owner is a task id: the bare id while its message
is queued, ``<id>#run:<nonce>`` while one execution runs. Its fence is handed to the body
as ``self.fence``. A run that enqueues its own successor (a polling loop) records it in
the lock: the successor is published and takes the key when the run ends.

A newer call can win over the holder (``on_duplicate``, tombstones in ``<lock>:superseded``):

- ``"replace"``: a queued holder keeps its task id, and the newer call publishes a new
  message of it with the newer arguments and countdown; the older message is stale at the
  worker (each message carries its call's nonce, ``singleton_msg``) and ends unrun, with
  no outcome. A running holder is a plain duplicate.
- ``"supersede"``: the newer call takes the key with the next fence. A queued holder's
  message ends REVOKED unrun; a running holder learns it at its next heartbeat
  (``self.kv_superseded``, ``self.kv_checkpoint()`` raises ``Superseded``, and a body that
  raises it ends REVOKED), or is terminated (``supersede_terminate=True``).
"""

from __future__ import annotations

import logging
from typing import Any

from ... import signals
from ...errors import DuplicateTask, LockNotAcquired, Superseded
from ...primitives._arguments import text, to_ms
from ...primitives.lock import DEFAULT_FENCE_TTL
from ...store import Step
from ..context import Context, Enqueue, Run
from ..keys import KeySpec, task_id_of
from ..options import Option, TaskDefinition, choice, flag, key_spec, seconds
from .base import Drop, Duplicate, Feature, Outcome, Skip, Wait

log = logging.getLogger("celery_kv.celery")

NEWER_WINS = ("replace", "supersede")  # on_duplicate choices where a newer call wins

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
                      "(the holder's `AsyncResult`), `\"raise\"` (`DuplicateTask`), "
                      "`\"replace\"` (a queued holder runs with the newer call's arguments "
                      "and countdown, under its task id) or `\"supersede\"` (the newer call "
                      "takes the key; the holder ends REVOKED: unrun if queued, told through "
                      "`self.kv_superseded` if running)",
                      choice("return_existing", "raise", "replace", "supersede"),
                      "return_existing")
SUPERSEDE_TERMINATE = Option("supersede_terminate", "with `on_duplicate=\"supersede\"`: "
                             "terminate a superseded run (`revoke(terminate=True)`) rather "
                             "than wait for it to check `self.kv_superseded`", flag, False)
ON_LOCKED = Option("on_locked", "a run finding the key held: `\"retry\"` (wait), `\"skip\"` "
                   "(return None) or `\"raise\"` (`LockNotAcquired`)",
                   choice("retry", "skip", "raise"), "retry")


class Singleton(Feature):
    name = "singleton"
    counts = {
        "task_singleton_claim": "deny>deduplicated",
        "task_singleton_start": "ok>admitted;deny:4=stale>-;deny:4=superseded>-;deny>contended",
        "task_singleton_renew": "deny:2=superseded>-;deny>lost",
    }
    options = (ENABLED, KEY, MODE, LOCK_TTL, ON_DUPLICATE, ON_LOCKED, SUPERSEDE_TERMINATE)
    header_fields = ("singleton_key", "singleton_msg")

    def __init__(self, task: TaskDefinition) -> None:
        self.task_name = task.name
        self.key: KeySpec | None = task.get(KEY)
        self.mode: str = task.get(MODE)
        self.lease = task.get(LOCK_TTL)
        self.on_duplicate: str = task.get(ON_DUPLICATE)
        self.on_locked: str = task.get(ON_LOCKED)
        self.supersede_terminate: bool = task.get(SUPERSEDE_TERMINATE)
        self.terminate_when_superseded = self.supersede_terminate
        self.claims_at_enqueue = self.mode == "queued"
        #: 'replace' or 'supersede' for the scripts (they read the tombstones), else ''
        self.newer_wins = self.on_duplicate if self.on_duplicate in NEWER_WINS else ""

    @classmethod
    def configure(cls, task: TaskDefinition) -> Singleton | None:
        enabled = bool(task.get(ENABLED))
        task.needs(KEY, enabled, "singleton")
        feature = cls(task)  # checks every option, even when off
        feature.check_newer_wins(task, enabled)
        if feature.mode == "latest":
            for option in (ON_DUPLICATE, ON_LOCKED):
                if task.is_set(option):
                    value = task.raw(option.name)
                    raise ValueError(f"{task.where(option)(value)} does nothing with "
                                     "singleton_mode='latest': every call joins the pending "
                                     "run and gets its id")
            return None  # a burst of one pending run: the debounce feature runs it
        return feature if enabled else None

    def check_newer_wins(self, task: TaskDefinition, enabled: bool) -> None:
        """``replace`` and ``supersede`` act on a queued claim: refuse them elsewhere."""
        if self.newer_wins:
            where = task.where(ON_DUPLICATE)(self.on_duplicate)
            if not enabled:
                raise ValueError(f"{where} needs singleton=True")
            if self.mode != "queued":
                raise ValueError(f"{where} needs singleton_mode='queued' (it is "
                                 f"{self.mode!r}): only a claim taken at apply_async can "
                                 "be replaced or superseded")
        if task.is_set(SUPERSEDE_TERMINATE) and self.on_duplicate != "supersede":
            raise ValueError(f"{task.where(SUPERSEDE_TERMINATE)(self.supersede_terminate)} "
                             f"needs on_duplicate='supersede' (it is {self.on_duplicate!r})")

    # -- keys ---------------------------------------------------------------------------

    def fill_header(self, ctx: Context) -> None:
        if not isinstance(ctx.header.get("singleton_key"), str):
            call = ctx.call
            ctx.header["singleton_key"] = (call.fingerprint if self.key is None
                                           else self.key.render(call))

    def describe(self, ctx: Context) -> dict[str, Any]:
        return {"singleton": ctx.header["singleton_key"]}

    def _keys(self, ctx: Context) -> tuple[str, str, str]:
        """The lock, its fence counter, and its tombstones (task ids and messages a newer
        call superseded or replaced)."""
        found: tuple[str, str, str] | None = ctx.state.get("singleton_keys")
        if found is None:
            name = (self.task_name, ctx.header["singleton_key"])
            lock = ctx.kv.store.keys.key("lock", name)
            found = ctx.state["singleton_keys"] = (lock, lock + ":fence", lock + ":superseded")
        return found

    # -- enqueue ------------------------------------------------------------------------

    def claim(self, ctx: Enqueue) -> Step | None:
        if not self.claims_at_enqueue:
            return None
        newer_wins = self.newer_wins
        if newer_wins == "replace" and ctx.state.get("id_held"):
            newer_wins = ""  # its own id must resolve: a plain duplicate, resolved at execution
        assert self.lease is not None
        tombstone_ms = to_ms(ctx.policy.queued_ttl + ctx.delay + self.lease)
        return Step("task_singleton_claim", self._keys(ctx), (
            ctx.task_id, ctx.nonce, to_ms(ctx.policy.enqueue_claim_ttl), FENCE_MS,
            ctx.running_id or "", newer_wins, tombstone_ms,
            "1" if ctx.state.get("id_held") else ""))

    def claimed(self, ctx: Enqueue, reply: list[Any]) -> None:
        """A replace publishes under the queued holder's id; every message of a replace
        task carries its call's nonce, so a newer call can make it stale."""
        if self.on_duplicate == "replace":
            ctx.header["singleton_msg"] = ctx.nonce
        if len(reply) > 3:
            how, holder = text(reply[2]), text(reply[3])
            if how == "replaced":
                ctx.task_id = holder
            if how in ("replaced", "superseded"):
                ctx.state["singleton_won"] = (how, holder)

    def confirm(self, ctx: Enqueue) -> Step | None:
        if not self.claims_at_enqueue:
            return None
        self._announce(ctx)
        lock = self._keys(ctx)[0]
        return Step("task_singleton_confirm", (lock,),
                    (ctx.task_id, to_ms(ctx.policy.queued_ttl + ctx.delay)))

    def _announce(self, ctx: Enqueue) -> None:
        """After the publish: signal a replace or a supersede (an undone one never was)."""
        won = ctx.state.pop("singleton_won", None)
        if won is None:
            return
        how, holder = won
        key = ctx.header["singleton_key"]
        if how == "replaced":
            log.info("task %s[%s]: message replaced by a newer call (key %r)",
                     self.task_name, holder, key)
            signals.emit(signals.task_replaced, ctx.task, task_id=holder, key=key)
        else:
            log.info("task %s[%s]: supersedes %s (key %r)", self.task_name, ctx.task_id,
                     holder, key)
            signals.emit(signals.task_superseded, ctx.task, task_id=ctx.task_id, key=key,
                         superseded=holder)

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
        message = str(run.header.get("singleton_msg") or "") if self.newer_wins else ""
        return (run.token, run.task_id, to_ms(self.lease), FENCE_MS, to_ms(hold), self.mode,
                self.newer_wins, message)

    def start(self, run: Run) -> Step:
        return Step("task_singleton_start", self._keys(run),
                    self._run_args(run, run.policy.undo_hold))

    def started(self, run: Run, reply: list[Any]) -> None:
        fence = text(reply[1])
        run.request.kv_fence = int(fence) if fence else None

    def denied(self, run: Run, reply: list[Any]) -> Wait | Skip | Drop:
        key = run.header["singleton_key"]
        owner, pttl, why = text(reply[1]), int(reply[2]), text(reply[3])
        holder = task_id_of(owner)
        if why == "stale":
            return Drop(f"a newer call replaced this message (key {key!r})")
        if why == "superseded":  # ends REVOKED, unrun (see execution)
            raise Superseded(key, holder or None, self.task_name)
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
        lock, _, tombstones = self._keys(run)
        assert self.lease is not None
        return Step("task_singleton_renew", (lock, tombstones), (
            run.token, to_ms(self.lease), run.task_id,
            "supersede" if self.newer_wins == "supersede" else ""))

    def hand_back(self, run: Run, hold: float) -> Step:
        return Step("task_singleton_hand_back", self._keys(run), self._run_args(run, hold))

    def finish(self, run: Run, outcome: Outcome, revoke: str = "") -> Step:
        return Step("task_singleton_finish", self._keys(run)[:2], (
            "" if revoke else run.token, run.task_id, to_ms(run.policy.queued_ttl), FENCE_MS,
            "1" if revoke == "terminated" else ""))
