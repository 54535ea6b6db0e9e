"""Metrics on real workers: the counters the decision scripts keep, scraped from a worker's
``kv_metrics_port``, equal what the workload's journal of signals says happened."""

from __future__ import annotations

import dataclasses
import urllib.request
import uuid
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celery_kv.celery.install import installed
from celery_kv.testing.events import JOURNAL_ENV, KVEvents, journal_key
from celery_kv.testing.servers import free_port
from tests.conftest import wait_for

from .conftest import Env, Worker

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def scrape(port: int) -> dict[tuple[str, ...], float]:
    """``celery_kv_decisions_total`` by (task, feature, event), from the HTTP endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "celery_kv_decisions_total":
                labels = sample.labels
                found[(labels["task"], labels["feature"], labels["event"])] = sample.value
    return found


def test_scraped_counters_equal_the_journal(celery_env: Env, tag: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Deduplicated (enqueue and execution), replayed, rate-limit denials and cache hits and
    misses: the worker's /metrics says exactly what the signals recorded, task by task."""
    prefix = "ckvm" + uuid.uuid4().hex[:6]
    broker = celery_env.broker.rsplit("/", 1)[0] + "/9"  # a queue no other worker reads
    port = free_port()
    env = dataclasses.replace(celery_env, broker=broker, prefix=prefix,
                              conf={"kv_metrics_port": port})
    monkeypatch.setenv(JOURNAL_ENV, journal_key(prefix))  # the worker journals its signals
    worker = Worker(env)
    monkeypatch.delenv(JOURNAL_ENV)  # this process records its own in `events`
    events = KVEvents().start()  # the client's own decisions (enqueue-stage duplicates)
    try:
        app = env.app("ckv-metrics-client")
        kv = installed(app).kv
        events.attach(kv.client, journal_key(prefix))
        idem, cached, limited = (app.tasks[n] for n in ("t.idem_add", "t.cached", "t.rl_tenant"))

        first = idem.apply_async((tag, 1, 2))
        dupes = [idem.apply_async((tag, 1, 2)) for _ in range(2)]
        assert first.get(timeout=20) == 3 and all(d.get(timeout=20) == 3 for d in dupes)
        # a message that skips apply_async is replayed at the worker
        assert app.send_task("t.idem_add", (tag, 1, 2)).get(timeout=20) == 3
        assert [cached.delay(tag, 5).get(timeout=20)["x"] for _ in range(3)] == [5, 5, 5]
        burst = [limited.delay(tag, "acme", i) for i in range(7)]  # 4/s: some wait for a slot
        for result in burst:
            result.get(timeout=30)

        def journal() -> Counter[tuple[str, str]]:
            return Counter((e.name, e.task) for e in events.events)

        expected = journal()
        assert expected[("task_replayed", "t.idem_add")] >= 1
        assert expected[("task_rate_limited", "t.rl_tenant")] >= 1
        assert expected[("cache_hit", "t.cached")] == 2

        pairs = {
            ("t.idem_add", "idempotency", "deduplicated"): ("task_deduplicated", "t.idem_add"),
            ("t.idem_add", "idempotency", "replayed"): ("task_replayed", "t.idem_add"),
            ("t.rl_tenant", "rate_limit", "denied"): ("task_rate_limited", "t.rl_tenant"),
            ("t.cached", "cache", "cache_hit"): ("cache_hit", "t.cached"),
            ("t.cached", "cache", "cache_miss"): ("cache_miss", "t.cached"),
            ("t.cached", "cache", "admitted"): ("task_admitted", "t.cached"),
            ("t.rl_tenant", "rate_limit", "admitted"): ("task_admitted", "t.rl_tenant"),
        }

        def agree() -> bool:
            scraped = scrape(port)
            return all(scraped.get(series, 0) == journal()[signal]
                       for series, signal in pairs.items())

        wait_for(agree, 10, "the scraped counters to equal the journal")
        scraped = scrape(port)
        assert {s: scraped.get(s, 0) for s in pairs} == {
            s: float(journal()[signal]) for s, signal in pairs.items()}
        # every minute's counters expire
        keys = list(kv.client.scan_iter(match=f"{prefix}:metrics:*"))
        assert keys and all(0 < kv.client.ttl(k) <= 7200 for k in keys)
    finally:
        events.stop()
        worker.stop()
