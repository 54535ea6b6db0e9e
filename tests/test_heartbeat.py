"""Lease renewal: one shared thread per process, stop means stop, and forks start clean."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

from celery_kv.errors import CoordinationUnavailable
from celery_kv.primitives import heartbeat
from celery_kv.primitives.heartbeat import Heartbeat

from .conftest import wait_for


def test_many_heartbeats_share_one_thread_and_each_renews() -> None:
    counts = [0] * 40
    beats = []
    for i in range(40):
        def renew(i: int = i) -> bool:
            counts[i] += 1
            return True
        beats.append(Heartbeat(f"b{i}", 0.3, renew, lambda: None, interval=0.02).start())
    try:
        wait_for(lambda: min(counts) >= 3)
        threads = [t for t in threading.enumerate() if t.name == "celery-kv-heartbeat"]
        assert len(threads) == 1
    finally:
        for beat in beats:
            beat.stop()


def test_stop_ends_renewals_and_never_reports_a_loss() -> None:
    calls: list[float] = []
    lost: list[bool] = []
    beat = Heartbeat("s", 0.3, lambda: calls.append(time.monotonic()) or True,
                     lambda: lost.append(True), interval=0.02).start()
    wait_for(lambda: len(calls) >= 2)
    beat.stop()
    seen = len(calls)
    stop_at = time.monotonic()
    wait_for(lambda: time.monotonic() - stop_at > 0.1)  # five intervals go by
    assert len(calls) <= seen + 1  # at most one renewal that had already started
    assert lost == [] and not beat.lost


def test_a_renewal_that_says_not_ours_marks_it_lost() -> None:
    lost: list[bool] = []
    beat = Heartbeat("l", 0.3, lambda: False, lambda: lost.append(True), interval=0.02).start()
    wait_for(lambda: beat.lost)
    assert lost == [True]


def test_unreachable_redis_is_retried_until_the_lease_is_surely_over() -> None:
    started = time.monotonic()
    lost_at: list[float] = []

    def renew() -> bool:
        raise CoordinationUnavailable("renew", "down")

    beat = Heartbeat("u", 0.3, renew, lambda: lost_at.append(time.monotonic()),
                     interval=0.02).start()
    wait_for(lambda: lost_at)
    assert beat.lost and lost_at[0] - started >= 0.3  # not before the lease could end


def _child(queue: Any) -> None:
    inherited = len(heartbeat._timetable._due)
    renewed = threading.Event()
    Heartbeat("child", 0.3, lambda: renewed.set() or True, lambda: None, interval=0.02).start()
    queue.put((inherited, renewed.wait(5)))


def test_a_forked_child_starts_with_no_inherited_leases() -> None:
    beat = Heartbeat("parent", 30.0, lambda: True, lambda: None).start()
    try:
        assert heartbeat._timetable._due  # the parent has one due
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child, args=(queue,))
        child.start()
        inherited, renewed = queue.get(timeout=10)
        child.join(10)
        assert inherited == 0 and renewed
    finally:
        beat.stop()
