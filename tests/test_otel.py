"""``kv_otel``: a span event on each coordination decision of a traced task, on an SDK
tracer that keeps its spans in memory; eager runs on fakeredis."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.utils.dispatch import Signal
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celery_kv import CachedTask, IdempotentTask, install, otel, signals
from celery_kv.testing import fake_kv


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    yield found
    otel.uninstrument()  # instrument() is process-wide: the next test starts without it


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test_otel")


class Shop:
    """An app with ``kv_otel = True`` and two coordinated tasks."""

    def __init__(self) -> None:
        self.app = Celery("otel", broker="memory://", backend="cache+memory://",
                          set_as_current=False)
        self.app.conf.update(task_always_eager=True, kv_otel=True)
        install(self.app, kv=fake_kv())

        @self.app.task(base=IdempotentTask, idempotency_key="{order}", shared=False,
                       name="shop.charge")
        def charge(order: str, card: str) -> dict[str, str]:
            return {"order": order, "receipt": f"secret-{card}"}

        @self.app.task(base=CachedTask, cache_ttl=60, cache_key="{sku}", shared=False,
                       name="shop.price")
        def price(sku: str) -> int:
            return len(sku)

        self.charge, self.price = charge, price

    def traffic(self, retry_id: str = "retry-1") -> str:
        """A charge, its duplicate, a replay under ``retry_id``, a miss and a hit; returns
        the first charge's id."""
        first = self.charge.delay("o1", "4242")
        assert self.charge.delay("o1", "4242").get() == first.get()
        assert self.charge.apply_async(("o1", "4242"), task_id=retry_id).get() == first.get()
        assert self.price.delay("abc").get() == self.price.delay("abc").get() == 3
        return str(first.id)


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


def test_each_decision_of_a_traced_task_is_an_event_on_its_span(
    exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    shop = Shop()
    with tracer.start_as_current_span("POST /checkout"):
        first = shop.traffic()
    (span,) = exporter.get_finished_spans()
    got = events(span)
    names = [name for name, _ in got]
    assert names == ["celery_kv.task_admitted", "celery_kv.task_deduplicated",
                     "celery_kv.task_deduplicated", "celery_kv.task_replayed",
                     "celery_kv.cache_miss", "celery_kv.task_admitted", "celery_kv.cache_hit"]
    admitted, dedup, _, replayed, miss, _, hit = (attrs for _, attrs in got)
    assert admitted == {"task": "shop.charge", "task_id": first, "key.idempotency": "o1"}
    assert dedup.pop("task_id") not in (first, "retry-1")
    assert dedup == {"task": "shop.charge", "holder": first, "key": "o1",
                     "feature": "idempotency", "stage": "enqueue"}
    assert replayed == {"task": "shop.charge", "task_id": "retry-1", "key": "o1",
                        "original": first}  # never the result (the receipt) itself
    assert miss["key"] == hit["key"] and miss["task"] == hit["task"] == "shop.price"
    assert miss["task_id"] != hit["task_id"] and set(hit) == {"task", "task_id", "key"}
    assert not any("secret" in str(v) or "4242" in str(v) for _, a in got for v in a.values())


def test_nothing_is_added_outside_a_recording_span(
    exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    shop = Shop()
    shop.traffic()  # no span at all
    with tracer.start_as_current_span("request") as outer:
        unsampled = Spy(outer.get_span_context())
        with trace.use_span(unsampled):  # a task span the sampler dropped
            shop.traffic("retry-2")
    (span,) = exporter.get_finished_spans()
    assert span.name == "request" and span.events == ()
    assert unsampled.added == []  # not even offered to a span that does not record


class Spy(trace.NonRecordingSpan):
    """A span that does not record, and keeps what it is offered all the same."""

    def __init__(self, context: trace.SpanContext) -> None:
        super().__init__(context)
        self.added: list[str] = []

    def add_event(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.added.append(name)


class Exploding(trace.NonRecordingSpan):
    """A span that says it records, and fails to."""

    def is_recording(self) -> bool:
        return True

    def add_event(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("exporter bug")


def test_a_tracing_failure_never_breaks_a_task(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    shop = Shop()
    with caplog.at_level(logging.WARNING, "celery_kv.otel"), \
            trace.use_span(Exploding(trace.INVALID_SPAN_CONTEXT)):
        shop.traffic()  # every result as without tracing
    failed = [r for r in caplog.records if r.name == "celery_kv.otel"]
    assert len(failed) == 7 and "celery_kv.cache_hit" in failed[-1].getMessage()


def test_every_signal_is_covered_and_uninstrument_disconnects(
    exporter: InMemorySpanExporter, tracer: Tracer, monkeypatch: pytest.MonkeyPatch
) -> None:
    added = Signal(name="task_parked")
    monkeypatch.setattr(signals, "task_parked", added, raising=False)  # added after us
    before = {name: len(s.receivers) for name, s in otel.decision_signals().items()}
    assert set(before) >= {"task_deduplicated", "task_replayed", "cache_hit", "task_parked"}
    otel.instrument()
    otel.instrument()  # twice is once
    assert {n: len(s.receivers) for n, s in otel.decision_signals().items()} == {
        n: count + 1 for n, count in before.items()}
    with tracer.start_as_current_span("job"):
        signals.emit(added, Shop().charge, task_id="t1", key="k", parked_for=2.5,
                     result={"card": "4242"}, where=["a"])
        otel.uninstrument()
        signals.emit(added, None, task_id="t2", key="k")
    (span,) = exporter.get_finished_spans()
    assert events(span) == [("celery_kv.task_parked", {"task": "shop.charge", "task_id": "t1",
                                                        "key": "k", "parked_for": 2.5})]
    assert {n: len(s.receivers) for n, s in otel.decision_signals().items()} == before


def test_kv_otel_without_opentelemetry_fails_at_install_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)  # as if not installed
    app = Celery("otel", broker="memory://", set_as_current=False)
    app.conf.kv_otel = True
    with pytest.raises(ImportError, match=r"^kv_otel = True needs OpenTelemetry: "
                                          r"pip install celery-kv\[otel\]$"):
        install(app, kv=fake_kv())
    off = Celery("otel", broker="memory://", set_as_current=False)
    install(off, kv=fake_kv())  # the default, kv_otel = False, needs nothing
    bad = Celery("otel", broker="memory://", set_as_current=False)
    bad.conf.kv_otel = "yes"
    with pytest.raises(TypeError, match="kv_otel='yes' must be True or False"):
        install(bad, kv=fake_kv())
