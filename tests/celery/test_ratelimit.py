"""Global rate limits and concurrency limits across two worker processes (each -c 2)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_kv import RateLimitExceeded
from tests.celery.conftest import Env, Worker, count, events, workers_on
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]

QUEUE = "rl2"


@pytest.fixture(scope="module")
def two_workers(celery_env: Env) -> Iterator[list[Worker]]:
    """Two worker processes, prefork -c 2 each, consuming their own queue."""
    with workers_on(celery_env, QUEUE) as workers:
        yield workers


def max_overlap(intervals: list[dict[str, Any]]) -> int:
    points = sorted([(e["start"], 1) for e in intervals] + [(e["end"], -1) for e in intervals],
                    key=lambda p: (p[0], p[1]))
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


def test_global_limit_holds_across_two_workers(
    two_workers: list[Worker], client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.rl_global"]  # 5/s sliding log, max_retries=0
    results = [task.apply_async((tag, i), queue=QUEUE) for i in range(20)]
    assert sorted(r.get(timeout=60) for r in results) == list(range(20))
    admitted = sorted(events(fx, tag), key=lambda e: e["at"])
    assert len(admitted) == 20 and count(fx, tag) == 20, "every job ran exactly once"
    times = [e["at"] for e in admitted]
    for first, sixth in zip(times, times[5:], strict=False):
        assert sixth - first >= 1.0 - 1e-6, "a 1 s window admitted more than 5"
    assert times[-1] - times[0] >= 3.0 - 1e-6  # 20 at 5/s: at least 3 s between first and last
    assert len({e["host"] for e in admitted}) == 2, "both workers took part"


def test_concurrency_limit_is_never_exceeded_across_workers(
    two_workers: list[Worker], client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.conc"]  # concurrency_limit=2 over 2 workers x 2 processes
    results = [task.apply_async((tag, i, 0.4), queue=QUEUE) for i in range(10)]
    assert sorted(r.get(timeout=60) for r in results) == list(range(10))
    intervals = events(fx, tag)
    assert len(intervals) == 10
    assert max_overlap(intervals) <= 2


def test_one_tenants_flood_does_not_delay_another(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.rl_tenant"]  # 4/s per tenant, max_retries=0
    flood = [task.apply_async((tag, "a", i)) for i in range(24)]
    sent = time.time()
    quiet = [task.apply_async((tag, "b", i)) for i in range(2)]
    quiet_done = max(r.get(timeout=30) for r in quiet)
    flood_done = max(r.get(timeout=60) for r in flood)
    assert len(events(fx, tag, "a")) == 24 and len(events(fx, tag, "b")) == 2
    # 24 jobs at 4/s take >= 5 s; tenant b is admitted at once (generous margins for CI)
    assert flood_done - sent >= 4.0
    assert quiet_done - sent < 3.5, f"tenant b waited {quiet_done - sent:.2f}s behind a"


def test_past_max_delay_the_task_fails_with_rate_limit_exceeded(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.rl_max_delay"]  # 1/m per tag, rate_limit_max_delay=2
    assert task.apply_async((tag, 1)).get(timeout=20) == 1
    late = task.apply_async((tag, 2))
    with pytest.raises(RateLimitExceeded) as caught:
        late.get(timeout=20)
    assert caught.value.task_name == "t.rl_max_delay"
    assert caught.value.key == tag
    assert "t.rl_max_delay" in str(caught.value) and tag in str(caught.value)
    assert count(fx, tag) == 1
    wait_for(lambda: late.state == "FAILURE", 5, "the failure state")
