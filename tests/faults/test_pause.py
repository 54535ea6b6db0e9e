"""SIGSTOP of the coordination Redis: a server that stops answering, then comes back."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import redis

from celery_kv.testing import RedisServer
from tests.faults.harness import Scenario, ride_out

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.timeout(300)]


@pytest.mark.parametrize("seconds", [2.0, 10.0])
def test_sigstop_of_the_coordination_redis(scenario: Callable[..., Scenario],
                                           coordination: RedisServer, seconds: float) -> None:
    """0 lost, 0 ran twice, no limit exceeded; 10 s is past the socket timeout (5 s) and
    the retry deadline (5 s), so calls fail while Redis still holds them to run later."""
    client = redis.Redis.from_url(coordination.url, decode_responses=True)
    process = coordination.process
    ride_out(scenario(f"SIGSTOP {seconds:g} s", coordination.url, client),
             lambda: process.send_signal(signal.SIGSTOP),
             lambda: process.send_signal(signal.SIGCONT), seconds)
