"""Per-operation latency of every primitive against PING and a no-op EVALSHA.

Run: ``.venv/bin/python -m benchmarks.bench_primitives`` (starts its own
redis-server; ``BENCH_REDIS_URL`` points it elsewhere). Everything runs side by
side in one process on one connection, interleaved round by round, and is
reported as medians and as ratios to the no-op EVALSHA (target: <= 1.3x).
It also compares rate-limit decisions per second with the ``limits`` library's
moving window and the seed's four-call pattern, and prints MEMORY USAGE of one
GCRA key and one sliding-log key at the limit.
"""

from __future__ import annotations

import argparse
import itertools
import time
import uuid
from collections.abc import Callable

import redis

from celery_kv import KV

from ._common import bench_redis, interleaved_medians, table

TARGET = 1.3


def primitive_ops(kv: KV) -> dict[str, Callable[[], object]]:
    """One warm call of each operation, built so that repeating it is meaningful."""
    store = kv.store
    noop_key = [store.keys.key("bench", "noop")]
    ops: dict[str, Callable[[], object]] = {
        "PING": kv.client.ping,
        "EVALSHA no-op": lambda: store.run("noop", noop_key),
    }
    lock = kv.lock("bench-lock", ttl=30)
    ops["lock acquire (re-entry)"] = lambda: lock.acquire()
    lock.acquire()
    ops["lock extend"] = lambda: lock.extend(30)
    ops["lock owned"] = lock.owned
    cycling = kv.lock("bench-cycle", ttl=30)
    ops["lock acquire+release (2 ops)"] = lambda: (cycling.acquire(), cycling.release())

    sem = kv.semaphore("bench-sem", limit=5, ttl=30)
    ops["semaphore acquire (re-entry)"] = lambda: sem.acquire()
    ops["semaphore holders"] = sem.holders

    for algorithm in ("gcra", "sliding_log", "sliding_window", "fixed_window"):
        limiter = kv.rate_limit("1000000/s", algorithm=algorithm, name=f"bench-{algorithm}")
        counter = itertools.count()
        ops[f"rate {algorithm} hit"] = lambda lim=limiter, c=counter: lim.hit(f"id-{next(c) % 64}")
    gcra = kv.rate_limit("1000000/s", name="bench-gcra")
    ops["rate gcra peek"] = lambda: gcra.peek("id-1")
    task_wide = kv.rate_limit("1000000/s", name="global", scope="bench-task")
    tenant = kv.rate_limit("1000000/s", name="tenant", scope="bench-task")
    ops["rate hit_all (2 limits)"] = lambda: kv.hit_all([(task_wide, "all"), (tenant, "t-7")])

    cache = kv.cache("bench", ttl=300)
    cache.set("price", {"sku": "A-1", "cents": 1999})
    ops["cache get (hit)"] = lambda: cache.get("price")
    ops["cache set"] = lambda: cache.set("price", {"sku": "A-1", "cents": 1999})
    ops["cache get_or_set (hit)"] = lambda: cache.get_or_set("price", lambda: None)

    idem = kv.idempotency("bench", ttl=3600, lease=60)
    idem.run("order-1", lambda: {"charged": 1})
    ops["idempotency run (replay)"] = lambda: idem.run("order-1", lambda: {"charged": 1})
    ops["idempotency state"] = lambda: idem.state("order-1")

    sessions = kv.sessions("bench", ttl=3600)
    sid = sessions.create({"user": 7})
    ops["sessions get (sliding)"] = lambda: sessions.get(sid)
    ops["sessions save"] = lambda: sessions.save(sid, {"user": 7, "cart": [1, 2]})
    return ops


def latency_table(kv: KV, rounds: int) -> tuple[str, list[str]]:
    medians = interleaved_medians(primitive_ops(kv), rounds=rounds)
    floor = medians["EVALSHA no-op"]
    rows, over = [], []
    for name, us in medians.items():
        ops_in_row = 2 if "(2 ops)" in name else 1
        ratio = us / floor / ops_in_row
        rows.append([name, f"{us:.1f}", f"{us / medians['PING']:.2f}x", f"{ratio:.2f}x"])
        if ratio > TARGET and name not in ("PING",):
            over.append(f"{name}: {ratio:.2f}x")
    headers = ["operation", "median us", "vs PING", "vs no-op EVALSHA (per op)"]
    return table(headers, rows), over


def seed_four_calls(client: redis.Redis, key: str, limit: int, window_ms: int) -> bool:
    """The seed's sliding window: four round trips, client clock, adds before counting."""
    now = int(time.time() * 1000)
    client.zadd(key, {f"{now}-{uuid.uuid4()}": now})
    client.zremrangebyscore(key, 0, now - window_ms)
    count = client.zcard(key)
    client.expire(key, window_ms // 1000)
    return int(count) <= limit


def decisions_per_second(url: str, kv: KV, seconds: float) -> str:
    from limits import parse
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    client = redis.Redis.from_url(url)
    moving = MovingWindowRateLimiter(RedisStorage(url))
    rate_item = parse("1000000/second")
    gcra = kv.rate_limit("1000000/s", name="dps-g")
    log = kv.rate_limit("1000000/s", algorithm="sliding_log", name="dps-s")
    contenders: dict[str, Callable[[int], object]] = {
        "celery-kv gcra": lambda i: gcra.hit(i % 64),
        "celery-kv sliding_log": lambda i: log.hit(i % 64),
        "limits moving window": lambda i: moving.hit(rate_item, "dps", str(i % 64)),
        "seed four-call pattern": lambda i: seed_four_calls(
            client, f"seed:{i % 64}", 1_000_000, 1000
        ),
    }
    results: dict[str, float] = {}
    for _ in range(3):  # alternate contenders so drift hits each alike
        for name, hit in contenders.items():
            count, deadline = 0, time.perf_counter() + seconds / 3
            while time.perf_counter() < deadline:
                hit(count)
                count += 1
            results[name] = results.get(name, 0.0) + count / (seconds / 3) / 3
    base = results["celery-kv gcra"]
    rows = [[n, f"{v:,.0f}", f"{v / base:.2f}x"] for n, v in results.items()]
    return table(["rate limiter", "decisions/s", "vs celery-kv gcra"], rows)


def memory_table(kv: KV) -> str:
    gcra = kv.rate_limit("100/m", name="mem")
    log = kv.rate_limit("100/m", algorithm="sliding_log", name="mem-log")
    while gcra.hit("tenant-7").allowed:
        pass
    while log.hit("tenant-7").allowed:
        pass
    client = kv.client
    rows = []
    for label, pattern in (("gcra, 1 identity", "rl:{mem}"), ("sliding_log at 100/100", "mem-log")):
        keys = [k for k in client.scan_iter(match=f"{kv.prefix}:*") if pattern in k.decode()]
        total = sum(int(client.memory_usage(k) or 0) for k in keys)
        rows.append([label, len(keys), total])
    return table(["state", "keys", "MEMORY USAGE bytes"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with bench_redis() as url:
        kv = KV.from_url(url, prefix="bench" + uuid.uuid4().hex[:6])
        text, over = latency_table(kv, args.rounds)
        print("## Per-operation latency (one connection, interleaved)\n")
        print(text)
        print("\n## Rate-limit decisions per second (one client, sequential)\n")
        print(decisions_per_second(url, kv, args.seconds))
        print("\n## Memory of rate-limit state\n")
        print(memory_table(kv))
        if over:
            print(f"\nover the {TARGET}x target: " + "; ".join(over))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
