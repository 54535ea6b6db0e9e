"""No-op task throughput per celery-kv feature against plain Celery, side by side.

Run: ``.venv/bin/python -m benchmarks.bench_tasks [--tasks 400 --rounds 3]``. It starts
two private redis-servers (broker+results, and coordination) and one
``celery worker -P prefork -c 2``; then, round after round, it enqueues N no-op tasks of
each variant and times until the worker has run them all. Throughput is reported as a
ratio to plain Celery in the same rounds (target: >= 0.85x with every feature on).
Commands per task lifecycle (round trips to the coordination server: EVALSHA and the
few plain commands celery-kv sends) are read from that server's INFO commandstats
(enqueue + execution, renewals aside; target: <= 3 for a singleton task).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import redis

from celery_kv.testing import redis_server

from ._common import table

# Round trips celery-kv makes: scripts, plus the few plain commands it sends itself.
# (commandstats also counts the commands a script runs inside Redis; those are not trips.)
_TRIPS = ("cmdstat_evalsha", "cmdstat_evalsha_ro", "cmdstat_eval", "cmdstat_script|load",
          "cmdstat_blpop", "cmdstat_unlink")


def _commands(client: redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return sum(int(stats[name]["calls"]) for name in _TRIPS if name in stats)


def _wait_ready(broker: str, timeout: float = 60.0) -> None:
    from benchmarks.task_app import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.control.ping(timeout=0.5):
            return
    raise RuntimeError("the benchmark worker did not answer ping")


def run_variant(feature: str, count: int, done: redis.Redis) -> float:
    from benchmarks.task_app import TASKS

    task: Any = TASKS[feature]
    run = uuid.uuid4().hex
    key = f"bench:done:{run}"
    started = time.perf_counter()
    for i in range(count):
        task.apply_async((run, i))
    while int(done.get(key) or 0) < count:
        time.sleep(0.002)
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with redis_server() as broker, redis_server() as kv_server:
        os.environ["BENCH_BROKER"] = broker.url
        os.environ["BENCH_KV"] = kv_server.url
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "benchmarks.task_app", "worker",
             "-P", "prefork", "-c", "2", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "warning", "-n", f"bench{uuid.uuid4().hex[:6]}@%h"],
            env=dict(os.environ), start_new_session=True,
        )
        try:
            _wait_ready(broker.url)
            from benchmarks.task_app import FEATURES

            done = redis.Redis.from_url(broker.url)
            kv_client = redis.Redis.from_url(kv_server.url)
            for feature in FEATURES:  # warm: scripts loaded, pools open
                run_variant(feature, 20, done)
            rates: dict[str, list[float]] = {f: [] for f in FEATURES}
            per_task: dict[str, float] = {}
            for _ in range(args.rounds):
                for feature in FEATURES:
                    before = _commands(kv_client)
                    rates[feature].append(run_variant(feature, args.tasks, done))
                    per_task[feature] = (_commands(kv_client) - before) / args.tasks
            plain = statistics.median(rates["plain"])
            rows = []
            for feature in FEATURES:
                rate = statistics.median(rates[feature])
                rows.append([feature, f"{rate:,.0f}", f"{rate / plain:.2f}x",
                             f"{per_task[feature]:.2f}"])
            print(f"## No-op task throughput, {args.tasks} tasks x {args.rounds} rounds, "
                  "1 worker -P prefork -c 2\n")
            print(table(["feature", "tasks/s (median)", "vs plain", "Redis commands / task"],
                        rows))
            if os.environ.get("BENCH_SHOW_COMMANDS"):
                stats: Any = kv_client.info("commandstats")
                print({k: v["calls"] for k, v in stats.items()})
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
