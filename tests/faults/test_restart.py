"""``kill -9`` of the coordination Redis and an empty restart on the same port."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
import redis

from celery_kv.testing import RedisServer
from tests.celery.apps import now
from tests.faults.harness import Scenario, plan

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.timeout(300)]

DOWN = 2.0  # seconds between the kill and the restart


def test_kill_9_and_an_empty_restart(scenario: Callable[..., Scenario],
                                     coordination: RedisServer) -> None:
    """0 lost (but deferrals waiting in the delay store, whose data the restart drops),
    0 keys without a TTL, workers recover; a key runs twice only when its
    record was lost with the restart: its first call was sent before the restart, and
    the client's retry after it found no record (the README's "breaks when": the data
    is gone). Likewise a debounced or keep-latest call is answered by an older run only
    when it was sent before the restart (its burst was forgotten, and its message ran
    with its own arguments)."""
    client = redis.Redis.from_url(coordination.url, decode_responses=True)
    s = scenario("kill -9 + empty restart", coordination.url, client)
    with s.producing(plan(s.tag)):
        s.wait_moment()
        s.fault_at()
        coordination.process.send_signal(signal.SIGKILL)
        coordination.process.wait()
        time.sleep(DOWN)  # the outage itself
        coordination.restart()
        restarted = time.monotonic()
        restarted_at = now(s.ledger)
        before = s.runs()
    s.settle(may_be_lost=lambda: s.stored_before(restarted_at))
    assert len(s.runs()) > len(before), "the workers ran bodies after the restart"
    s.send_again()
    f = s.measure(exact=False, forgets=True)
    lost_with_restart = {s_.call.unit for s_ in s.sent
                         if s_.phase == "main" and s_.began < restarted}
    unexplained = [u for u in f.twice if u.split(" x")[0] not in lost_with_restart]
    forgotten_after = [f"{x.call.args[1:]} {x.result.id}" for x in s.forgotten
                       if x.began >= restarted]
    f.notes.append(f"{len(lost_with_restart)} calls sent before the restart")
    # a deferral waiting in the delay store is lost with the store's data
    stored = s.stored_before(restarted_at)
    lost = [d for d in f.lost_detail if not any(i in d for i in stored)]
    f.notes.append(f"{len(f.lost_detail) - len(lost)} lost: waiting in the delay store, "
                   f"of {len(stored)} deferrals stored before the restart")
    assert not lost, f"lost, though not waiting in the delay store: {lost}\n{f.detail()}"
    assert f.failed == f.wrong == f.refused == 0, f.detail()
    assert f.no_ttl == 0, f.detail()
    assert not unexplained, f"ran twice though sent after the restart: {unexplained}"
    assert not forgotten_after, \
        f"answered by an older run though sent after the restart: {forgotten_after}"
