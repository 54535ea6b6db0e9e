"""What the dashboard shows, read from Redis and the app's task declarations.

Every reader returns plain JSON-ready data and reads without charging or changing
anything: rate limits are peeked (``RateLimit.peek``), idempotency records read by their
state script, locks and bursts by ``celery_kv.celery.listing``, counters by
``celery_kv.store.metrics``. ``app`` may be None (``--url`` without ``-A``): then only
what needs no task declaration is shown.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..celery import listing
from ..celery.keys import short_key, task_id_of
from ..celery.limits import identity_pairs, peeked
from ..kv import KV
from ..primitives.fair_pool import FairPool
from ..store import metrics
from ..store.doctor import diagnose, findings

#: chart width in minutes, the current one included
MINUTES = 30
#: deferred messages listed (the total is always counted)
DEFERRED_SHOWN = 50


class NotFound(LookupError):
    """A lookup named a task, limit or record that is not there (HTTP 404)."""


def _tasks(app: Any, feature: str) -> list[Any]:
    """The app's registered tasks that declare ``feature``, by name."""
    if app is None:
        return []
    app.loader.import_default_modules()
    found = []
    for name, task in sorted(app.tasks.items()):
        policy = getattr(task, "_kv_policy", None)
        if not name.startswith("celery.") and policy is not None \
                and policy.feature(feature) is not None:
            found.append(task)
    return found


def _task(app: Any, name: str, feature: str) -> tuple[Any, Any]:
    """(task, its ``feature``) or NotFound naming what is missing."""
    task = None if app is None else app.tasks.get(name)
    if task is None:
        raise NotFound(f"no task named {name!r} in this app")
    policy = getattr(task, "_kv_policy", None)
    found = policy.feature(feature) if policy is not None else None
    if found is None:
        raise NotFound(f"task {name!r} has no {feature.replace('_', ' ')}")
    return task, found


def catalogue(app: Any) -> dict[str, list[str]]:
    """Task names per feature, for the page's lookup forms."""
    return {feature: [t.name for t in _tasks(app, feature)]
            for feature in ("rate_limit", "idempotency", "concurrency")}


def rate_series(kv: KV, app: Any, minutes: int = MINUTES) -> dict[str, Any]:
    """Admitted and denied decisions per server minute of every rate-limited task (the
    app's, and any other task the counters name), oldest minute first."""
    now, counts = metrics.read_counts(kv.store, minutes)
    current = int(now // 60)
    first = current - minutes + 1
    names = {t.name for t in _tasks(app, "rate_limit")}
    names |= {c.task for c in counts if c.feature == "rate_limit"}
    series = {name: {"task": name, "admitted": [0] * minutes, "denied": [0] * minutes}
              for name in sorted(names)}
    for c in counts:
        if c.feature != "rate_limit" or c.identity is not None or c.minute < first:
            continue
        if c.event in ("admitted", "denied"):
            series[c.task][c.event][c.minute - first] += c.value
    return {"now": now, "first_minute": first, "minutes": minutes,
            "tasks": list(series.values())}


def limit_state(kv: KV, app: Any, task_name: str, identity: str) -> list[dict[str, Any]]:
    """Each of a task's rate limits for one identity (a task-wide limit's is ''), peeked
    as ``celery kv limits TASK IDENTITY`` shows it: nothing is charged."""
    _task_obj, feature = _task(app, task_name, "rate_limit")
    return peeked(kv, identity_pairs(feature, kv, identity))


def idempotency_record(kv: KV, app: Any, task_name: str | None, namespace: str | None,
                       key: str) -> dict[str, Any]:
    """One idempotency record by a task's key (as ``celery kv idempotency TASK KEY``) or by
    a namespace made in code; NotFound when there is none."""
    if namespace:
        idem = kv.idempotency(namespace)
    elif task_name:
        task, feature = _task(app, task_name, "idempotency")
        idem = feature.primitive(kv, task._kv_policy.namespace)
        key = short_key(key)
    else:
        raise ValueError("give a task or a namespace")
    state = idem.state(key)
    if state.status == "absent":
        raise NotFound(f"no idempotency record for key {key!r} in namespace "
                       f"{idem.namespace!r} (never seen, or expired)")
    return {"namespace": idem.namespace, "key": key, **asdict(state),
            "task_id": task_id_of(state.owner)}


def _deferred(kv: KV, app: Any) -> dict[str, Any]:
    from ..celery.delays import delay_store, namespace_of

    total, entries = delay_store(kv, namespace_of(app)).pending(DEFERRED_SHOWN)
    shown = []
    for entry in entries:
        body = _body(entry.raw)
        options = body.get("options")
        if not isinstance(options, dict):
            options = {}
        shown.append({"entry": entry.entry_id, "due_in": entry.due_in,
                      "claimed_by": entry.claimed_by, "task": body.get("task"),
                      "task_id": options.get("task_id")})
    return {"total": total, "entries": shown}


def _body(raw: str | None) -> dict[str, Any]:
    from ..store import codec

    try:
        body = codec.loads(raw) if raw else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def waiting(kv: KV, app: Any) -> dict[str, Any]:
    """Deferred messages (the delay store), concurrency waiters and debounce bursts."""
    pools = []
    for task in _tasks(app, "concurrency"):
        state = FairPool(kv.store, task.name).state()
        pools += [{"task": task.name, "key": key, **counts}
                  for key, counts in sorted(state.items())]
    deferred = _deferred(kv, app) if app is not None else {"total": 0, "entries": []}
    return {"deferred": deferred, "concurrency": pools, "bursts": listing.burst_rows(kv.store)}


def doctor_findings(kv: KV, where: str) -> list[dict[str, str]]:
    """``celery kv doctor``'s checks that are not ok, as banners."""
    report = diagnose(kv, where, 0.0)
    return [{"level": level, "message": message} for level, message in findings(report)]


__all__ = ["MINUTES", "NotFound", "catalogue", "doctor_findings", "idempotency_record",
           "limit_state", "rate_series", "waiting"]
