"""Testing a project's own celery-kv tasks with the pytest plugin (``celery-kv[testing]``).

    SHOP_EAGER=1 pytest -c examples/testing/pytest.ini examples/testing   # eager
    SHOP_BROKER=redis://127.0.0.1:6379/1 SHOP_BACKEND=redis://127.0.0.1:6379/2 \
        pytest -c examples/testing/pytest.ini examples/testing            # on workers

``pytest.ini`` names the app (``kv_app = examples.testing.tasks:app``); nothing else is
needed in a ``conftest.py``. The fixtures: ``kv_app`` (the app, its coordination on
fakeredis, or on ``kv_redis`` when the test asks for it), ``kv_events`` (every
coordination decision, with ``assert_*`` helpers) and ``kv_worker`` (a real worker
subprocess on the test's Redis).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from celery_kv import RateLimitExceeded
from celery_kv.testing.events import KVEvents
from celery_kv.testing.plugin import KVRedis
from examples.testing.tasks import call_partner, charge, rebuild

eager = pytest.mark.skipif(os.environ.get("SHOP_EAGER") != "1",
                           reason="runs with SHOP_EAGER=1 (task_always_eager)")
on_workers = pytest.mark.skipif(os.environ.get("SHOP_EAGER") == "1",
                                reason="runs on workers (SHOP_EAGER unset)")
real_broker = pytest.mark.skipif(
    not os.environ.get("SHOP_BROKER"),
    reason="a worker subprocess needs a real broker: set SHOP_BROKER and SHOP_BACKEND "
           "(redis://127.0.0.1:6379/1 and /2, say)")


# -- eager: the same rules as a worker, run in the test's own thread ----------------------

@eager
def test_a_retried_charge_is_charged_once(kv_app: Any, kv_events: KVEvents) -> None:
    first = charge.delay("order-7", 500)
    again = charge.delay("order-7", 500)  # the client retried after a timeout
    assert again.get() == first.get() == {"order_id": "order-7", "cents": 500}
    kv_events.assert_ran(first)
    kv_events.assert_deduplicated(again, key="order-7")


@eager
def test_a_tenant_over_its_limit_waits(kv_app: Any, kv_events: KVEvents) -> None:
    assert call_partner.delay("acme", "a").get() == "acme:a"
    assert call_partner.delay("acme", "b").get() == "acme:b"
    with pytest.raises(RateLimitExceeded):  # eagerly there is no queue to wait in
        call_partner.delay("acme", "c")
    assert call_partner.delay("globex", "a").get() == "globex:a"  # another tenant: free
    kv_events.assert_rate_limited("examples.testing.tasks.call_partner", times=1, key="acme")


# -- Celery's in-process worker (a thread of the test process, on fakeredis) ---------------

@on_workers
def test_a_second_rebuild_while_one_is_queued_is_deduplicated(
        kv_app: Any, kv_events: KVEvents) -> None:
    first, second = rebuild.delay(7), rebuild.delay(7)
    with start_worker(kv_app, pool="solo", perform_ping_check=False):
        assert first.get(timeout=10) == 7
    assert second.id == first.id  # the duplicate got the holder's AsyncResult
    kv_events.assert_deduplicated(second, key="7")
    kv_events.assert_not_deduplicated(first)


# -- real worker subprocesses, on a throwaway redis-server ---------------------------------

@on_workers
@real_broker
def test_a_tenant_over_its_limit_is_deferred_on_real_workers(
        kv_app: Any, kv_redis: KVRedis, kv_events: KVEvents, kv_worker: Any) -> None:
    with kv_worker("examples.testing.tasks", concurrency=2):
        done = [call_partner.delay("acme", p) for p in ("a", "b")]
        later = call_partner.delay("acme", "c")  # deferred to its reserved slot, ~30 s
        assert [r.get(timeout=20) for r in done] == ["acme:a", "acme:b"]
        kv_events.assert_rate_limited("examples.testing.tasks.call_partner", times=1,
                                      key="acme")
        assert not later.ready()  # it waits in Redis for its slot, holding no worker
