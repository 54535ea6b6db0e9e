"""Signals fired on coordination decisions, for metrics and logs.

They are Celery ``Signal`` objects: connect with ``signals.cache_hit.connect(fn)``
(``sender`` is the task object). Celery's ``Signal.send`` catches and logs an
exception raised by a receiver, and ``emit`` guards the rest, so a receiver can
never break a task.

Arguments each signal sends (besides ``sender``):

- ``task_deduplicated``: ``task_id`` (the duplicate), ``holder`` (task id it resolved to),
  ``key``, ``feature`` (``"singleton"`` or ``"idempotency"``), ``stage``
  (``"enqueue"`` or ``"execute"``);
- ``task_replayed``: ``task_id``, ``key``, ``result``, ``original`` (task id that ran it);
- ``task_rate_limited``: ``task_id``, ``key``, ``limit``, ``retry_after``, ``countdown``,
  ``reserved`` (True when the run reserved its slot: ``countdown`` is the wait for it);
- ``lock_contended``: ``task_id``, ``key``, ``holder``, ``feature``
  (``"singleton"`` or ``"concurrency"``);
- ``lock_lost``: ``task_id``, ``key``, ``feature`` (a heartbeat could not renew a lease);
- ``cache_hit`` / ``cache_miss``: ``task_id``, ``key``;
- ``task_debounced``: ``task_id`` (the burst's, which the trigger's caller gets),
  ``key``, ``trigger`` (the id the trigger would have had), ``triggers`` (absorbed so
  far, this one included), ``due_in`` (seconds until the burst runs);
- ``task_superseded``: ``task_id`` (the newer holder), ``key``, ``superseded`` (the
  task id that held the key and is told to stop);
- ``task_replaced``: ``task_id`` (the queued id whose message was replaced), ``key``;
- ``task_admitted``: ``task_id``, ``keys`` (``{feature: key}``): every feature let the
  run start, and its body runs next (sent only when a receiver is connected).

A duplicate's result at ``apply_async`` (the holder's ``AsyncResult``, or a
``ReplayedResult``) carries ``kv_call_id``: the id this call would have had, which is the
``task_id`` of its ``task_deduplicated``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.utils.dispatch import Signal

log = logging.getLogger("celery_kv.signals")

task_deduplicated = Signal(name="task_deduplicated")
task_replayed = Signal(name="task_replayed")
task_rate_limited = Signal(name="task_rate_limited")
lock_contended = Signal(name="lock_contended")
lock_lost = Signal(name="lock_lost")
cache_hit = Signal(name="cache_hit")
cache_miss = Signal(name="cache_miss")
task_debounced = Signal(name="task_debounced")
task_superseded = Signal(name="task_superseded")
task_replaced = Signal(name="task_replaced")
task_admitted = Signal(name="task_admitted")


def emit(signal: Any, sender: Any, **named: Any) -> None:
    """Send ``signal``; nothing a receiver (or the dispatcher) does reaches the task."""
    if not signal.receivers:
        return
    try:
        signal.send(sender=sender, **named)
    except Exception:
        log.exception("celery-kv signal %s failed", signal.name)


__all__ = [
    "cache_hit",
    "cache_miss",
    "emit",
    "lock_contended",
    "lock_lost",
    "task_admitted",
    "task_debounced",
    "task_deduplicated",
    "task_rate_limited",
    "task_replaced",
    "task_replayed",
    "task_superseded",
]
