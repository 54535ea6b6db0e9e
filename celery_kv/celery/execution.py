"""The execution guard: what a worker does around a task body (lifecycle rules 2-5, 7, 10-14).

Every phase is one round trip on a single Redis: the start phase runs the completion
check and each feature's start step as one script (``Store.run_phase``), in the order of
``FEATURES``; the final outcome runs each feature's finish step and the completion mark
as one script. A step that denies makes the script undo the steps before it, so a run
that must wait holds nothing and is charged nothing; it is re-published with the same
task id and a countdown, keeps its ``retries`` (no ``max_retries`` used, no worker slot
held) and ends with ``Retry``. The task object is never changed.

Outcomes are handled here, not in ``after_return`` (which Celery skips for RETRY,
IGNORED and REJECTED): a final outcome (success, failure, ``Ignore``, ``Reject``) runs
the finish phase; ``Retry`` hands the claims back to the bare task id for the countdown
plus the queued TTL, so the retried message re-enters them; ``replace()`` hands them to
the replacement, and the replacement's outcome finishes them (``settle``).
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Any, NoReturn

from celery.exceptions import Ignore, Reject, Retry

from .. import signals
from ..errors import CoordinationUnavailable, LockLost, Superseded, Throttled
from ..primitives._arguments import text, to_ms
from ..primitives.heartbeat import Heartbeat
from ..store import Step, codec
from ..store.retry import keep_trying
from .context import HEADER, Run, header_of
from .counting import tallied
from .delays import DEFERRED, consume
from .features.base import FAILED, Block, Drop, Feature, Outcome, Skip, Wait
from .keys import as_mapping, task_id_of
from .policy import TaskPolicy

log = logging.getLogger("celery_kv.celery")


class _Finished(Ignore):  # type: ignore[misc]
    """The completion mark says this task id already reached its final outcome."""


def wait_countdown(waits: int, base: float, hint: float | None) -> float:
    """Backoff while a key is busy: doubling from ``base`` up to 20x, never past the
    holder's remaining lease (``hint``), with jitter so waiters do not come back in step."""
    delay = min(base * 2.0**waits, base * 20)
    if hint is not None:
        delay = min(delay, max(hint, 0.05))
    return delay * random.uniform(0.8, 1.2)


def verdict(reply: Any) -> str:
    return text(reply[0])


class Execution:
    """One execution of a coordinated task: its phases, and what it holds between them."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.policy: TaskPolicy = run.policy
        self.store = run.kv.store
        self.beat: Heartbeat | None = None
        self.handed_back = False
        self.replaced = False
        self.finished = False
        #: set by the heartbeat when a newer call superseded this run (on_duplicate)
        self.superseded: Superseded | None = None

    # -- the whole run -------------------------------------------------------------------

    def execute(self) -> Any:
        run = self.run
        try:
            body, value = self.start()
            if body:
                if signals.task_admitted.receivers:
                    signals.emit(signals.task_admitted, run.task, task_id=run.task_id,
                                 keys=self.keys())
                began = time.perf_counter()
                value = run.task.run(*run.args, **run.kwargs)
                run.elapsed = time.perf_counter() - began
        except _Finished:
            log.info("task %s[%s]: already finished; redelivered message acknowledged "
                     "without running", self.policy.name, run.task_id)
            raise Ignore() from None
        except Retry as exc:
            self.hand_back(self.retry_delay(exc.when))
            raise
        except Ignore:
            if not self.replaced:  # a replaced run's claims now belong to its replacement
                self.finish(FAILED)
            raise
        except Superseded as exc:
            self.finish(FAILED)  # frees nothing of the newer holder's: not its token
            self._revoked(exc)
        except Throttled as exc:
            self.throttled(exc)
        except BaseException:
            self.finish(FAILED)
            raise
        outcome = self.outcome(value)
        self.finish(outcome)
        if outcome.error:
            raise TypeError(outcome.error)
        return value

    def keys(self) -> dict[str, str]:
        """``{feature: key}`` of this run (what signals and error messages name)."""
        return {what: str(key) for f in self.policy.features
                for what, key in f.describe(self.run).items()}

    def outcome(self, value: Any) -> Outcome:
        """A successful outcome, with the result's JSON when a feature stores it."""
        if not any(f.stores_result for f in self.policy.features):
            return Outcome(True, value)
        keys = ", ".join(f"{what} key {key!r}" for what, key in self.keys().items())
        try:
            raw = codec.dumps(value, what=f"result of task {self.policy.name!r} ({keys})")
        except TypeError as exc:
            return Outcome(True, value, "null", str(exc))
        return Outcome(True, value, raw)

    def _revoked(self, exc: Superseded) -> NoReturn:
        """A superseded run (or its queued message) ends REVOKED, and ``Ignore`` keeps
        Celery from writing another state over it."""
        run = self.run
        if run.eager:
            raise exc
        log.info("task %s[%s]: %s; recorded as revoked", self.policy.name, run.task_id, exc)
        if not run.task.ignore_result:
            _quietly(lambda: run.task.backend.mark_as_revoked(
                run.task_id, str(exc), request=run.request), "record a superseded run")
        raise Ignore() from exc

    # -- start ---------------------------------------------------------------------------

    def start(self) -> tuple[bool, Any]:
        """The start phase: (True, None) to run the body, (False, value) to end with value."""
        run, policy = self.run, self.policy
        run.fill_header()
        while True:
            owners: list[Feature | None] = []
            steps: list[Step] = []
            if policy.marks_completion:
                owners.append(None)
                steps.append(Step("task_done_check", (self.done_key(),)))
            for feature in policy.features:
                step = feature.start(run)
                if step is not None:
                    owners.append(feature)
                    steps.append(step)
            steps = tallied(policy, run, zip(owners, steps, strict=True))
            try:
                answer = self.store.run_phase("execution start", steps, policy.counters_ttl)
            except CoordinationUnavailable as exc:
                return self._unavailable(exc)
            last, owner = answer.replies[-1], owners[len(answer.replies) - 1]
            if verdict(last) == "deny":
                assert owner is not None
                action = owner.denied(run, last)
                if isinstance(action, Block):
                    action.until()
                    continue
                if isinstance(action, Skip):
                    return False, action.value
                if isinstance(action, Drop):
                    log.info("task %s[%s]: message dropped without running: %s",
                             policy.name, run.task_id, action.why)
                    self.finished = True  # no outcome: the task id lives on elsewhere
                    raise Ignore()
                self.defer(action)
            for held, reply in zip(owners, answer.replies, strict=False):
                if held is not None and verdict(reply) == "ok":
                    run.held.add(held.name)
                    held.started(run, reply)
            if verdict(last) == "stop":
                if owner is None:
                    # A finished id holds nothing: free what its bare id may still claim
                    # (a replacement's enqueue claim, say), and leave no second mark.
                    self.finish(FAILED, revoke="queued")
                    raise _Finished
                return False, owner.stopped(run, last)
            self._start_heartbeat()
            return True, None

    def done_key(self) -> str:
        return self.store.keys.key("done", self.run.task_id)

    def _unavailable(self, exc: CoordinationUnavailable) -> tuple[bool, Any]:
        """Apply kv_on_unavailable to a start phase that could not reach Redis."""
        run = self.run
        policy = self.policy.unavailable(self.policy.features)
        if policy == "raise" or run.eager:
            raise exc
        if policy == "run":
            log.warning("task %s[%s]: running without coordination: %s", self.policy.name,
                        run.task_id, exc)
            return True, None
        self.defer(Wait(exc, budget="unavailable_for",
                        max_total=self.policy.unavailable_max_delay))

    # -- waiting -------------------------------------------------------------------------

    def defer(self, wait: Wait) -> NoReturn:
        """Re-publish this task id after a countdown and end this run with ``Retry``.

        The start phase's undo has already handed every claim back to the bare task id,
        for long enough to cover the longest deferral (``TaskPolicy.undo_hold``).
        """
        run = self.run
        self.handed_back = True
        if run.eager:
            self.finish(FAILED)
            raise wait.reason  # nothing to re-publish to when run eagerly
        marks = dict(wait.marks)
        countdown = wait.countdown
        if countdown is None:
            waits = int(run.mark("waits", 0))
            countdown = wait_countdown(waits, self.policy.wait_interval, wait.hint)
            marks["waits"] = waits + 1
        if wait.budget is not None:
            spent = float(run.mark(wait.budget, 0.0))
            if spent + countdown > wait.max_total:
                self.finish(FAILED)
                raise wait.reason
            marks[wait.budget] = spent + countdown
        header = {**run.header, **marks, "attempt": run.request.retries}
        headers = {**as_mapping(run.request.headers), HEADER: header}
        sig = run.task.signature_from_request(
            run.request, run.args, run.kwargs, countdown=countdown,
            retries=run.request.retries, headers=headers,
        )
        try:
            sig.apply_async(**{DEFERRED: True})  # through the delay store (kv_delay_store)
        except Exception as exc:
            self.finish(FAILED)
            raise Reject(exc, requeue=False) from exc
        if wait.quiet:
            self.finished = True  # over, without a final outcome: the earlier delivery has it
            raise Ignore()
        raise Retry(f"celery-kv: {wait.reason}", exc=wait.reason, when=round(countdown, 3),
                    sig=sig)

    def throttled(self, exc: Throttled) -> NoReturn:
        """The body raised ``Throttled``: its rate limit tells every worker to wait, and
        this run hands its claims back and is deferred (features/rate_limit.py)."""
        feature = self.policy.feature("rate_limit")
        if feature is None:
            self.finish(FAILED)
            raise exc
        try:
            wait = feature.throttled(self.run, exc)
        except Exception:  # a bad retry_after, say: the run fails and lets go of its keys
            self.finish(FAILED)
            raise
        self.hand_back(float(wait.countdown or 0.0))
        self.defer(wait)

    def retry_delay(self, when: Any) -> float:
        """The countdown of a retry (``Retry.when``: seconds or an ETA)."""
        if isinstance(when, (int, float)) and not isinstance(when, bool):
            return max(float(when), 0.0)
        if isinstance(when, datetime):
            app = self.run.task.app
            return max(float((when - app.now()).total_seconds()), 0.0)
        return float(self.run.task.default_retry_delay or 0)

    # -- leases --------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        run = self.run
        renewing = [f for f in self.policy.features if f.name in run.held and f.lease]
        if not renewing:
            return
        ttl = min(float(f.lease or 0) for f in renewing)

        def renew() -> bool:
            owned = [(f, s) for f, s in ((f, f.renew(run)) for f in renewing) if s is not None]
            steps = tallied(self.policy, run, owned)
            answer = self.store.run_phase("renew leases", steps, self.policy.counters_ttl)
            if len(answer.replies) == len(steps) and verdict(answer.replies[-1]) == "ok":
                return True
            feature, last = renewing[len(answer.replies) - 1], answer.replies[-1]
            if len(last) > 1 and text(last[1]) == "superseded":  # not a loss: no lock_lost
                self._superseded(feature, text(last[2]) if len(last) > 2 else "")
                renewing.remove(feature)
                return bool(renewing)  # the other leases stay renewed while it stops
            run.lost.append(feature.name)
            return False

        def on_lost() -> None:
            lost = run.lost or [f.name for f in renewing]
            run.lost = lost
            for name in lost:
                log.warning("task %s[%s]: lost its %s lease", self.policy.name, run.task_id,
                            name)
                signals.emit(signals.lock_lost, run.task, task_id=run.task_id,
                             key=self._key_of(name), feature=name)

        self.beat = Heartbeat(f"task:{self.policy.name}", ttl, renew, on_lost).start()

    def _superseded(self, feature: Feature, owner: str) -> None:
        """The heartbeat learned that a newer call took ``feature``'s key."""
        run = self.run
        key = str(self._key_of(feature.name))
        self.superseded = Superseded(key, task_id_of(owner) or None, self.policy.name)
        log.warning("task %s[%s]: %s", self.policy.name, run.task_id, self.superseded)
        if feature.terminate_when_superseded:
            _quietly(lambda: run.task.app.control.revoke(run.task_id, terminate=True),
                     "terminate a superseded run")

    def _key_of(self, feature_name: str) -> str | None:
        feature = self.policy.feature(feature_name)
        described = feature.describe(self.run) if feature is not None else {}
        return next(iter(described.values()), None)

    def _stop_heartbeat(self) -> None:
        beat, self.beat = self.beat, None
        if beat is not None:
            beat.stop()

    def checkpoint(self) -> None:
        """Raise ``Superseded`` when a newer call took this run's key, ``LockLost`` when
        this run lost a lease (``self.kv_checkpoint()``)."""
        if self.superseded is not None:
            raise Superseded(*self.superseded.args)
        if self.run.lost:
            name = self.run.lost[0]
            raise LockLost(str(self._key_of(name)), self.run.task_id, self.policy.name)

    # -- letting go ----------------------------------------------------------------------

    def hand_back(self, hold: float) -> None:
        """A retry: give the claims back to the bare task id for ``hold`` + the queued TTL."""
        if self.handed_back:
            return
        self.handed_back = True
        self._stop_heartbeat()
        run = self.run
        seconds = hold + self.policy.queued_ttl
        steps = [s for s in (f.hand_back(run, seconds) for f in self.policy.features
                             if f.name in run.held) if s is not None]
        run.held.clear()
        if steps:
            _quietly(lambda: self.store.run_phase("hand back", steps), "hand claims back")

    def replace(self, sig: Any) -> None:
        """``self.replace(sig)``: the replacement inherits the task id and the claims; its
        outcome (success or failure) finishes them through the ``settle`` callbacks.

        A replacement by this same task carries the run's header, so it re-enters the very
        keys (a per-call key included). A replacement by another single task carries a
        ``replaces`` field, so that a revoke of it frees the claims (``revoked_replacement``);
        for a canvas replacement a revoke leaves them to the queued TTL.
        """
        self.replaced = True
        self.hand_back(0.0)
        app, run = self.run.task.app, self.run
        context = {"task": self.policy.name, "task_id": run.task_id, "header": run.header}
        sig.link(app.tasks[SETTLE].s(**context))
        sig.link_error(app.tasks[SETTLE_FAILED].s(**context))
        if isinstance(getattr(sig, "task", None), str):  # a single task, not a canvas
            fields = run.header if sig.task == self.policy.name else {"replaces": context}
            headers = dict(as_mapping(sig.options.get("headers")))
            sig.set(headers={**headers, HEADER: fields})

    def finish(self, outcome: Outcome, revoke: str = "") -> None:
        """The final outcome: one phase of every feature's finish step, and the completion
        mark (not on revoke: a revoked id is refused by the worker itself). ``revoke``:
        "queued" frees only what the bare task id holds, "terminated" any run's too."""
        if self.finished:
            return
        self.finished = True
        run = self.run
        owners: list[Feature] = []
        steps = []
        for feature in self.policy.features:
            step = feature.finish(run, outcome, revoke)
            if step is not None:
                owners.append(feature)
                steps.append(step)
        steps = tallied(self.policy, run, zip(owners, steps, strict=True))
        if self.policy.marks_completion and not revoke:
            steps.append(Step("task_done_mark", (self.done_key(),),
                              (to_ms(self.policy.completion_ttl),)))
        if not steps:
            self._stop_heartbeat()
            return
        try:
            answer = self._final_phase(steps, outcome, revoke)
        finally:
            self._stop_heartbeat()
        if answer is None:
            return
        for feature, reply in zip(owners, answer.replies, strict=False):
            feature.finished(run, reply, outcome)

    def _final_phase(self, steps: list[Step], outcome: Outcome, revoke: str) -> Any:
        """Run the final phase; for a body that ran, keep trying through an outage.

        A released claim that cannot reach Redis lapses with its lease, which is what a
        release does anyway. A body's outcome is different: while a feature that keeps
        outcomes holds this run's claim, the phase is retried for up to
        ``kv_completion_deadline``, the heartbeat renewing the lease meanwhile. A lease
        that lapses meanwhile leaves "ran, result unknown", which refuses duplicates and
        which this run can still complete.
        """
        run = self.run
        must_land = outcome.done and not revoke and any(
            f.outcome_must_land and f.name in run.held for f in self.policy.features)

        def final() -> Any:
            return self.store.run_phase("final outcome", steps, self.policy.counters_ttl)

        if not must_land:
            return _quietly(final, "release the keys at the final outcome")
        deadline = self.policy.completion_deadline
        try:
            return keep_trying(final, deadline, f"task {self.policy.name}[{run.task_id}]: "
                               "the outcome of a body that ran")
        except CoordinationUnavailable as exc:
            log.error("task %s[%s]: gave up storing the outcome of a body that ran after "
                      "kv_completion_deadline=%ss: %s; once its lease lapses the key says "
                      "'ran, result unknown'", self.policy.name, run.task_id, deadline, exc)
            return None
        except Exception as exc:
            log.warning("celery-kv: could not store the final outcome: %s", exc)
            return None


SETTLE = "celery_kv.settle"
SETTLE_FAILED = "celery_kv.settle_failed"


def settle(app: Any, outcome: Outcome, task: str, task_id: str, header: dict[str, Any]) -> None:
    """Finish the claims of a replaced task id with its replacement's outcome."""
    target = app.tasks[task]
    request = SimpleNamespace(id=task_id, retries=0, headers={HEADER: header}, is_eager=False,
                              callbacks=None, errbacks=None, chain=None, chord=None, group=None)
    execution = Execution(Run(target, request, (), {}))
    if outcome.done:
        outcome = execution.outcome(outcome.result)
    execution.finish(outcome)


def revoked_replacement(app: Any, request: Any) -> bool:
    """``task_revoked`` for a task that replaced a coordinated one: free the replaced task
    id's claims (its settle callbacks will never run). False when it replaced nothing."""
    marker = header_of(request).get("replaces")
    if not isinstance(marker, dict) or marker.get("task") not in app.tasks:
        return False
    settle(app, FAILED, str(marker["task"]), str(marker["task_id"]),
           dict(as_mapping(marker.get("header"))))
    return True


def execute(task: Any, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``task``'s body under its coordination policy (called from ``KVTask.__call__``).

    A delivery from the delay store first takes its entry (a second copy ends here)."""
    consume(task, request)
    execution = Execution(Run(task, request, args, kwargs))
    request._kv_run = execution
    try:
        return execution.execute()
    finally:
        request._kv_run = None


def release_revoked(task: Any, request: Any, terminated: bool = False) -> None:
    """``task_revoked`` (worker main process): free the keys the revoked task id holds.

    Its queued claims always; a run's only when the revoke ``terminated`` it. A revoke
    without terminate leaves a running body running (Celery discards only the deliveries
    it has not started), and that run releases its own keys at its end.
    """
    run = Run(task, request, request.args, request.kwargs)
    try:
        run.fill_header()
    except TypeError:
        return  # no header and no arguments to compute the keys from: leases run out
    Execution(run).finish(FAILED, revoke="terminated" if terminated else "queued")


def _quietly(fn: Any, what: str) -> Any:
    """Best effort: a lease that cannot be released runs out by itself."""
    try:
        return fn()
    except Exception as exc:
        log.warning("celery-kv: could not %s: %s", what, exc)
        return None
