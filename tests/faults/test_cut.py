"""A cut network between the workers and producer and the coordination Redis
(``tests/proxy.py``): open connections dropped, new ones refused, then restored."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from celery_kv.testing import RedisServer
from tests.faults.harness import Scenario, ride_out
from tests.proxy import CuttableProxy

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.timeout(300)]


@pytest.fixture
def proxy(coordination: RedisServer) -> Iterator[CuttableProxy]:
    found = CuttableProxy(coordination.port)
    yield found
    found.close()


@pytest.mark.parametrize("seconds", [2.0, 10.0])
def test_cut_between_the_workers_and_the_coordination_redis(
    scenario: Callable[..., Scenario], coordination: RedisServer, proxy: CuttableProxy,
    seconds: float,
) -> None:
    """0 lost, 0 ran twice, no limit exceeded. A cut loses replies of calls Redis did
    run; 10 s is past the retry deadline (5 s) and the leases (3 s)."""
    client = redis.Redis.from_url(coordination.url, decode_responses=True)
    ride_out(scenario(f"cut {seconds:g} s", proxy.url, client), proxy.cut, proxy.restore,
             seconds)
