"""Deferrals through the delay store (``kv_delay_store``), not broker countdowns.

A countdown is an ETA message that a worker holds in memory; on the Redis and SQS
brokers one longer than ``visibility_timeout`` is delivered again (celery #2599). With
``kv_delay_store`` the message waits in Redis (``celery_kv.store.delays``) and a worker's
maintenance thread (``maintenance``) publishes it when it falls due:

- ``True`` (default): every deferral celery-kv makes (a wait for a busy key, a rate
  limit, ``kv_on_unavailable="retry"``, a debounce timer);
- ``"all"``: also every countdown or ETA of the task's own ``apply_async`` and
  ``self.retry(countdown=...)``;
- ``False``: broker countdowns, as Celery does.

The stored message is the Celery signature (as JSON), published later as it would have
been now. It carries its entry id in the celery-kv header, and the first delivery of it
consumes the entry (``consume``), so a copy published twice (a poller that crashed after
the publish, before its ack) runs once. Eager runs never touch the store, and a store
that cannot be reached falls back to the broker countdown.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import uuid
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery.exceptions import Ignore

from ..errors import CoordinationUnavailable
from ..kv import KV
from ..store.delays import DelayStore
from .context import HEADER, header_of
from .keys import as_mapping
from .options import Option, Where, seconds

log = logging.getLogger("celery_kv.celery")

#: header fields: the entry a delivery came from, and the poller claim that published it
ENTRY, COPY = "delay_entry", "delay_copy"
#: an ``apply_async`` option celery-kv sets on its own deferrals (never sent to the broker)
DEFERRED = "kv_deferred"

Publish = Callable[[str | None, dict[str, Any]], Any]


def _mode(value: Any, where: Where) -> bool | str:
    if value is True or value is False or value == "all":
        return value if isinstance(value, bool) else "all"
    raise ValueError(f"{where(value)} must be True, False or \"all\"")


def _interval(value: Any, where: Where) -> float:
    found = seconds(value, where)
    if found > 60:
        raise ValueError(f"{where(value)} must be at most 60 seconds")
    return found


DELAY_STORE = Option(
    "delay_store", "where deferred messages wait: `True`, in Redis for celery-kv's own "
    "deferrals (rate limit, busy key, Redis unavailable, debounce timer); `\"all\"`, also "
    "every countdown/ETA and `self.retry(countdown=)` of the task; `False`, broker "
    "countdowns (re-delivered past the broker's `visibility_timeout`)", _mode, True,
    "kv_delay_store")
POLL_INTERVAL = Option(
    "delay_poll_interval", "a worker publishes due deferred messages at most this late "
    "(it sleeps until the next due one, capped by this)", _interval, 0.2,
    "kv_delay_poll_interval", task_option=False)
LEASE = Option(
    "delay_lease", "a worker that claimed due deferred messages has this long to publish "
    "them before another worker may (after a crash)", seconds, 30.0, "kv_delay_lease",
    task_option=False)


def _namespace(value: Any, where: Where) -> str | None:
    if value is None or (isinstance(value, str) and value and len(value) <= 200):
        return value
    raise ValueError(f"{where(value)} must be None or a non-empty string (at most 200 "
                     "characters)")


NAMESPACE = Option(
    "delay_namespace", "the delay store a producer and its workers share; by default one "
    "per broker URL, so a worker only publishes messages into the broker they were deferred "
    "from (set it when producers and workers spell the broker URL differently)", _namespace,
    None, "kv_delay_namespace", task_option=False)
OPTIONS = (DELAY_STORE, POLL_INTERVAL, LEASE, NAMESPACE)

#: hooks called after a deferral went into the store, with (task, task id, entry id): the
#: fault suite journals them, to tell a deferral lost with the store's data from a bug
after_store: list[Callable[[Any, str, str], None]] = []

_publishing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "celery_kv_delay_publishing", default=False)
_stores: weakref.WeakKeyDictionary[KV, dict[str, DelayStore]] = weakref.WeakKeyDictionary()


def namespace_of(app: Any) -> str:
    """The app's delay store namespace: ``kv_delay_namespace``, else a digest of its broker
    URL. Apps with other brokers may share the coordination Redis and its prefix: each
    poller then publishes only into the broker its app publishes to."""
    from .install import installed

    configured = installed(app).settings.delay_namespace
    if configured:
        return str(configured)
    url = app.conf.broker_write_url or app.conf.broker_url
    if isinstance(url, (list, tuple)):
        url = ";".join(str(u) for u in url)
    digest = hashlib.blake2b(str(url or "").encode(), digest_size=6).hexdigest()
    return f"broker-{digest}"


def delay_store(kv: KV, namespace: str = "delay") -> DelayStore:
    """The delay store of one ``KV`` and namespace (built on first use)."""
    per_kv = _stores.setdefault(kv, {})
    found = per_kv.get(namespace)
    if found is None:
        found = per_kv[namespace] = DelayStore(kv.store, namespace)
    return found


def delay_store_for(app: Any) -> DelayStore:
    """The delay store an app's deferrals go to, and its workers publish from."""
    from .install import installed

    return delay_store(installed(app).kv, namespace_of(app))


def publishing() -> bool:
    """True while the maintenance thread publishes a due message (it is routed nowhere)."""
    return _publishing.get()


def routed(task: Any, publish: Publish, args: Any, kwargs: Any) -> Publish:
    """``publish`` that sends a delayed message to the delay store when the task's
    ``kv_delay_store`` says so. A fresh publish never carries an old entry id."""

    def route(task_id: str | None, options: dict[str, Any]) -> Any:
        deferral = bool(options.pop(DEFERRED, False))
        if _publishing.get():
            return publish(task_id, options)
        from .enqueue import delay_of  # the enqueue module wraps its publish with this

        options = _without_entry(options)
        delay = delay_of(task.app, options)
        policy = getattr(task, "_kv_policy", None)
        mode = policy.delay_store if policy is not None else False
        if (delay <= 0 or mode is False or (mode is True and not deferral)
                or task.app.conf.task_always_eager):
            return publish(task_id, options)
        return _store(task, publish, args, kwargs, task_id or str(uuid.uuid4()), options,
                      delay)

    return route


def _without_entry(options: dict[str, Any]) -> dict[str, Any]:
    headers = as_mapping(options.get("headers"))
    header = as_mapping(headers.get(HEADER))
    if ENTRY not in header and COPY not in header:
        return options
    fields = {k: v for k, v in header.items() if k not in (ENTRY, COPY)}
    return {**options, "headers": {**headers, HEADER: fields}}


def _store(task: Any, publish: Publish, args: Any, kwargs: Any, task_id: str,
           options: dict[str, Any], delay: float) -> Any:
    entry = uuid.uuid4().hex
    rest = {k: v for k, v in options.items() if k not in ("countdown", "eta")}
    expires = rest.get("expires")
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        rest["expires"] = task.app.now() + timedelta(seconds=float(expires))  # from now
    headers = dict(as_mapping(rest.get("headers")))
    headers[HEADER] = {**as_mapping(headers.get(HEADER)), ENTRY: entry}
    rest["headers"] = headers
    body = dict(task.signature(args, kwargs, {**rest, "task_id": task_id}))
    try:
        delay_store_for(task.app).add(entry, delay, body,
                                 what=f"deferred message of task {task.name!r}")
    except CoordinationUnavailable as exc:
        log.warning("task %s[%s]: the delay store is out of reach (%s); deferred with a "
                    "broker countdown instead", task.name, task_id, exc)
        return publish(task_id, options)
    for hook in after_store:
        try:
            hook(task, task_id, entry)
        except Exception as exc:  # a hook never breaks a deferral
            log.warning("celery-kv: an after_store hook failed: %s", exc)
    return task.AsyncResult(task_id)


def publish_due(app: Any, body: dict[str, Any], copy: str) -> None:
    """Publish one due message as it was deferred; its header names the poller claim
    (``copy``) that published it, so a redelivery of this very copy is not a duplicate."""
    options = body.setdefault("options", {})
    headers = dict(as_mapping(options.get("headers")))
    headers[HEADER] = {**as_mapping(headers.get(HEADER)), COPY: copy}
    options["headers"] = headers
    publish_as_is(app, body)


def publish_as_is(app: Any, body: dict[str, Any]) -> None:
    """Publish a message celery-kv kept for later (a due deferral, a concurrency waiter
    whose turn came) straight to the broker: the claims of its task id were taken when it
    was first sent, so the enqueue guard must not take it for a new call (a duplicate of
    its own idempotency key, say) and swallow it; nor is it routed to the store again."""
    token = _publishing.set(True)
    try:
        app.signature(body).apply_async()
    finally:
        _publishing.reset(token)


def consume(task: Any, request: Any) -> None:
    """Before the start phase: a delivery from the delay store takes its entry, once.

    Another copy of the entry that ran already makes this one end without running and
    without an outcome (``Ignore``). Deliveries that did not come from the store pay
    nothing. When Redis cannot be reached the delivery runs (it would rather run twice
    after a rare crash than be lost).
    """
    if getattr(request, "is_eager", False):
        return
    header = header_of(request)
    entry = header.get(ENTRY)
    if not isinstance(entry, str) or not entry:
        return
    copy = str(header.get(COPY) or "")
    try:
        verdict = delay_store_for(task.app).consume(entry, copy)
    except CoordinationUnavailable as exc:
        log.warning("task %s[%s]: could not check deferred entry %s (%s); running it",
                    task.name, request.id, entry, exc)
        return
    if verdict == "duplicate":
        log.info("task %s[%s]: a second copy of deferred entry %s; dropped without running",
                 task.name, request.id, entry)
        raise Ignore()
    if verdict == "unknown":
        log.warning("task %s[%s]: deferred entry %s is not in the delay store (its markers "
                    "expired, or the store's data was lost); running it", task.name,
                    request.id, entry)
