"""What counting costs: a lifecycle phase with and without its decision counters, and one
Prometheus scrape against a keyspace of held locks.

Run: ``.venv/bin/python -m benchmarks.bench_metrics [--rounds 2000 --locks 10000]``
(starts its own redis-server; ``BENCH_REDIS_URL`` points it elsewhere). The phases run
side by side, interleaved round by round on one connection, and are reported as medians
and as ratios to the same phase uncounted (target: counting adds <= 1.1x). Each phase is
an execution start of a singleton + idempotent task (two steps, one script), on a fresh
key each call, so every call decides and counts.
"""

from __future__ import annotations

import argparse
import itertools
import time
import uuid
from collections.abc import Callable

from celery_kv import KV
from celery_kv.store import Step, metrics

from ._common import bench_redis, interleaved_medians, table

TARGET = 1.1


def start_phase(kv: KV, counted: bool) -> Callable[[], object]:
    """One call: a singleton start and an idempotency start on a fresh key."""
    keys, ids = kv.store.keys, itertools.count()
    tallies = (metrics.tally("bench.task", "singleton", "ok>admitted;deny>contended"),
               metrics.tally("bench.task", "idempotency", "ok>admitted;stop>replayed"))
    ttl = 7200.0 if counted else 0.0

    def call() -> object:
        n = f"{'c' if counted else 'u'}{next(ids)}"
        token = f"id-{n}#run:1"
        steps = [
            Step("task_singleton_start",
                 (keys.key("lock", ("t", n)), keys.key("lock", ("t", n), "fence"),
                  keys.key("lock", ("t", n), "tomb")),
                 (token, f"id-{n}", 30_000, 86_400_000, 60_000, "queued", "", ""),
                 tallies[0] if counted else ""),
            Step("task_idempotency_start", (keys.key("idem", ("ns", n)),),
                 (token, f"id-{n}", "fp", 30_000, 60_000, 86_400_000),
                 tallies[1] if counted else ""),
        ]
        return kv.store.run_phase("execution start", steps, ttl)

    return call


def scrape_seconds(kv: KV, locks: int) -> tuple[float, int]:
    """Seconds for one scrape of the collector with ``locks`` locks held, and its series."""
    from prometheus_client import generate_latest

    from celery_kv.metrics import registry_for

    pipe = kv.client.pipeline(transaction=False)
    for i in range(locks):
        key = kv.store.keys.key("lock", ("held", i))
        pipe.hset(key, mapping={"owner": f"id-{i}", "fence": str(i), "at": "0"})
        pipe.pexpire(key, 600_000)
    pipe.execute()
    registry = registry_for(kv)
    generate_latest(registry)  # warm
    began = time.perf_counter()
    text = generate_latest(registry).decode()
    return time.perf_counter() - began, sum(1 for line in text.splitlines()
                                            if line and not line.startswith("#"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--locks", type=int, default=10_000)
    args = parser.parse_args()
    with bench_redis() as url:
        kv = KV.from_url(url, prefix="bench-metrics-" + uuid.uuid4().hex[:6])
        medians = interleaved_medians({
            "start phase, uncounted": start_phase(kv, counted=False),
            "start phase, counted": start_phase(kv, counted=True),
        }, rounds=args.rounds)
        base = medians["start phase, uncounted"]
        rows = [[name, f"{us:.1f}", f"{us / base:.2f}x"] for name, us in medians.items()]
        print(table(["phase (2 steps, one script)", "median us", "vs uncounted"], rows))
        ratio = medians["start phase, counted"] / base
        print(f"counting: {ratio:.2f}x (target <= {TARGET}x)")
        seconds, series = scrape_seconds(kv, args.locks)
        print(f"one scrape with {args.locks} locks held: {seconds * 1000:.0f} ms, "
              f"{series} samples")
        kv.client.flushdb()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
