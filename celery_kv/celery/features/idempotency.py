"""Idempotency: run once per key; duplicates get the stored outcome.

The idempotency primitive's record (``Idempotency``), owned by a task id: claimed at
``apply_async``, taken over by the run, completed with the task's return value (or with
the error that kept it from being stored: the body ran, so its effects happened, and a
duplicate must not run it again). A failed run releases the claim so a retry can run. A run
whose lease lapses without an outcome (its worker killed, or cut off from Redis for longer
than ``kv_completion_deadline`` as the body ended) leaves "ran, result unknown": duplicates
raise ``IdempotencyOutcomeUnknown``; only a redelivery of its own task id runs it again.
"""

from __future__ import annotations

import logging
from typing import Any

from ... import signals
from ...errors import IdempotencyInProgress, IdempotencyKeyReused, IdempotencyOutcomeUnknown
from ...primitives._arguments import text, to_ms
from ...store import Step, codec
from ..context import Context, Enqueue, Run
from ..keys import KeySpec, short_key, task_id_of
from ..options import Option, TaskDefinition, flag, key_spec, seconds
from .base import Duplicate, Feature, Outcome, Wait

log = logging.getLogger("celery_kv.celery")

ENABLED = Option("idempotent", "run once per key, replay the stored result (`True`/`False`)",
                 flag, False)
KEY = Option("idempotency_key", "template or callable; default: all arguments (also per "
             "call: `apply_async(..., idempotency_key=\"order-42\")`)", key_spec)
TTL = Option("idempotency_ttl", "how long a completed result is replayed", seconds, 86400.0,
             "kv_idempotency_ttl")
LEASE = Option("idempotency_lease", "running lease of an idempotency claim, renewed by a "
               "heartbeat", seconds, 30.0, "kv_idempotency_lease")


def explicit_key(task_name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"task {task_name!r}: idempotency_key={value!r} must be a non-empty string"
        )
    return short_key(value)


class Idempotency(Feature):
    name = "idempotency"
    counts = {
        "task_idempotency_claim": "deny:2=completed>deduplicated;deny:2=in_progress>deduplicated",
        "task_idempotency_start": "ok>admitted;stop:5=>replayed;deny:2=reused>-;"
                                  "deny:2=unknown>-;deny>deduplicated",
        "task_idempotency_renew": "deny>lost",
    }
    options = (ENABLED, KEY, TTL, LEASE)
    header_fields = ("idempotency_key", "idempotency_fingerprint")
    call_options = ("idempotency_key",)
    stores_result = True
    outcome_must_land = True

    def __init__(self, task: TaskDefinition) -> None:
        self.task_name = task.name
        self.key: KeySpec | None = task.get(KEY)
        self.ttl: float = task.get(TTL)
        self.lease = task.get(LEASE)
        if self.lease > self.ttl:
            raise ValueError(
                f"task {task.name!r}: idempotency_lease={self.lease!r} must not exceed "
                f"idempotency_ttl={self.ttl!r}"
            )
        self.claims_at_enqueue = True

    @classmethod
    def configure(cls, task: TaskDefinition) -> Idempotency | None:
        enabled = bool(task.get(ENABLED))
        task.needs(KEY, enabled, "idempotent")
        feature = cls(task)
        return feature if enabled else None

    # -- keys ---------------------------------------------------------------------------

    def call_option(self, header: dict[str, Any], name: str, value: Any) -> None:
        header["idempotency_key"] = explicit_key(self.task_name, value)

    def fill_header(self, ctx: Context) -> None:
        header = ctx.header
        if not isinstance(header.get("idempotency_fingerprint"), str):
            header["idempotency_fingerprint"] = ctx.call.fingerprint
        if not isinstance(header.get("idempotency_key"), str):
            call = ctx.call
            header["idempotency_key"] = short_key(
                call.fingerprint if self.key is None else self.key.render(call))

    def describe(self, ctx: Context) -> dict[str, Any]:
        return {"idempotency": ctx.header["idempotency_key"]}

    def primitive(self, kv: Any, namespace: str) -> Any:
        """The idempotency primitive that holds this task's records (for tools)."""
        return kv.idempotency(namespace, self.ttl, self.lease)

    def _record(self, ctx: Context) -> tuple[str]:
        found: tuple[str] | None = ctx.state.get("idempotency_record")
        if found is None:
            key = (ctx.policy.namespace, ctx.header["idempotency_key"])
            found = ctx.state["idempotency_record"] = (ctx.kv.store.keys.key("idem", key),)
        return found

    def count_rules(self, step: Step, ctx: Any) -> str:
        """A finish that finds the claim gone loses the run's outcome (``lock_lost``)."""
        if step.script == "task_idempotency_finish":
            held = step.args[2] == "done" and ctx.state.get(self.name)
            return "ok:2=0>lost" if held else ""
        return super().count_rules(step, ctx)

    def _refused(self, ctx: Context) -> IdempotencyKeyReused:
        return IdempotencyKeyReused(ctx.header["idempotency_key"], self.task_name)

    # -- enqueue ------------------------------------------------------------------------

    def claim(self, ctx: Enqueue) -> Step:
        return Step("task_idempotency_claim", self._record(ctx), (
            ctx.task_id, ctx.nonce, ctx.header["idempotency_fingerprint"],
            to_ms(ctx.policy.enqueue_claim_ttl)))

    def confirm(self, ctx: Enqueue) -> Step:
        return Step("task_idempotency_confirm", self._record(ctx),
                    (ctx.task_id, to_ms(ctx.policy.queued_ttl + ctx.delay)))

    def duplicate(self, ctx: Enqueue, reply: list[Any]) -> Duplicate:
        why, key = text(reply[1]), ctx.header["idempotency_key"]
        if why == "reused":
            raise self._refused(ctx)
        holder = task_id_of(text(reply[2])) or ctx.task_id
        if why == "unknown":
            raise IdempotencyOutcomeUnknown(key, holder, self.task_name)
        if why == "completed":
            return Duplicate(self.name, key, holder, True, codec.loads(reply[3] or "null"),
                             text(reply[4]))
        return Duplicate(self.name, key, holder)

    # -- execution ----------------------------------------------------------------------

    def _run_args(self, run: Run, hold: float) -> tuple[Any, ...]:
        assert self.lease is not None
        return (run.token, run.task_id, run.header["idempotency_fingerprint"],
                to_ms(self.lease), to_ms(hold), to_ms(self.ttl))

    def start(self, run: Run) -> Step:
        return Step("task_idempotency_start", self._record(run),
                    self._run_args(run, run.policy.undo_hold))

    def started(self, run: Run, reply: list[Any]) -> None:
        run.state[self.name] = True  # this run holds the claim

    def stopped(self, run: Run, reply: list[Any]) -> Any:
        key, holder = run.header["idempotency_key"], task_id_of(text(reply[2]))
        error = text(reply[4])
        if error:
            raise TypeError(f"task {self.task_name!r}: idempotency key {key!r} ran in "
                            f"{holder} but its outcome is an error: {error}")
        result = codec.loads(reply[3] or "null")
        signals.emit(signals.task_replayed, run.task, task_id=run.task_id, key=key,
                     result=result, original=holder)
        log.info("task %s[%s]: replayed the result of %s (idempotency key %r)",
                 self.task_name, run.task_id, holder, key)
        return result

    def denied(self, run: Run, reply: list[Any]) -> Wait:
        why, key = text(reply[1]), run.header["idempotency_key"]
        if why == "reused":
            raise self._refused(run)
        holder, pttl = task_id_of(text(reply[2])), int(reply[3])
        if why == "unknown":
            raise IdempotencyOutcomeUnknown(key, holder, self.task_name)
        signals.emit(signals.task_deduplicated, run.task, task_id=run.task_id, holder=holder,
                     key=key, feature=self.name, stage="execute")
        return Wait(IdempotencyInProgress(key, holder, self.task_name),
                    hint=pttl / 1000.0 if pttl >= 0 else None, quiet=why == "self")

    def renew(self, run: Run) -> Step:
        assert self.lease is not None
        return Step("task_idempotency_renew", self._record(run), (run.token, to_ms(self.lease)))

    def hand_back(self, run: Run, hold: float) -> Step:
        return Step("task_idempotency_hand_back", self._record(run), self._run_args(run, hold))

    def finish(self, run: Run, outcome: Outcome, revoke: str = "") -> Step:
        return Step("task_idempotency_finish", self._record(run), (
            "" if revoke else run.token, run.task_id, "done" if outcome.done else "failed",
            outcome.raw, outcome.error, to_ms(self.ttl),
            "1" if revoke == "terminated" else "", run.header["idempotency_fingerprint"]))

    def finished(self, run: Run, reply: list[Any], outcome: Outcome) -> None:
        stored = int(reply[1])
        key = run.header["idempotency_key"]
        if stored == 2:
            log.warning("task %s[%s]: stored the outcome under idempotency key %r after its "
                        "lease had lapsed (Redis was out of reach as the body ended)",
                        self.task_name, run.task_id, key)
        if outcome.done and run.state.get(self.name) and not stored:
            log.warning("task %s[%s]: idempotency claim %r was lost before completion",
                        self.task_name, run.task_id, key)
            signals.emit(signals.lock_lost, run.task, task_id=run.task_id, key=key,
                         feature=self.name)
