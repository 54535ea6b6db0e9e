"""The execution guard: what a worker does around a task body (lifecycle rules 2-5, 7, 10).

Order: idempotency replay, cache, singleton lock, concurrency slot, rate limit, body.
The running token is ``<task id>#run:<nonce>``, new for every execution, so a second
delivery of the same task id (visibility timeout, ``acks_late`` after a crash) that
arrives while the first still runs is held off, never let in. Execution takes over
the queued claim of its own task id (``takeover=task_id``) in the same script call.

Outcomes are handled here, not in ``after_return`` (which Celery skips for RETRY,
IGNORED and REJECTED): a final outcome (success, failure, Ignore, Reject) releases
everything; ``Retry`` hands the claims back to the bare task id, with the queued TTL,
so the retried message re-enters them. A run that must wait (a busy key, a rate limit,
Redis down with policy "retry") re-publishes the same task id with a countdown and
the same ``retries`` (no ``max_retries`` used, no worker slot held) and raises
``Retry``; the task object is never changed.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from functools import cached_property
from typing import Any, NoReturn

from celery.exceptions import Reject, Retry

from .. import signals
from ..errors import (
    CoordinationUnavailable,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    KVError,
    LockNotAcquired,
    RateLimitExceeded,
)
from ..primitives.heartbeat import Heartbeat
from ..primitives.lock import Lock, describe
from ..primitives.semaphore import Semaphore
from ..store import codec
from .claims import HEADER, Coordination, Keys, keys_for, render
from .keys import Call, as_mapping, is_run_of, run_token, task_id_of
from .options import TaskPolicy

log = logging.getLogger("celery_kv.celery")

_MISSING: Any = object()


class _Skip(Exception):
    """on_locked="skip": end this run without running the body (the task returns None)."""


def header_of(request: Any) -> dict[str, Any]:
    """The celery-kv header of a request (worker: a message header; eager: ``headers``)."""
    found = getattr(request, HEADER, None)
    if found is None:
        found = as_mapping(getattr(request, "headers", None)).get(HEADER)
    return dict(as_mapping(found))


def wait_countdown(waits: int, base: float, hint: float | None) -> float:
    """Backoff while a key is busy: doubling from ``base`` up to 20x, never past the
    holder's remaining lease (``hint``), with jitter so waiters do not come back in step."""
    delay = min(base * 2.0**waits, base * 20)
    if hint is not None:
        delay = min(delay, max(hint, 0.05))
    return delay * random.uniform(0.8, 1.2)


def rate_limit_jitter(retry_after: float, denials: int) -> float:
    """Jitter added to ``retry_after``: its window widens with each denial of the same task,
    so a backlog of N waiting tasks does not all come back for every free slot."""
    return random.uniform(0, min(retry_after, 1.0) * min(2.0**denials, 32.0))


class Run:
    """One execution of a coordinated task: what it holds and how it lets go."""

    def __init__(self, task: Any, request: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.task = task
        self.request = request
        self.args = args
        self.kwargs = kwargs
        self.policy: TaskPolicy = task._kv_policy
        self.coord: Coordination = task._kv_coord
        self.task_id: str = request.id or uuid.uuid4().hex
        self.token = run_token(self.task_id, uuid.uuid4().hex[:12])
        self.header = header_of(request)
        self.canvas = bool(request.callbacks or request.errbacks or request.chain
                           or request.chord or request.group)
        self.lock: Lock | None = None  # the running lock, held by self.token
        self.queued_lock: Lock | None = None  # after a hand-back: held by the task id
        self.semaphore: Semaphore | None = None
        self.idem_owner: str | None = None  # who holds our idempotency claim now
        self.idem_beat: Heartbeat | None = None
        self.handed_back = False

    # -- keys ----------------------------------------------------------------------------

    @cached_property
    def call(self) -> Call:
        return Call(self.policy.name, self.policy.signature, self.args, self.kwargs)

    @cached_property
    def keys(self) -> Keys:
        """The keys claimed at enqueue (from the header), else computed from the arguments."""
        return Keys.from_header(self.policy, self.header) or keys_for(self.policy, self.call)

    # -- the whole run -------------------------------------------------------------------

    def execute(self) -> Any:
        try:
            result = self._guarded()
        except _Skip:
            self.release()
            return None
        except Retry:
            self.hand_back()
            raise
        except BaseException:
            self.release()
            raise
        self.release()
        return result

    def _guarded(self) -> Any:
        if self.policy.idempotency is not None:
            replayed = self._idempotency()
            if replayed is not _MISSING:
                return replayed
        result = self._cached() if self.policy.cache is not None else self._locked_body()
        if self.idem_owner is not None:
            self._complete(result)
        return result

    def _locked_body(self) -> Any:
        self._singleton()
        self._concurrency()
        self._rate_limit()
        return self.task.run(*self.args, **self.kwargs)

    # -- idempotency ---------------------------------------------------------------------

    def _idempotency(self) -> Any:
        policy = self.policy.idempotency
        assert policy is not None
        idem, key = self.coord.idempotency(), str(self.keys.idempotency)
        try:
            claim = idem.begin(key, self.token, self.keys.fingerprint, lease=policy.lease,
                               takeover=self.task_id)
        except IdempotencyKeyReused:
            raise IdempotencyKeyReused(key, self.policy.name) from None
        except CoordinationUnavailable as exc:
            self._unavailable("idempotency", exc)
            return _MISSING
        if claim.ours:
            self.idem_owner = self.token
            self.idem_beat = Heartbeat(
                f"idem:{self.policy.name}", policy.lease,
                renew=lambda: idem.renew(key, self.token, policy.lease),
                on_lost=lambda: self._lost("idempotency", key),
            ).start()
            return _MISSING
        holder = task_id_of(claim.owner)
        if claim.status == "completed":
            signals.emit(signals.task_replayed, self.task, task_id=self.task_id, key=key,
                         result=claim.result, original=holder)
            log.info("task %s[%s]: replayed the result of %s (idempotency key %r)",
                     self.policy.name, self.task_id, holder, key)
            return claim.result
        signals.emit(signals.task_deduplicated, self.task, task_id=self.task_id, holder=holder,
                     key=key, feature="idempotency", stage="execute")
        self._wait(claim.lease_left, IdempotencyInProgress(key, holder, self.policy.name))

    def _complete(self, result: Any) -> None:
        key = str(self.keys.idempotency)
        raw = codec.dumps(result, what=f"result of task {self.policy.name!r} "
                                       f"(idempotency key {key!r})")
        self._stop_idem_beat()
        owner, self.idem_owner = self.idem_owner, None
        try:
            stored = self.coord.idempotency().complete_raw(key, str(owner), raw)
        except KVError as exc:
            log.error("task %s[%s]: result ran but could not be stored for idempotency key "
                      "%r: %s", self.policy.name, self.task_id, key, exc)
            return
        if not stored:
            log.warning("task %s[%s]: idempotency claim %r was lost before completion",
                        self.policy.name, self.task_id, key)
            signals.emit(signals.lock_lost, self.task, task_id=self.task_id, key=key,
                         feature="idempotency")

    # -- cache ---------------------------------------------------------------------------

    def _cached(self) -> Any:
        policy = self.policy.cache
        assert policy is not None
        user_key = render(policy.key, self.call)
        key = (policy.version, user_key)
        computed: Any = _MISSING
        started = False

        def compute() -> Any:
            nonlocal computed, started
            started = True
            value = self._locked_body()
            codec.dumps(value, what=f"result of task {self.policy.name!r} "
                                    f"(cache key {user_key!r})")
            computed = value
            return value

        try:
            value = self.coord.cache().get_or_set(key, compute)
        except CoordinationUnavailable as exc:
            if computed is not _MISSING:
                log.warning("task %s[%s]: result not cached: %s", self.policy.name,
                            self.task_id, exc)
                return computed
            if started:
                raise
            self._unavailable("cache", exc)
            return self._locked_body()
        hit = signals.cache_miss if started else signals.cache_hit
        signals.emit(hit, self.task, task_id=self.task_id, key=user_key)
        return value

    # -- singleton -----------------------------------------------------------------------

    def _singleton(self) -> None:
        policy = self.policy.singleton
        if policy is None:
            return
        key = str(self.keys.singleton)
        lock = self.coord.lock(key, self.token, policy.lock_ttl, auto_renew=True,
                               on_lost=lambda _lock: self._lost("singleton", key))
        try:
            acquired = lock.acquire(takeover=self.task_id)
        except CoordinationUnavailable as exc:
            self._unavailable("singleton", exc)
            return
        if acquired:
            self.lock = lock
            self.request.kv_fence = lock.fence
            return
        holder = task_id_of(lock.holder)
        signals.emit(signals.lock_contended, self.task, task_id=self.task_id, key=key,
                     holder=holder, feature="singleton")
        busy = LockNotAcquired(key, holder, self.policy.name)
        # An earlier delivery of this same task id still runs: wait it out, whatever
        # on_locked says (skipping or failing would overwrite that run's result state).
        # A message carrying callbacks waits too: its callbacks must get a real result.
        on_locked = "retry" if holder == self.task_id or self.canvas else policy.on_locked
        if on_locked == "skip":
            log.info("task %s[%s]: skipped, key %r is held by %s", self.policy.name,
                     self.task_id, key, holder)
            raise _Skip
        if on_locked == "raise":
            raise busy
        self._wait(lock.holder_ttl, busy)

    # -- concurrency ---------------------------------------------------------------------

    def _concurrency(self) -> None:
        policy = self.policy.concurrency
        if policy is None:
            return
        key = render(policy.key, self.call) if policy.key is not None else ""
        semaphore = self.coord.semaphore(
            key, self.token, auto_renew=True,
            on_lost=lambda _sem: self._lost("concurrency", key),
        )
        try:
            acquired = semaphore.acquire()
        except CoordinationUnavailable as exc:
            self._unavailable("concurrency", exc)
            return
        if acquired:
            self.semaphore = semaphore
            return
        signals.emit(signals.lock_contended, self.task, task_id=self.task_id, key=key,
                     holder=None, feature="concurrency")
        self._wait(None, LockNotAcquired(f"concurrency:{key}", None, self.policy.name))

    # -- rate limit ----------------------------------------------------------------------

    def _rate_limit(self) -> None:
        policy = self.policy.rate_limit
        if policy is None:
            return
        key = render(policy.key, self.call) if policy.key is not None else ""
        limits = self.coord.rate_limits()
        try:
            decision = self.coord.kv.hit_all([(limit, key) for limit in limits])
        except CoordinationUnavailable as exc:
            self._unavailable("rate_limit", exc)
            return
        self.request.kv_rate_limit = decision
        if decision.allowed:
            return
        now = time.time()
        since = self._mark("rl_since", now)
        over = RateLimitExceeded(key, decision.retry_after, self.policy.name, decision.denied_by)
        if now - since + decision.retry_after > policy.max_delay:
            raise over
        denials = int(self._mark("rl_n", 0))
        countdown = decision.retry_after + rate_limit_jitter(decision.retry_after, denials)
        signals.emit(signals.task_rate_limited, self.task, task_id=self.task_id, key=key,
                     limit=decision.denied_by, retry_after=decision.retry_after,
                     countdown=countdown)
        self._defer(countdown, over, rl_since=since, rl_n=denials + 1)

    # -- waiting, deferring, giving back -------------------------------------------------

    def _wait(self, hint: float | None, reason: Exception) -> NoReturn:
        waits = int(self._mark("n", 0))
        countdown = wait_countdown(waits, self.policy.wait_interval, hint)
        self._defer(countdown, reason, n=waits + 1)

    def _unavailable(self, feature: str, exc: CoordinationUnavailable) -> None:
        """Apply kv_on_unavailable: return to run uncoordinated, or raise (Retry or exc)."""
        policy = self.policy.on_unavailable[feature]
        if policy == "raise":
            raise exc
        if policy == "run":
            log.warning("task %s[%s]: running without %s coordination: %s",
                        self.policy.name, self.task_id, feature, exc)
            return
        now = time.time()
        since = self._mark("down_since", now)
        if now - since > self.policy.unavailable_max_delay:
            raise exc
        waits = int(self._mark("n", 0))
        self._defer(wait_countdown(waits, self.policy.wait_interval, None), exc,
                    n=waits + 1, down_since=since)

    def _mark(self, name: str, default: float) -> float:
        """A mark left by an earlier deferral of this same attempt (a user retry starts over)."""
        if self.header.get("r") != self.request.retries:
            return default
        return _number(self.header.get(name), default)

    def _defer(self, countdown: float, reason: Exception, **marks: Any) -> NoReturn:
        """Re-publish this task id after ``countdown`` seconds and end this run with Retry."""
        if self.request.is_eager:
            raise reason  # nothing to re-publish to when run eagerly
        self.hand_back()
        header = {**self.header, **self.keys.header(), **marks, "r": self.request.retries}
        headers = {**as_mapping(self.request.headers), HEADER: header}
        sig = self.task.signature_from_request(
            self.request, self.args, self.kwargs, countdown=countdown,
            retries=self.request.retries, headers=headers,
        )
        try:
            sig.apply_async()
        except Exception as exc:
            raise Reject(exc, requeue=False) from exc
        raise Retry(f"celery-kv: {reason}", exc=reason, when=round(countdown, 3), sig=sig)

    def hand_back(self) -> None:
        """Before a retry: free the slot, give the queued claims back to the bare task id."""
        if self.handed_back:
            return
        self.handed_back = True
        if self.semaphore is not None:
            semaphore, self.semaphore = self.semaphore, None
            _quietly(semaphore.release, "release a concurrency slot")
        if self.lock is not None:
            self._hand_back_lock(self.lock)
            self.lock = None
        if self.idem_owner == self.token:
            self._hand_back_claim()

    def _hand_back_lock(self, lock: Lock) -> None:
        policy = self.policy.singleton
        assert policy is not None
        lock.stop_renewal()
        if policy.mode != "queued":
            _quietly(lock.release, "release a singleton lock")
            return
        queued = self.coord.lock(str(self.keys.singleton), self.task_id, policy.queued_ttl)
        if _quietly(lambda: queued.acquire(takeover=self.token), "hand a lock back"):
            self.queued_lock = queued

    def _hand_back_claim(self) -> None:
        policy = self.policy.idempotency
        assert policy is not None
        self._stop_idem_beat()
        idem = self.coord.idempotency()
        claim = _quietly(
            lambda: idem.begin(str(self.keys.idempotency), self.task_id, self.keys.fingerprint,
                               lease=policy.queued_ttl, takeover=self.token),
            "hand an idempotency claim back",
        )
        self.idem_owner = self.task_id if claim is not None and claim.ours else None

    def release(self) -> None:
        """A final outcome: let go of everything this run (or its hand-back) holds."""
        self._stop_idem_beat()
        self._release_unused_claim()
        if self.idem_owner is not None:
            owner, self.idem_owner = self.idem_owner, None
            idem = self.coord.idempotency()
            key = str(self.keys.idempotency)
            _quietly(lambda: idem.abandon(key, owner), "abandon an idempotency claim")
        for held in (self.semaphore, self.lock, self.queued_lock):
            if held is not None:
                _quietly(held.release, "release a lease")
        self.semaphore = self.lock = self.queued_lock = None

    def _release_unused_claim(self) -> None:
        """A run that ended before taking its lock over (a replay, a cache hit, an error)
        still frees the queued claim its task id took at enqueue."""
        policy = self.policy.singleton
        if policy is None or policy.mode != "queued" or self.lock or self.queued_lock:
            return

        def release() -> bool:
            lock = self.coord.lock(str(self.keys.singleton), self.task_id, policy.queued_ttl)
            return lock.release()

        _quietly(release, "release a queued claim")

    def _stop_idem_beat(self) -> None:
        beat, self.idem_beat = self.idem_beat, None
        if beat is not None:
            beat.stop()

    def _lost(self, feature: str, key: str) -> None:
        log.warning("task %s[%s]: lost its %s lease on %r", self.policy.name, self.task_id,
                    feature, key)
        signals.emit(signals.lock_lost, self.task, task_id=self.task_id, key=key,
                     feature=feature)


def _number(value: Any, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else default


def _quietly(fn: Any, what: str) -> Any:
    """Best effort: a lease that cannot be released runs out by itself."""
    try:
        return fn()
    except Exception as exc:
        log.warning("celery-kv: could not %s: %s", what, exc)
        return None


def execute(task: Any, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``task``'s body under its coordination policy (called from ``KVTask.__call__``)."""
    run = Run(task, request, args, kwargs)
    request._kv_run = run
    try:
        return run.execute()
    finally:
        request._kv_run = None


def release_revoked(task: Any, request: Any) -> None:
    """``task_revoked`` (worker main process): free the keys the revoked task id holds."""
    policy: TaskPolicy = task._kv_policy
    coord: Coordination = task._kv_coord
    if policy.singleton is None and policy.idempotency is None:
        return
    keys = Keys.from_header(policy, header_of(request))
    if keys is None:
        if request.args is None:
            return  # a message that skipped apply_async: its run lease runs out by itself
        keys = keys_for(policy, Call(policy.name, policy.signature, request.args,
                                     request.kwargs))
    task_id = request.id
    if policy.singleton is not None and keys.singleton is not None:
        info = describe(coord.kv.store, coord.lock_name(keys.singleton))
        if info is not None and (info.owner == task_id or is_run_of(info.owner, task_id)):
            coord.lock(keys.singleton, info.owner, policy.singleton.lock_ttl).release()
    if policy.idempotency is not None and keys.idempotency is not None:
        idem = coord.idempotency()
        state = idem.state(keys.idempotency)
        owner = state.owner
        if state.status == "in_progress" and owner is not None and (
            owner == task_id or is_run_of(owner, task_id)
        ):
            idem.abandon(keys.idempotency, owner)
