"""Rate-limit invariants across real OS processes, against the session's redis-server.

Eight processes hammer one identity per algorithm for a bounded time and record
every decision with the server time its script decided at. Safety is asserted
strictly over those timestamps; liveness (no under-admission under saturation)
is asserted exactly where the algorithm allows it (a denial only ever happens
when the window is full) and otherwise against the theoretical allowance with
a margin, since the gap between a unit freeing up and the next hit arriving
grows under CPU contention (2 cores shared with other test runs).
"""

from __future__ import annotations

import bisect
import multiprocessing
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from celery_kv.testing import RedisServer

from . import _ratelimit_workers

pytestmark = pytest.mark.slow

PROCESSES = 8
DURATION = 2.0  # seconds of hammering per algorithm
CTX = multiprocessing.get_context("spawn")
LIVENESS = 0.9  # admitted / theoretical allowance, for the approximate checks
PHASES: list[_ratelimit_workers.Phase] = [
    ("gcra", 200, 1.0, 10),  # one unit per 5 ms, burst 10
    ("sliding_log", 50, 0.25, None),
    ("fixed_window", 50, 0.25, None),
    ("sliding_window", 50, 0.25, None),
]
SPEC = {name: (limit, round(period * 1e6), burst) for name, limit, period, burst in PHASES}

Records = list[tuple[int, bool]]


@pytest.fixture(scope="module")
def runs(redis_srv: RedisServer) -> Iterator[dict[str, Records]]:
    """Every phase's decisions from all processes, sorted by server time."""
    prefix = "t" + uuid.uuid4().hex[:10]
    barrier = CTX.Barrier(PROCESSES)
    out = CTX.Queue()
    args = (redis_srv.url, prefix, PHASES, DURATION, barrier, out)
    procs = [CTX.Process(target=_ratelimit_workers.hammer, args=args) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    try:
        results = [out.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    errors = [detail for status, detail in results if status != "ok"]
    assert not errors, errors
    merged: dict[str, Records] = {}
    for _, per_process in results:
        for algorithm, records in per_process.items():
            merged.setdefault(algorithm, []).extend(records)
    yield {algorithm: sorted(records) for algorithm, records in merged.items()}


def admitted(records: Records) -> list[int]:
    return [at for at, allowed in records if allowed]


def saturated(records: Records, limit: int) -> None:
    """The run really pushed past the limit: most hits were denied."""
    times = admitted(records)
    assert len(times) > 2 * limit
    assert len(records) - len(times) > len(times), "not saturated: too few denials"


def test_sliding_log_never_admits_more_than_limit_in_any_period(runs: dict[str, Records]) -> None:
    limit, period, _ = SPEC["sliding_log"]
    records = runs["sliding_log"]
    saturated(records, limit)
    times = admitted(records)
    for first, last in zip(times, times[limit:], strict=False):
        assert last - first >= period, "limit + 1 admitted within one period"
    # exact liveness: a hit is denied only when the last period already holds `limit`
    for at, allowed in records:
        if not allowed:
            inside = bisect.bisect_right(times, at) - bisect.bisect_right(times, at - period)
            assert inside == limit, f"denied at {at} with only {inside} in the period"


def test_gcra_never_admits_more_than_burst_plus_rate_times_interval(
    runs: dict[str, Records],
) -> None:
    limit, period, burst = SPEC["gcra"]
    assert burst is not None
    records = runs["gcra"]
    saturated(records, burst)
    times = admitted(records)
    # For all i <= j: (j - i + 1) <= burst + (t_j - t_i) * limit / period, in integers:
    # g(j) - min_{i<=j} g(i) <= (burst - 1) * period with g(k) = k * period - t_k * limit.
    lowest = None
    for k, at in enumerate(times):
        g = k * period - at * limit
        lowest = g if lowest is None else min(lowest, g)
        assert g - lowest <= (burst - 1) * period, f"over burst + rate at admission {k}"
    span = records[-1][0] - records[0][0]
    allowance = burst + span * limit / period
    assert len(times) <= allowance
    assert len(times) >= LIVENESS * allowance, (len(times), allowance)


def test_fixed_window_never_admits_more_than_limit_per_window(runs: dict[str, Records]) -> None:
    limit, period, _ = SPEC["fixed_window"]
    records = runs["fixed_window"]
    saturated(records, limit)
    per_window = Counter(at // period for at in admitted(records))
    assert max(per_window.values()) <= limit
    # exact liveness: a window that denied anything had admitted its whole limit
    for window in {at // period for at, allowed in records if not allowed}:
        assert per_window[window] == limit, f"window {window} denied below its limit"


def test_sliding_window_stays_within_its_approximation(runs: dict[str, Records]) -> None:
    limit, period, _ = SPEC["sliding_window"]
    records = runs["sliding_window"]
    saturated(records, limit)
    times = admitted(records)
    assert max(Counter(at // period for at in times).values()) <= limit
    for first, last in zip(times, times[2 * limit :], strict=False):
        assert last - first >= period, "more than twice the limit within one period"
    span = records[-1][0] - records[0][0]
    allowance = span * limit / period  # the nominal rate over the run
    assert len(times) >= LIVENESS * allowance, (len(times), allowance)


def test_every_phase_ran_with_all_processes(runs: dict[str, Any]) -> None:
    assert set(runs) == set(SPEC)
