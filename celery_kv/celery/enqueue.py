"""The enqueue guard: ``apply_async`` claims the task's keys for its task id (rules 1, 3, 9).

The claim has two phases. It is taken with the short ``kv_enqueue_claim_ttl`` before
the message is published and confirmed with the queued TTL after the publish returns;
a producer that dies in between blocks the key for seconds, not a day, and a publish
that raises removes the claim. A duplicate gets the holder's ``AsyncResult`` (a task
id that was really sent), or ``DuplicateTask`` with ``on_duplicate="raise"``.

A duplicate that carries callbacks (``link``, ``link_error``, a chain, a chord or a
group) is published anyway and resolved at execution, so no callback is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery.utils import uuid
from celery.utils.time import maybe_make_aware

from .. import signals
from ..errors import CoordinationUnavailable, DuplicateTask, IdempotencyKeyReused
from ..primitives.lock import Lock
from .claims import HEADER, Coordination, Keys, check_explicit_key, keys_for
from .execution import _quietly
from .keys import Call, as_mapping, task_id_of
from .options import TaskPolicy

log = logging.getLogger("celery_kv.celery")

Publish = Callable[[str | None, dict[str, Any]], Any]


class Duplicate:
    def __init__(self, feature: str, key: str, holder: str) -> None:
        self.feature = feature
        self.key = key
        self.holder = holder


class EnqueueClaim:
    """The claims one ``apply_async`` takes for ``task_id``, phase one then phase two."""

    def __init__(self, coord: Coordination, keys: Keys, task_id: str, delay: float = 0.0) -> None:
        self.coord = coord
        self.delay = delay  # a countdown or ETA: the queued claim outlives it
        self.policy: TaskPolicy = coord.policy
        self.keys = keys
        self.task_id = task_id
        self.lock: Lock | None = None
        self.claimed = False
        self.feature = "idempotency"  # the feature being claimed, for kv_on_unavailable

    def take(self) -> Duplicate | None:
        """Phase one; a Duplicate when another task id holds a key (nothing is kept)."""
        duplicate = self._take_claim()
        if duplicate is None:
            try:
                duplicate = self._take_lock()
            except BaseException:
                self.undo()
                raise
        if duplicate is not None:
            self.undo()
        return duplicate

    def _take_claim(self) -> Duplicate | None:
        if self.policy.idempotency is None:
            return None
        self.feature = "idempotency"
        key = str(self.keys.idempotency)
        try:
            claim = self.coord.idempotency().begin(
                key, self.task_id, self.keys.fingerprint, lease=self.policy.enqueue_claim_ttl
            )
        except IdempotencyKeyReused:
            raise IdempotencyKeyReused(key, self.policy.name) from None
        if claim.status == "acquired":
            self.claimed = True
            return None
        if claim.status == "reentered":  # this very task id was enqueued before
            self.coord.idempotency().renew(key, self.task_id,
                                           self.policy.idempotency.queued_ttl + self.delay)
        return Duplicate("idempotency", key, task_id_of(claim.owner) or self.task_id)

    def _take_lock(self) -> Duplicate | None:
        policy = self.policy.singleton
        if policy is None or policy.mode != "queued":
            return None
        self.feature = "singleton"
        key = str(self.keys.singleton)
        lock = self.coord.lock(key, self.task_id, self.policy.enqueue_claim_ttl)
        if not lock.acquire():
            return Duplicate("singleton", key, task_id_of(lock.holder) or self.task_id)
        if lock.reentered:  # this very task id is queued already: keep its claim's lifetime
            lock.extend(policy.queued_ttl + self.delay)
            return Duplicate("singleton", key, self.task_id)
        self.lock = lock
        return None

    def confirm(self) -> None:
        """Phase two, after the publish: the claims live on for the queued TTL.

        A confirm that finds the claim gone is normal: a fast worker may have taken it
        over (or even finished) before the publish returned. If it ran out instead, the
        worker still checks the key at execution.
        """
        if self.lock is not None:
            policy = self.policy.singleton
            assert policy is not None
            lock = self.lock
            ttl = policy.queued_ttl + self.delay
            if not _quietly(lambda: lock.extend(ttl), "confirm a claim"):
                log.debug("task %s[%s]: enqueue claim on %r already taken over or gone",
                          self.policy.name, self.task_id, lock.name)
        if self.claimed:
            policy_i = self.policy.idempotency
            assert policy_i is not None
            idem = self.coord.idempotency()
            key = str(self.keys.idempotency)
            lease = policy_i.queued_ttl + self.delay
            if not _quietly(lambda: idem.renew(key, self.task_id, lease),
                            "confirm an idempotency claim"):
                log.debug("task %s[%s]: idempotency claim %r already taken over or gone",
                          self.policy.name, self.task_id, key)

    def undo(self) -> None:
        """Remove the phase-one claims (the publish failed, or this is a duplicate)."""
        if self.lock is not None:
            lock, self.lock = self.lock, None
            _quietly(lock.release, "release an enqueue claim")
        if self.claimed:
            self.claimed = False
            idem = self.coord.idempotency()
            key = str(self.keys.idempotency)
            _quietly(lambda: idem.abandon(key, self.task_id), "release an idempotency claim")


def delay_of(app: Any, options: dict[str, Any]) -> float:
    """Seconds until a message with ``countdown`` or ``eta`` may run (0 for at once)."""
    countdown, eta = options.get("countdown"), options.get("eta")
    if isinstance(countdown, (int, float)) and not isinstance(countdown, bool):
        return max(float(countdown), 0.0)
    if isinstance(eta, datetime):  # a naive ETA is in the app's timezone, as Celery reads it
        aware = maybe_make_aware(eta, app.timezone)
        return max(float((aware - app.now()).total_seconds()), 0.0)
    return 0.0


def carries_callbacks(options: dict[str, Any]) -> bool:
    """True for a message that belongs to a canvas: it must be published, never dropped."""
    return any(options.get(name) for name in ("link", "link_error", "chain", "chord",
                                               "group_id"))


def with_header(options: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    headers = dict(as_mapping(options.get("headers")))
    headers[HEADER] = {**as_mapping(headers.get(HEADER)), **fields}
    return {**options, "headers": headers}


def apply_async(task: Any, publish: Publish, args: Any, kwargs: Any, task_id: str | None,
                options: dict[str, Any]) -> Any:
    """``KVTask.apply_async``: claim, publish, confirm; or resolve a duplicate."""
    policy: TaskPolicy | None = task._kv_policy
    explicit = options.pop("idempotency_key", None)
    if explicit is not None:
        if policy is None or policy.idempotency is None:
            raise TypeError(f"task {task.name!r}: idempotency_key= is only for idempotent tasks")
        explicit = check_explicit_key(policy.name, explicit)
    if policy is None or not policy.claims_at_enqueue:
        return publish(task_id, options)
    current = task.request
    if task_id is not None and not current.called_directly and current.id == task_id:
        return publish(task_id, options)  # the owner re-publishing itself (retry, deferral)
    call = Call(policy.name, policy.signature, args, kwargs)
    keys = keys_for(policy, call, explicit)
    options = with_header(options, keys.header())
    if task.app.conf.task_always_eager:
        return publish(task_id, options)  # the execution guard runs in-process
    return _claim_and_publish(task, publish, keys, task_id or uuid(), options)


def _claim_and_publish(task: Any, publish: Publish, keys: Keys, task_id: str,
                       options: dict[str, Any]) -> Any:
    coord: Coordination = task._kv_coord
    policy = coord.policy
    claim = EnqueueClaim(coord, keys, task_id, delay_of(task.app, options))
    try:
        duplicate = claim.take()
    except CoordinationUnavailable as exc:
        if policy.on_unavailable[claim.feature] == "raise":
            raise
        log.warning("task %s[%s]: published without an enqueue claim (%s); the worker "
                    "checks at execution", policy.name, task_id, exc)
        return publish(task_id, options)
    if duplicate is not None:
        return _duplicate(task, publish, duplicate, task_id, options)
    try:
        result = publish(task_id, options)
    except BaseException:
        claim.undo()
        raise
    claim.confirm()
    return result


def _duplicate(task: Any, publish: Publish, duplicate: Duplicate, task_id: str,
               options: dict[str, Any]) -> Any:
    policy: TaskPolicy = task._kv_policy
    signals.emit(signals.task_deduplicated, task, task_id=task_id, holder=duplicate.holder,
                 key=duplicate.key, feature=duplicate.feature, stage="enqueue")
    if carries_callbacks(options):
        log.info("task %s[%s]: duplicate of %s carries callbacks; published, resolved at "
                 "execution", policy.name, task_id, duplicate.holder)
        return publish(task_id, options)
    singleton = policy.singleton
    if duplicate.feature == "singleton" and singleton and singleton.on_duplicate == "raise":
        raise DuplicateTask(duplicate.key, duplicate.holder, policy.name)
    log.info("task %s: duplicate of %s (%s key %r)", policy.name, duplicate.holder,
             duplicate.feature, duplicate.key)
    return task.AsyncResult(duplicate.holder)
