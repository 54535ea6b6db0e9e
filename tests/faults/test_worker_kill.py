"""SIGKILL of a worker's parent: the prefork main process dies, with a slow body running."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Callable

import pytest
import redis

from celery_kv.testing import RedisServer
from tests.celery.conftest import Worker
from tests.celery.test_rabbitmq import AMQP, rabbitmq_up
from tests.conftest import wait_for
from tests.faults.harness import BASE_CONF, Scenario, plan

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.timeout(300)]

LEASE = BASE_CONF["kv_lock_ttl"]  # singleton, concurrency and idempotency leases
CACHE_LEASE = 10.0  # a cache's single-flight lease: its lock_timeout (README, Cache)
#: acks_late, and RabbitMQ as the broker: the messages the killed worker had taken (its
#: running bodies included) go back to the queue when its connection drops. With early
#: acks a running message dies with its worker (Celery's at-most-once), and the Redis
#: transport loses a message popped (BRPOP) but not yet booked as unacknowledged when the
#: worker dies: losses of the broker, not of coordination.
QUEUE = "ckv-faults-" + uuid.uuid4().hex[:8]
REDELIVERY = {"task_acks_late": True, "task_default_queue": QUEUE, "task_queues": None}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_of_a_worker_parent(scenario: Callable[..., Scenario],
                                    coordination: RedisServer) -> None:
    """0 lost; every claim the killed runs held is gone within their lease; a body runs
    again only when the kill cut it off before its outcome was stored (half-way, or
    between its end and the final phase): its message is redelivered (acks_late) and a
    redelivery of the same task id takes the lapsed record over. A debounced or
    keep-latest run cut off likewise frees its burst with its lease, and its redelivery
    runs it again (or follows the next burst, which covers its calls)."""
    if not rabbitmq_up():  # scripts/ensure-rabbitmq starts it; a failure here is real
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (run scripts/ensure-rabbitmq)")
    client = redis.Redis.from_url(coordination.url, decode_responses=True)
    s = scenario("SIGKILL worker parent", coordination.url, client, conf=REDELIVERY,
                 broker=AMQP)
    with s.producing(plan(s.tag)):
        slow = s.wait_moment()
        every = next(e for e in slow if e["task"] == "f.all")
        victim = next(w for w in s.workers if every["node"].startswith(w.node))
        s.fault_at()
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim.process.wait()
        cut_off = {e["id"]: e for e in s.running() if e["node"].startswith(victim.node)}
        ran_there = {e["id"]: e for e in s.starts() if e["node"].startswith(victim.node)}
        text = "\n".join(s.contents().values())
        tokens = {t for tid in ran_there
                  for t in re.findall(re.escape(tid) + r"#run:[\w.-]+", text)}
        held_at_kill = s.live_claims(tokens)
        # A body can end (its ledger entry is written) and die before its outcome is
        # stored: for the record (or the burst) it was cut off too, and its redelivery
        # runs it again.
        unstored = {e["id"]: e for tid, e in ran_there.items()
                    if any(kind in ("idem", "burst") and f"{tid}#run:" in detail
                           for kind, detail in held_at_kill)}
        s.workers.append(Worker(s.env))  # the supervisor starts another one
    s.figures.notes.append(
        f"killed {victim.node} with {len(cut_off)} bodies running, holding "
        f"{len(held_at_kill)} live claims ({', '.join(sorted(k for k, _ in held_at_kill))}); "
        f"its pool children alive after the kill: "
        f"{sorted({e['pid'] for e in cut_off.values() if alive(e['pid'])})}")

    def claims(*kinds: str) -> list[tuple[str, str]]:
        return [c for c in s.live_claims(tokens) if c[0] in kinds]

    def by(lease: float) -> float:
        return lease + 1.5 - (time.monotonic() - killed_at)

    wait_for(lambda: not claims("lock", "sem", "idem", "burst"), by(LEASE),
             "the killed runs' locks, slots, idempotency claims and running bursts to end "
             "with their lease")
    wait_for(lambda: not claims("cache"), by(CACHE_LEASE),
             "the killed runs' cache compute leases to end with theirs")
    s.settle()
    s.send_again()
    f = s.measure()
    half_way = {e["unit"] for e in (*cut_off.values(), *unstored.values())}
    unexplained = [u for u in f.twice if u.split(" x")[0] not in half_way]
    assert held_at_kill, "the killed worker's runs held live claims when it died"
    assert f.lost == 0, f.detail()
    assert f.failed == f.wrong == f.refused == 0, f.detail()
    assert not unexplained, f"ran twice though not cut off by the kill: {unexplained}"
    assert not f.violations, f.detail()
