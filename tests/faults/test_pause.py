"""SIGSTOP of the coordination Redis: a server that stops answering, then comes back."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
import redis

from celery_kv.testing import RedisServer
from tests.faults.harness import Scenario, plan

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.timeout(300)]


@pytest.mark.parametrize("seconds", [2.0, 10.0])
def test_sigstop_of_the_coordination_redis(scenario: Callable[..., Scenario],
                                           coordination: RedisServer, seconds: float) -> None:
    """0 lost, 0 ran twice, no limit exceeded; 10 s is past the socket timeout (5 s) and
    the retry deadline (5 s), so calls fail while Redis still holds them to run later."""
    client = redis.Redis.from_url(coordination.url, decode_responses=True)
    s = scenario(f"SIGSTOP {seconds:g} s", coordination.url, client)
    with s.producing(plan(s.tag)):
        s.wait_moment()
        s.fault_at()
        coordination.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)  # the pause itself
        finally:
            coordination.process.send_signal(signal.SIGCONT)
    s.settle()
    s.send_again()
    f = s.measure()
    assert f.lost == 0, f.detail()
    assert f.ran_twice == 0, f.detail()
    assert f.failed == f.wrong == f.refused == 0, f.detail()
    assert not f.violations, f.detail()
