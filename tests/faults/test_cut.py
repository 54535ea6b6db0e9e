"""A cut network between the workers and producer and the coordination Redis
(``tests/proxy.py``): open connections dropped, new ones refused, then restored."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from celery_kv.testing import RedisServer
from tests.faults.harness import Scenario, plan
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
    s = scenario(f"cut {seconds:g} s", proxy.url, client)
    with s.producing(plan(s.tag)):
        s.wait_moment()
        s.fault_at()
        proxy.cut()
        try:
            time.sleep(seconds)  # the cut itself
        finally:
            proxy.restore()
    s.settle()
    s.send_again()
    f = s.measure()
    assert f.lost == 0, f.detail()
    assert f.ran_twice == 0, f.detail()
    assert f.failed == f.wrong == f.refused == 0, f.detail()
    assert not f.violations, f.detail()
