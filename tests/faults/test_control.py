"""The harness itself: its checks catch what they claim to, and with no fault the stream
runs exactly once everywhere (so a fault scenario's figures mean the fault)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from celery_kv.testing import RedisServer
from tests.faults.harness import Scenario, check_ledger, most_at_once, most_in_a_second, plan


def entry(task: str, group: str, start: float, end: float, at: float | None = None) -> dict[
        str, Any]:
    return {"task": task, "group": group, "start": start, "end": end, "at": at}


def test_the_ledger_checks_catch_overlap_excess_and_a_burst() -> None:
    assert most_at_once([entry("f.single", "g", 0, 1), entry("f.single", "g", 1, 2)]) == 1
    assert most_at_once([entry("f.single", "g", 0, 1), entry("f.single", "g", 0.5, 2)]) == 2
    assert most_in_a_second([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    ledger = [entry("f.single", "single:1", 0, 1), entry("f.single", "single:1", 0.9, 2),
              entry("f.single", "single:2", 0, 3),
              *[entry("f.conc", "conc", 0, 1) for _ in range(3)],
              *[entry("f.rate", "rate", i, i, at=i / 100) for i in range(21)]]
    assert check_ledger(ledger) == [
        "singleton single:1: two runs overlap",
        "f.conc: 3 running at once, limit 2",
        "f.rate: 21 admitted within one second, limit 20",
    ]


@pytest.mark.slow
@pytest.mark.worker
@pytest.mark.timeout(300)
def test_no_fault(scenario: Callable[..., Scenario], coordination: RedisServer) -> None:
    client = redis.Redis.from_url(coordination.url, decode_responses=True)
    s = scenario("no fault", coordination.url, client)
    with s.producing(plan(s.tag)):
        s.wait_moment()
        s.fault_at()
    s.settle()
    s.send_again()
    f = s.measure()
    assert f.sent == 2 * 152 + 130, "the whole stream, and every idempotent call again"
    assert f.ran_twice == f.lost == f.failed == f.wrong == f.refused == f.no_ttl == 0, \
        f.detail()
    assert not f.violations, f.detail()
    assert f.ran_once == 152 + 100, "each idempotency key, and each other task id"
