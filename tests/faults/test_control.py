"""The harness itself: its checks catch what they claim to, and with no fault the stream
runs exactly once everywhere (so a fault scenario's figures mean the fault)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from celery_kv.testing import RedisServer
from tests.faults.harness import (
    BURSTS,
    Call,
    Scenario,
    Sent,
    check_bursts,
    check_ledger,
    most_at_once,
    most_in_a_second,
    plan,
)
from tests.faults.tasks import DEBOUNCE_MAX_WAIT

BURST_CALLS = 60  # 30 debounced, 30 keep-latest


class Answered:
    """A result's id, as ``AsyncResult`` has it."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id


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
    bursts = [{**entry("f.debounce", "debounce:0", 0, 1), "i": 1},
              {**entry("f.debounce", "debounce:0", 0.5, 2), "i": 2}]
    assert check_ledger(bursts) == ["burst debounce:0: two runs overlap"]


def burst_call(i: int, began_at: float, value: Any, task_id: str = "t1") -> Sent:
    return Sent(Call("debounce", "f.debounce", ("tag", 0, i), None), "main", 0.0, began_at,
                Answered(task_id), state="SUCCESS", value=value)


def test_the_burst_check_catches_an_older_value_and_an_unknown_one() -> None:
    """A call must get the ``i`` of a run of its group that started after it, its own
    ``i`` or a later one."""
    runs = [{**entry("f.debounce", "debounce:0", 10.0, 10.1), "i": 3, "id": "t1"},
            {**entry("f.debounce", "debounce:1", 10.0, 10.1), "i": 4, "id": "t2"}]
    fine = [burst_call(1, 9.0, 3), burst_call(3, 9.5, 3)]
    assert check_bursts(fine, runs) == ([], [])
    newer_call = burst_call(5, 9.6, 3)  # a call answered by the arguments of an earlier one
    before = burst_call(3, 10.5, 3)  # answered by a run that started before it was sent
    unknown = burst_call(2, 9.0, 4)  # a value only another group's run returned
    unmatched, older = check_bursts([*fine, newer_call, before, unknown], runs)
    assert [s for s, _ in older] == [newer_call, before]
    assert len(unmatched) == 1 and "returned 4, which no run of its group ran" in unmatched[0]


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
    assert f.sent == 2 * 152 + 130 + BURST_CALLS, \
        "the whole stream, and every idempotent call again"
    assert f.ran_twice == f.lost == f.failed == f.wrong == f.refused == f.no_ttl == 0, \
        f.detail()
    assert f.forgotten == 0 and not f.violations, f.detail()
    bursts = [x for x in s.sent if x.call.kind in BURSTS]
    burst_ids = {x.result.id for x in bursts}
    assert f.ran_once == 152 + 100 + len(burst_ids), \
        "each idempotency key, each other task id, each burst's task id"
    runs = [e for e in s.runs() if e["task"] in ("f.debounce", "f.latest")]
    for kind in BURSTS:
        ran = [e for e in runs if e["task"] == f"f.{kind}"]
        calls = [x for x in bursts if x.call.kind == kind]
        assert sum(e["triggers"] for e in ran) == len(calls), \
            f"{kind}: the runs' kv_triggers sum to the calls"
        assert len(ran) < len(calls), f"{kind}: bursts collapsed into fewer runs"
    late = []
    for e in (e for e in runs if e["task"] == "f.debounce"):
        first = min(x.began_at for x in bursts if x.result.id == e["id"])
        if e["start"] - first > DEBOUNCE_MAX_WAIT + 1.0:
            late.append(f"{e['id']}: started {e['start'] - first:.2f} s after its first call")
    assert not late, f"debounced bursts past their maximum wait (+1 s): {late}"
