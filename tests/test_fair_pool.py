"""The fair concurrency pool's scripts (task_concurrency_*), driven without a worker, on every
backend: slots per key and in total, parking, grants in weighted round robin across keys
and first come first served within one, lapsed grants, spent tickets, TTLs, bad weights."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from celery_kv import KV
from celery_kv.primitives._arguments import text
from celery_kv.primitives.fair_pool import FairPool, key_id
from celery_kv.store import Step

from .conftest import keys_under, wait_for


class Pool:
    """One task's pool, driven as the Celery feature drives it; a message is its ticket."""

    def __init__(self, kv: KV, limit: int, total: int = 0, *, lease_ms: int = 30_000,
                 grant_ms: int = 30_000, queued_ms: int = 60_000, max_waiting: int = 0
                 ) -> None:
        self.kv = kv
        self.pool = FairPool(kv.store, "t.fair-" + uuid.uuid4().hex[:6])
        self.conf = {"limit": limit, "total": total, "lease_ms": lease_ms,
                     "grant_ms": grant_ms, "queued_ms": queued_ms}
        self.max_waiting = max_waiting

    def _run(self, script: str, **args: Any) -> list[Any]:
        step = Step(script, self.pool.keys, self.pool.args(**self.conf, **args))
        reply = self.kv.store.run_phase("test", [step]).replies[0]
        return [text(part) if isinstance(part, bytes) else part for part in reply]

    def start(self, key: str, token: str, ticket: str = "", park: bool = True) -> list[Any]:
        """A run's start: it parks under ticket ``token`` (its message is the token)."""
        return self._run("task_concurrency_start", token=token, kid=key_id(key),
                         mode="start", ticket=ticket, message=token if park else "",
                         max_waiting=self.max_waiting, new_ticket=token)

    def release(self, key: str, token: str, mode: str = "grant") -> list[Any]:
        return self._run("task_concurrency_release", token=token, kid=key_id(key), mode=mode)

    def renew(self, key: str, token: str) -> list[Any]:
        return self._run("task_concurrency_renew", token=token, kid=key_id(key), mode="renew")

    def pump(self) -> list[str]:
        return self.pool.pump(self.conf["limit"], self.conf["total"], self.conf["queued_ms"],
                              self.conf["grant_ms"])

    def run_granted(self, key: str, ticket: str) -> list[Any]:
        """The granted message's delivery: its run converts the grant."""
        return self.start(key, "run-" + ticket, ticket=ticket)


def granted(reply: list[Any]) -> list[str]:
    if reply[0] == "deny":
        return [str(m) for m in reply[3:]]
    return [str(m) for m in reply[1:]]


def test_slots_per_key_then_fifo_grants(kv: KV) -> None:
    p = Pool(kv, limit=2)
    assert p.start("a", "r1")[0] == "ok"
    assert p.start("a", "r2")[0] == "ok"
    assert p.start("b", "r3")[0] == "ok", "another key has its own slots"
    parked = [p.start("a", f"w{i}") for i in range(4)]
    assert [r[:3] for r in parked] == [["deny", "parked", n] for n in (1, 2, 3, 4)]
    assert all(granted(r) == [] for r in parked)
    assert p.pool.state()["a"] == {"running": 2, "waiting": 4}
    order = []
    for holder in ("r1", "r2"):
        order += granted(p.release("a", holder))
    assert order == ["w0", "w1"], "first come, first served within a key"
    assert p.run_granted("a", "w0") == ["ok"]
    assert p.start("a", "late")[:2] == ["deny", "parked"], "a newcomer queues behind waiters"
    order += granted(p.release("a", "run-w0"))
    assert order == ["w0", "w1", "w2"]


def test_weighted_round_robin_across_keys(kv: KV) -> None:
    p = Pool(kv, limit=4, total=4)
    holders = [f"h{i}" for i in range(4)]
    for h in holders:
        assert p.start("a", h)[0] == "ok"
    for i in range(40):
        p.start("a", f"a{i}")
        p.start("b", f"b{i}")
    p.pool.set_weight("a", 3)
    starts: list[str] = []
    running = [("a", h) for h in holders]
    while len(starts) < 40:
        key, token = running.pop(0)
        for ticket in granted(p.release(key, token)):
            starts.append(ticket)
            owner = ticket[0]
            assert p.run_granted(owner, ticket) == ["ok"]
            running.append((owner, "run-" + ticket))
    split = Counter(t[0] for t in starts)
    assert 2.7 <= split["a"] / split["b"] <= 3.3, split
    within = [int(t[1:]) for t in starts if t[0] == "a"]
    assert within == sorted(within), "FIFO within a key"


def test_a_key_that_starts_waiting_joins_at_the_current_pass(kv: KV) -> None:
    p = Pool(kv, limit=4, total=4)
    for h in range(4):
        assert p.start("a", f"h{h}")[0] == "ok"
    for i in range(200):
        p.start("a", f"a{i}")
    running = [("a", f"h{h}") for h in range(4)]
    starts: list[str] = []

    def step() -> None:
        key, token = running.pop(0)
        for ticket in granted(p.release(key, token)):
            starts.append(ticket)
            assert p.run_granted(ticket[0], ticket) == ["ok"]
            running.append((ticket[0], "run-" + ticket))

    for _ in range(100):  # key a alone for a while: its pass runs far ahead
        step()
    for i in range(5):
        assert p.start("b", f"b{i}")[:2] == ["deny", "parked"]
    before = len(starts)
    while any(t.startswith("b") for t in starts[before:]) is False or \
            sum(t.startswith("b") for t in starts[before:]) < 5:
        step()
    assert len(starts) - before <= 10, starts[before:]


def test_total_is_shared_by_all_keys(kv: KV) -> None:
    p = Pool(kv, limit=2, total=3)
    assert [p.start(k, f"r{k}{i}")[0] for k in "ab" for i in range(2)] == \
        ["ok", "ok", "ok", "deny"]
    assert p.start("c", "rc0")[:2] == ["deny", "parked"], "the total is taken"
    assert granted(p.release("a", "ra0")) == ["rb1"], "the earlier waiter goes first"


def test_lapsed_grant_goes_back_in_line_and_a_second_copy_runs_once(kv: KV) -> None:
    p = Pool(kv, limit=1, grant_ms=150)
    assert p.start("a", "r0")[0] == "ok"
    assert granted(p.start("a", "w1")) == []
    assert granted(p.start("a", "w2")) == []
    assert granted(p.release("a", "r0")) == ["w1"]  # its message is lost
    assert p.pump() == [], "the grant still holds the slot"
    regrant = wait_for(p.pump, 3.0, "the lapsed grant to be handed out again")
    assert regrant == ["w1"], "the waiter keeps its place in line"
    assert p.run_granted("a", "w1") == ["ok"]
    assert p.start("a", "copy", ticket="w1")[:2] == ["deny", "spent"], \
        "a second copy of its message (granted twice) does not run"
    assert granted(p.release("a", "run-w1")) == ["w2"]


def server_ms(kv: KV) -> float:
    sec, usec = kv.client.time()
    return float(sec * 1000 + usec / 1000)


def lapsed(kv: KV, p: Pool, key: str, token: str) -> bool:
    ends = kv.client.zscore(p.pool.keys[0], f"{key_id(key)}|{token}")
    return ends is not None and float(ends) < server_ms(kv)


def test_copy_of_a_requeued_waiter_is_dropped(kv: KV) -> None:
    p = Pool(kv, limit=1, grant_ms=100)
    assert p.start("a", "r0")[0] == "ok"
    p.start("a", "w1")
    assert granted(p.release("a", "r0")) == ["w1"]
    wait_for(lambda: lapsed(kv, p, "a", "g:w1"), 3.0, "the grant to lapse")
    assert p.run_granted("a", "w1")[:2] == ["deny", "spent"], \
        "late copy: the waiter is queued again and will be granted again"
    assert p.pump() == ["w1"]


def test_max_waiting_per_key(kv: KV) -> None:
    p = Pool(kv, limit=1, max_waiting=2)
    p.start("a", "r0")
    assert p.start("a", "w1")[:2] == ["deny", "parked"]
    assert p.start("a", "w2")[:2] == ["deny", "parked"]
    assert p.start("a", "w3") == ["deny", "full", 2]
    assert p.start("b", "r1")[0] == "ok", "per key"
    assert p.pool.state()["a"]["waiting"] == 2


def test_eager_runs_are_not_parked(kv: KV) -> None:
    p = Pool(kv, limit=1)
    p.start("a", "r0")
    reply = p.start("a", "eager", park=False)
    assert reply[:2] == ["deny", "busy"] and 0 < int(reply[2]) <= 30_000
    assert p.pool.state()["a"]["waiting"] == 0


def test_waiter_past_the_queued_ttl_is_dropped(kv: KV) -> None:
    p = Pool(kv, limit=1, queued_ms=100)
    p.start("a", "r0")
    p.start("a", "w1")
    deadline = float(text(kv.client.hget(p.pool.keys[3], "w1")).split("|", 1)[0])
    wait_for(lambda: server_ms(kv) > deadline, 3.0, "the waiter's deadline to pass")
    assert granted(p.release("a", "r0")) == []
    assert kv.client.hget(p.pool.keys[3], "w1") is None


def test_renew_and_every_key_has_a_ttl_and_goes_when_done(kv: KV) -> None:
    p = Pool(kv, limit=1)
    assert p.start("a", "r0")[0] == "ok"
    p.start("a", "w1")
    assert p.renew("a", "r0") == ["ok"]
    assert p.renew("a", "nobody") == ["deny"]
    for key in keys_under(kv):
        assert kv.client.pttl(key) > 0, f"{key} has no TTL"
    assert granted(p.release("a", "r0")) == ["w1"]
    assert p.run_granted("a", "w1") == ["ok"]
    assert p.release("a", "run-w1") == ["ok"]
    left = [k for k in keys_under(kv) if not k.endswith(":meta")]
    assert left == [], "a pool with no holder and no waiter leaves nothing but its counter"


def test_undo_of_a_converted_start_lets_its_ticket_come_back(kv: KV) -> None:
    p = Pool(kv, limit=1, grant_ms=100)
    p.start("a", "r0")
    p.start("a", "w1")
    assert granted(p.release("a", "r0")) == ["w1"]
    assert p.run_granted("a", "w1") == ["ok"]
    p._run("task_concurrency_release", token="run-w1", kid=key_id("a"), mode="start",
           ticket="w1")  # a later step (a rate limit) denied: the start is undone
    assert p.start("a", "again", ticket="w1")[0] == "ok", "its deferred message runs"


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf"), "3", True, None, 1e7])
def test_bad_weights_are_refused_and_write_nothing(kv: KV, weight: Any) -> None:
    pool = FairPool(kv.store, "t.weights")
    with pytest.raises(ValueError, match="weight"):
        pool.set_weight("tenant-a", weight)
    assert keys_under(kv) == []


def test_weights_round_trip(kv: KV) -> None:
    pool = FairPool(kv.store, "t.weights")
    for key in ("tenant-a", "", "a|b}c", "ü{*}\n", "x" * 400):
        assert pool.set_weight(key, 2.5) == 2.5
    shown = pool.weights()
    assert shown["tenant-a"] == shown[""] == shown["a|b}c"] == shown["ü{*}\n"] == 2.5
    assert pool.clear_weight("tenant-a") and "tenant-a" not in pool.weights()


def test_a_granted_message_that_ends_without_its_slot_hands_it_on(kv: KV) -> None:
    p = Pool(kv, limit=1)
    p.start("a", "r0")
    p.start("a", "w1")
    p.start("a", "w2")
    assert granted(p.release("a", "r0")) == ["w1"]
    # w1's message is revoked (or replayed, or its id already finished): its grant goes
    assert granted(p.release("a", "g:w1", mode="revoke")) == ["w2"]
    assert p.run_granted("a", "w1")[0] != "ok", "w1's grant and message are gone"
