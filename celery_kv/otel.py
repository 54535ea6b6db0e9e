"""OpenTelemetry: a span event on each coordination decision of a traced task.

``instrument()`` connects a receiver to every signal of ``celery_kv.signals`` (each
``Signal`` in that module, so a signal added there is covered too). Each decision
adds an event ``celery_kv.<signal name>`` (``celery_kv.task_deduplicated``,
``celery_kv.cache_hit``, ...) to the current span, when it is recording: the span of
the task's run (``opentelemetry-instrumentation-celery``'s ``run/<task>``), or of the
code that called ``apply_async`` for a decision made at enqueue. Outside a recording
span nothing is added, and nothing is paid beyond the check.

An event's attributes are ``task`` (the task's name), ``task_id``, ``key``, and every
other scalar argument the signal sends (``feature``, ``holder``, ``stage``,
``retry_after``, ...; ``task_admitted``'s keys as ``key.<feature>``). A result value or
a task's arguments never become attributes: they may hold personal data, and spans
leave the process.

``install(app)`` calls it when the app sets ``kv_otel = True``; it needs
``opentelemetry-api`` (``pip install celery-kv[otel]``). The receivers are
process-wide, as the signals are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery.utils.dispatch import Signal

from . import signals

log = logging.getLogger("celery_kv.otel")

#: What to install when ``opentelemetry`` is missing.
EXTRA = "celery-kv[otel]"

#: The prefix of every event name.
PREFIX = "celery_kv."

#: Arguments that never become attributes: values of the user's, not decisions.
_NEVER = frozenset({"signal", "sender", "result", "args", "kwargs", "arguments"})

_UID = "celery_kv.otel:"

AttributeValue = str | bool | int | float


def available() -> bool:
    """Whether ``opentelemetry-api`` can be imported."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    """Raise one ImportError naming the extra when OpenTelemetry is not installed."""
    if not available():
        raise ImportError(f"kv_otel = True needs OpenTelemetry: pip install {EXTRA}")


def decision_signals() -> dict[str, Signal]:
    """Every signal of ``celery_kv.signals``, by name."""
    return {name: value for name, value in vars(signals).items() if isinstance(value, Signal)}


def attributes(sender: Any, named: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """A decision's span attributes: the task's name and the signal's scalar arguments."""
    found: dict[str, AttributeValue] = {}
    task = getattr(sender, "name", None)
    if isinstance(task, str):
        found["task"] = task
    for name, value in named.items():
        if name in _NEVER or value is None:
            continue
        if name == "keys" and isinstance(value, Mapping):  # task_admitted: {feature: key}
            found.update({f"key.{feature}": str(key) for feature, key in value.items()})
        elif name == "key":
            found["key"] = value if isinstance(value, str) else str(value)
        elif isinstance(value, (str, bool, int, float)):
            found[name] = value
    return found


def _receiver(event: str, current_span: Callable[[], Any]) -> Callable[..., None]:
    def receive(sender: Any = None, **named: Any) -> None:
        span = current_span()
        if not span.is_recording():
            return
        try:
            span.add_event(event, attributes(sender, named))
        except Exception:  # a tracing failure must never reach the task
            log.warning("celery-kv: could not add the span event %s", event, exc_info=True)

    return receive


def instrument() -> None:
    """Add a span event for every coordination decision from now on (idempotent)."""
    require()
    from opentelemetry import trace

    for name, signal in decision_signals().items():
        signal.connect(_receiver(PREFIX + name, trace.get_current_span), weak=False,
                       dispatch_uid=_UID + name)


def uninstrument() -> None:
    """Stop adding span events."""
    for name, signal in decision_signals().items():
        signal.disconnect(dispatch_uid=_UID + name)


__all__ = ["EXTRA", "attributes", "available", "decision_signals", "instrument",
           "uninstrument"]
