"""The enqueue guard: ``apply_async`` claims the task's keys for its task id (rules 1, 3, 9, 13).

Two phases, each one round trip: the features' claim steps run as one script with the
short ``kv_enqueue_claim_ttl`` before the message is published, their confirm steps as
one script with the queued TTL after the publish returns. A producer that dies in between
blocks the key for seconds, not a day, and a publish that raises runs the claims' undo.
Each claim carries a nonce, so a claim retried after a lost reply (a stalled Redis) is
this call's own and the message is still published, never taken for a duplicate.

A duplicate gets the holder's ``AsyncResult`` (a task id that was really sent), a result
that already holds the stored outcome of a completed idempotent call, or the feature's
refusal (``DuplicateTask`` with ``on_duplicate="raise"``). A duplicate whose id someone
already holds (a task id given by the caller or a canvas: chain links, ``link``,
group members) or that carries callbacks is published anyway and resolved at execution,
so every id handed out resolves (rule 11).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery.result import EagerResult
from celery.utils import uuid
from celery.utils.time import maybe_make_aware

from .. import signals
from ..errors import CoordinationFull, CoordinationUnavailable
from ..store import Step
from ..store.scripts import load
from . import delays
from .context import HEADER, Enqueue
from .counting import tallied
from .features import FEATURES
from .features.base import Duplicate
from .keys import as_mapping
from .policy import TaskPolicy

log = logging.getLogger("celery_kv.celery")

Publish = Callable[[str | None, dict[str, Any]], Any]
CALL_OPTIONS = {name: feature for feature in FEATURES for name in feature.call_options}


class ReplayedResult(EagerResult):  # type: ignore[misc]
    """The stored outcome of a completed call, under the id of the task that produced it:
    it resolves even when that task's Celery result has expired or was never kept."""


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
    """True for a message that belongs to a canvas (an empty ``chain=[]`` included)."""
    return any(options.get(name) is not None for name in ("link", "link_error", "chain",
                                                          "chord", "group_id"))


def message_header(options: dict[str, Any]) -> dict[str, Any]:
    """The celery-kv fields the message already carries (a re-publish keeps them)."""
    return dict(as_mapping(as_mapping(options.get("headers")).get(HEADER)))


def with_header(options: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    headers = dict(as_mapping(options.get("headers")))
    headers[HEADER] = fields
    return {**options, "headers": headers}


def take_call_options(task: Any, policy: TaskPolicy | None, options: dict[str, Any],
                      header: dict[str, Any]) -> None:
    """Move the per-call options a feature takes (``idempotency_key=``) into the header."""
    for name, feature_cls in CALL_OPTIONS.items():
        if name not in options:
            continue
        value = options.pop(name)
        feature = policy.feature(feature_cls.name) if policy is not None else None
        if feature is None:
            raise TypeError(f"task {task.name!r}: {name}= is only for tasks with the "
                            f"{feature_cls.name} feature")
        feature.call_option(header, name, value)


def apply_async(task: Any, publish: Publish, args: Any, kwargs: Any, task_id: str | None,
                options: dict[str, Any]) -> Any:
    """``KVTask.apply_async``: claim, publish, confirm; or resolve a duplicate.

    A delayed publish may go to the delay store instead of the broker (``delays``); a due
    message the delay store publishes was claimed for when it was deferred: it goes
    straight out.
    """
    publish = delays.routed(task, publish, args, kwargs)
    if delays.publishing():
        return publish(task_id, options)
    policy: TaskPolicy | None = task._kv_policy
    header = message_header(options)
    take_call_options(task, policy, options, header)
    if policy is None or not policy.coordinated:
        return publish(task_id, options)
    current = task.request
    running_id = None if current.called_directly else current.id
    if task_id is not None and running_id == task_id:
        return publish(task_id, options)  # the owner re-publishing itself (retry, deferral)
    explicit_id = task_id is not None
    ctx = Enqueue(task, task_id or uuid(), args, kwargs, header, delay_of(task.app, options),
                  running_id if getattr(current, "task", None) == task.name else None)
    options = with_header(options, ctx.fill_header())
    # A caller or a canvas holds this call's own id: it must not be folded into another's.
    ctx.state["id_held"] = explicit_id or carries_callbacks(options)
    if not policy.enqueue_claimers(bool(task.app.conf.task_always_eager)):
        return publish(ctx.task_id, options)  # the execution guard decides
    return _claim_and_publish(ctx, publish, options, explicit_id)


def _claim_and_publish(ctx: Enqueue, publish: Publish, options: dict[str, Any],
                       explicit_id: bool) -> Any:
    """Claim the keys (eagerly: those an eager run keeps the rules of), publish, confirm."""
    policy = ctx.policy
    features = policy.enqueue_claimers(bool(ctx.task.app.conf.task_always_eager))
    steps = [f.claim(ctx) for f in features]
    claimed = [(f, s) for f, s in zip(features, steps, strict=True) if s is not None]
    store = ctx.kv.store
    try:
        answer = store.run_phase("enqueue claim", tallied(policy, ctx, claimed),
                                 policy.counters_ttl)
    except CoordinationFull as exc:  # refused now, unlike a blip: tell the caller
        keys = ", ".join(f"{what} key {key!r}" for f, _ in claimed
                         for what, key in f.describe(ctx).items())
        raise CoordinationFull(f"enqueue of task {policy.name!r} ({keys})",
                               exc.detail) from exc
    except CoordinationUnavailable as exc:
        if policy.unavailable(tuple(f for f, _ in claimed)) == "raise":
            raise
        log.warning("task %s[%s]: published without an enqueue claim (%s); the worker "
                    "checks at execution", policy.name, ctx.task_id, exc)
        return publish(ctx.task_id, options)
    last = answer.replies[-1]
    if len(answer.replies) == len(claimed) and _verdict(last) == "ok":
        for (feature, _), reply in zip(claimed, answer.replies, strict=True):
            feature.claimed(ctx, reply)
        options = with_header({**options, **ctx.overrides}, ctx.header)
        return _publish_claimed(ctx, publish, options, claimed)
    feature = claimed[len(answer.replies) - 1][0]
    duplicate = feature.duplicate(ctx, last)
    return _duplicate(ctx, publish, duplicate, options, explicit_id)


def _publish_claimed(ctx: Enqueue, publish: Publish, options: dict[str, Any],
                     claimed: list[Any]) -> Any:
    store = ctx.kv.store
    try:
        result = publish(ctx.task_id, options)
    except BaseException:
        undo = [step for _, step in claimed]
        _quietly(lambda: store.run_phase("enqueue undo", [_undo_of(s) for s in undo]),
                 "release an enqueue claim")
        raise
    confirm(ctx, [feature for feature, _ in claimed])
    return result


def confirm(ctx: Enqueue, features: list[Any]) -> None:
    """Phase two, after the publish: the claims live on for the queued TTL.

    A confirm that finds a claim gone is normal: a fast worker may have taken it over
    (or even finished) before the publish returned. If it ran out instead, the worker
    still checks the key at execution.
    """
    steps = [s for s in (f.confirm(ctx) for f in features) if s is not None]
    if steps:
        _quietly(lambda: ctx.kv.store.run_phase("enqueue confirm", steps), "confirm a claim")


def _undo_of(step: Step) -> Step:
    undo = load(step.script).undo
    assert undo is not None, f"claim script {step.script} declares no undo"
    return Step(undo, step.keys, step.args)


def _duplicate(ctx: Enqueue, publish: Publish, duplicate: Duplicate, options: dict[str, Any],
               explicit_id: bool) -> Any:
    policy = ctx.policy
    signals.emit(signals.task_deduplicated, ctx.task, task_id=ctx.task_id,
                 holder=duplicate.holder, key=duplicate.key, feature=duplicate.feature,
                 stage="enqueue")
    same_id = duplicate.holder == ctx.task_id  # this very id is queued already
    if not same_id and (explicit_id or carries_callbacks(options)):
        log.info("task %s[%s]: duplicate of %s, but its id is held by a caller or a canvas: "
                 "published, resolved at execution", policy.name, ctx.task_id,
                 duplicate.holder)
        header = {**options["headers"][HEADER], "published_duplicate": True,
                  "duplicate_of": duplicate.holder}
        return publish(ctx.task_id, with_header(options, header))
    if duplicate.refuse is not None:
        raise duplicate.refuse
    log.info("task %s: duplicate of %s (%s key %r)", policy.name, duplicate.holder,
             duplicate.feature, duplicate.key)
    result: Any
    if duplicate.completed and duplicate.error:
        error = TypeError(f"task {policy.name!r}: key {duplicate.key!r} ran in "
                          f"{duplicate.holder} but its outcome is an error: {duplicate.error}")
        result = ReplayedResult(duplicate.holder, error, "FAILURE", name=policy.name)
    elif duplicate.completed:
        result = ReplayedResult(duplicate.holder, duplicate.result, "SUCCESS", name=policy.name)
    else:
        result = ctx.task.AsyncResult(duplicate.holder)
    result.kv_call_id = ctx.task_id  # the id this call would have had (its signal's task_id)
    return result


def _verdict(reply: Any) -> str:
    head = reply[0]
    return head.decode() if isinstance(head, bytes) else str(head)


def _quietly(fn: Callable[[], Any], what: str) -> Any:
    """Best effort: a claim that cannot be confirmed or released runs out by itself."""
    try:
        return fn()
    except Exception as exc:
        log.warning("celery-kv: could not %s: %s", what, exc)
        return None
