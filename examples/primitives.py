"""The primitives from plain Python: no Celery, no worker (a script, a web view, a lambda).

    python -m examples.primitives

Threads stand in for the several processes that would share these keys in production;
each operation is one Lua script on Redis, so it makes no difference to Redis.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery_kv import KV, IdempotencyInProgress, IdempotencyKeyReused
from examples.common import REDIS_URL, start_fresh

kv = KV.from_url(REDIS_URL, prefix="example-primitives")


class Ledger:
    """A resource that remembers the highest fence it accepted and refuses older writers
    (in SQL: ``UPDATE ... SET last_fence = :fence WHERE last_fence <= :fence``)."""

    def __init__(self) -> None:
        self.last_fence = 0
        self.rows: list[str] = []

    def write(self, fence: int, row: str) -> bool:
        if fence < self.last_fence:
            return False
        self.last_fence = fence
        self.rows.append(row)
        return True


def lock_with_fence() -> None:
    ledger = Ledger()
    stalled = kv.lock("ledger", ttl=0.2)  # no auto_renew: as if its heartbeat froze too
    if not stalled.acquire():
        raise SystemExit("the ledger lock is held by someone else")
    old_fence = int(stalled.fence or 0)
    ledger.write(old_fence, "A starts")
    while stalled.owned():  # A pauses (GC, swap, SIGSTOP) until its lease has run out
        time.sleep(0.02)
    with kv.lock("ledger", ttl=10, auto_renew=True) as current:  # B takes over
        new_fence = int(current.fence or 0)
        ledger.write(new_fence, "B writes")
        late = ledger.write(old_fence, "A wakes up and writes")  # A does not know it lost
    print(f"lock: A (fence {old_fence}) stalled past its lease, B took over "
          f"(fence {new_fence}); A's late write {'accepted' if late else 'refused'}")


def semaphore() -> None:
    slots = [kv.semaphore("partner-api", limit=2, ttl=10) for _ in range(3)]
    granted = [s for s in slots if s.acquire()]
    print(f"semaphore(limit=2): 3 acquire -> {len(granted)} granted, "
          f"{slots[0].holders()} holders")
    for slot in granted:
        slot.release()


def cache() -> None:
    reports = kv.cache("reports", ttl=60)
    computed: list[int] = []

    def total() -> dict[str, int]:
        computed.append(1)
        time.sleep(0.2)  # a slow query
        return {"total": 42}

    with ThreadPoolExecutor(4) as pool:
        values = list(pool.map(lambda _: reports.get_or_set("q3", total), range(4)))
    reports.set("nothing", None)
    none_hit = reports.get("nothing", default="miss") is None  # a cached None is a hit
    print(f"cache: 4 concurrent get_or_set -> {len(computed)} computation, "
          f"{len({repr(v) for v in values})} distinct value; cached None is a hit: {none_hit}")


def idempotency() -> None:
    payments = kv.idempotency("payments", ttl=600, lease=30)
    charged: list[int] = []

    def charge(order_id: int, cents: int) -> dict[str, Any]:
        charged.append(order_id)
        time.sleep(0.2)  # the card network
        return {"order_id": order_id, "cents": cents}

    def request(_: int) -> str:
        try:
            payments.run("order-42", charge, 42, 1000)
            return "ok"
        except IdempotencyInProgress:
            return "409"  # what a web view answers: try again later

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(request, range(4)))
    replayed = payments.run("order-42", charge, 42, 1000)  # the client's retry
    try:
        payments.run("order-42", charge, 42, 999)
        reused = "accepted"
    except IdempotencyKeyReused:
        reused = "refused (422)"
    print(f"idempotency: 4 concurrent requests -> {len(charged)} charge "
          f"({answers.count('409')} told 409 in progress); retry replays {replayed}; "
          f"same key, other amount: {reused}")


def sessions() -> None:
    web = kv.sessions("web", ttl=1800, max_lifetime=86400)
    sid = web.create({"user": "alice"})
    web.save(sid, {**(web.get(sid) or {}), "cart": [7]})  # get also slides the TTL
    new_sid = web.rotate(sid) or ""  # at login: new id, same data, the old id dies at once
    print(f"sessions: after rotate the old id gives {web.get(sid)}, the new one "
          f"{web.get(new_sid)}; destroyed: {web.destroy(new_sid)}")


def main() -> None:
    start_fresh(kv)
    lock_with_fence()
    semaphore()
    cache()
    idempotency()
    sessions()


if __name__ == "__main__":
    main()
