"""Prometheus metrics (``pip install celery-kv[metrics]``): decisions and live state.

``KVCollector`` is a ``prometheus_client`` collector. Each scrape reads, in a few round
trips, the per-minute decision counters the decision scripts keep
(``celery_kv.store.metrics``) and the live state (``celery_kv.store.live``).

The counters in Redis are per minute and expire (``kv_metrics_ttl``), so a sum over them
would fall as old minutes expire. The collector remembers the last value it read of
every minute, including minutes that have since expired, and exports their sum: a true
Prometheus counter, which starts from the history Redis still holds when the collector
starts, and which every collector of the same Redis reports alike once they have seen the
same minutes.

Series are per task, feature and event. Per-identity series exist only for the keys an
operator listed in ``kv_metrics_identities``: a label per tenant id or per idempotency
key would make one series per key, which is how Prometheus servers run out of memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client import start_http_server
    from prometheus_client.core import (
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("celery_kv.metrics needs prometheus_client: "
                      "pip install 'celery-kv[metrics]'") from exc

from .kv import KV
from .store.live import read_live
from .store.metrics import Count, read_counts

Series = tuple[str, str, str, str | None]  # task, feature, event, identity


class KVCollector:
    """Decision counters and live coordination state, read from Redis at each scrape."""

    def __init__(self, kv: KV, window_minutes: int = 120) -> None:
        self.kv = kv
        self.window = window_minutes
        self._seen: dict[tuple[int, Series], int] = {}  # last value read, per minute
        self._gone: dict[Series, int] = {}  # sums of minutes that left the window
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # read lazily: registering must not need Redis

    def totals(self) -> dict[Series, int]:
        """Every series' total so far (reads the counters)."""
        now, counts = read_counts(self.kv.store, self.window)
        with self._lock:
            return self._fold(int(now // 60) - self.window + 1, counts)

    def _fold(self, oldest: int, counts: list[Count]) -> dict[Series, int]:
        """Take this read's minutes in; a minute that left the window (``oldest``) keeps
        the last value read of it, in ``_gone``. A minute missing from a read (expired
        early) keeps its last value too: a counter never goes down."""
        for c in counts:
            key = (c.minute, (c.task, c.feature, c.event, c.identity))
            self._seen[key] = max(self._seen.get(key, 0), c.value)
        for key in [k for k in self._seen if k[0] < oldest]:
            series = key[1]
            self._gone[series] = self._gone.get(series, 0) + self._seen.pop(key)
        summed = dict(self._gone)
        for (_, series), value in self._seen.items():
            summed[series] = summed.get(series, 0) + value
        return summed

    def collect(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "celery_kv_decisions", "Coordination decisions, counted by the deciding script",
            labels=["task", "feature", "event"])
        per_identity = CounterMetricFamily(
            "celery_kv_identity_decisions", "Decisions for the identities listed in "
            "kv_metrics_identities", labels=["task", "feature", "event", "identity"])
        for (task, feature, event, identity), value in sorted(
                self.totals().items(), key=lambda item: tuple(map(str, item[0]))):
            if identity is None:
                decisions.add_metric([task, feature, event], value)
            else:
                per_identity.add_metric([task, feature, event, identity], value)
        yield decisions
        yield per_identity
        yield from self._live()

    def _live(self) -> Iterator[Metric]:
        state = read_live(self.kv.store)
        locks = GaugeMetricFamily("celery_kv_locks_held", "Held locks (singleton and "
                                  "primitive), by whether a run holds them", labels=["state"])
        for label in ("running", "held"):
            locks.add_metric([label], state.locks.get(label, 0))
        yield locks
        yield GaugeMetricFamily("celery_kv_lock_oldest_age_seconds",
                                "Age of the longest-held lock (0 when none is held)",
                                value=state.oldest_lock_age or 0.0)
        yield GaugeMetricFamily("celery_kv_semaphore_holders", "Live semaphore holders",
                                value=state.semaphore_holders)
        running = GaugeMetricFamily("celery_kv_concurrency_running",
                                    "Concurrency slots held, per pool", labels=["pool"])
        waiting = GaugeMetricFamily("celery_kv_concurrency_waiting",
                                    "Runs parked for a concurrency slot, per pool",
                                    labels=["pool"])
        for pool in sorted(set(state.pool_running) | set(state.pool_waiting)):
            running.add_metric([pool], state.pool_running.get(pool, 0))
            waiting.add_metric([pool], state.pool_waiting.get(pool, 0))
        yield running
        yield waiting
        yield GaugeMetricFamily("celery_kv_deferred", "Messages waiting in the delay store",
                                value=state.deferred)
        lag = GaugeMetricFamily("celery_kv_reservation_lag_seconds", "How far ahead the "
                                "latest reserved rate-limit slot is, per limit scope",
                                labels=["scope"])
        for scope, seconds in sorted(state.reservation_lag.items()):
            lag.add_metric([scope], seconds)
        yield lag


def registry_for(kv: KV, window_minutes: int = 120) -> CollectorRegistry:
    """A registry holding only celery-kv's collector (no process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KVCollector(kv, window_minutes))
    return registry


def serve(kv: KV, port: int, addr: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` from a daemon thread; returns (server, thread)."""
    return start_http_server(port, addr=addr, registry=registry_for(kv))


__all__ = ["KVCollector", "registry_for", "serve"]
