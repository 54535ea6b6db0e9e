"""No-op task throughput per celery-kv feature against plain Celery and the peers, side by side.

Run: ``.venv/bin/python -m benchmarks.bench_tasks [--tasks 400 --rounds 3]``. It starts
two private redis-servers (broker+results, and coordination) and one
``celery worker -P prefork -c 2``; then, round after round, it enqueues N no-op tasks of
each variant (``benchmarks.task_app.VARIANTS``: the celery-kv features, celery-once's
QueueOnce and celery-singleton's Singleton) and times until the worker has run them all.
Throughput is reported as a ratio to each baseline in ``BASELINES`` (plain Celery,
celery-once, celery-singleton) in the same rounds (targets: >= 0.85x plain per feature,
>= 0.75x with every feature on, a singleton >= 1.0x celery-once).
Round trips per task lifecycle to the coordination server are read from that server's
INFO commandstats (enqueue + execution, renewals aside; target: <= 4 per task, every
feature on: enqueue claim, enqueue confirm, execution start, final outcome).
See ``_trips`` for what counts as a round trip.
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

# Ratio columns: variant -> column header. A baseline absent from VARIANTS is skipped.
BASELINES = {"plain": "vs plain", "once": "vs celery-once",
             "celery_singleton": "vs celery-singleton"}

_SCRIPTS = ("cmdstat_evalsha", "cmdstat_evalsha_ro", "cmdstat_eval", "cmdstat_eval_ro",
            "cmdstat_fcall", "cmdstat_fcall_ro")
# Round trips celery-kv makes: scripts, plus the few plain commands it sends itself.
# (commandstats also counts the commands a script runs inside Redis; those are not trips.)
_TRIPS = ("cmdstat_evalsha", "cmdstat_evalsha_ro", "cmdstat_eval", "cmdstat_script|load",
          "cmdstat_blpop", "cmdstat_unlink")


def _commands(client: redis.Redis) -> dict[str, int]:
    stats: Any = client.info("commandstats")
    return {name: int(entry["calls"]) for name, entry in stats.items()}


def _trips(before: dict[str, int], after: dict[str, int]) -> int:
    """Round trips between two commandstats snapshots (our own INFO calls left out).

    If no script ran, every command counted was sent by a client: all are round trips
    (the peers send plain SET/GET/DEL/PTTL). If scripts ran, commandstats also counts the
    commands they ran inside Redis, so only scripts and celery-kv's own plain commands count.
    """
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()
             if name != "cmdstat_info"}
    if any(delta.get(name) for name in _SCRIPTS):
        return sum(delta.get(name, 0) for name in _TRIPS)
    return sum(delta.values())


def _wait_ready(broker: str, timeout: float = 60.0) -> None:
    from benchmarks.task_app import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.control.ping(timeout=0.5):
            return
    raise RuntimeError("the benchmark worker did not answer ping")


def run_variant(variant: str, count: int, done: redis.Redis, timeout: float = 300.0) -> float:
    from benchmarks.task_app import TASKS

    task: Any = TASKS[variant]
    run = uuid.uuid4().hex
    key = f"bench:done:{run}"
    started = time.perf_counter()
    for i in range(count):
        task.apply_async((run, i))
    while (finished := int(done.get(key) or 0)) < count:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{variant}: {finished} of {count} tasks ran in {timeout:.0f} s")
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
            from benchmarks.task_app import VARIANTS

            done = redis.Redis.from_url(broker.url)
            kv_client = redis.Redis.from_url(kv_server.url)
            for variant in VARIANTS:  # warm: scripts loaded, pools open
                run_variant(variant, 20, done)
            rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
            per_task: dict[str, float] = {}
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    before = _commands(kv_client)
                    rates[variant].append(run_variant(variant, args.tasks, done))
                    per_task[variant] = _trips(before, _commands(kv_client)) / args.tasks
            median = {v: statistics.median(r) for v, r in rates.items()}
            baselines = {v: header for v, header in BASELINES.items() if v in VARIANTS}
            rows = []
            for variant in VARIANTS:
                rate = median[variant]
                rows.append([variant, f"{rate:,.0f}",
                             *(f"{rate / median[b]:.2f}x" for b in baselines),
                             f"{per_task[variant]:.2f}"])
            print(f"## No-op task throughput, {args.tasks} tasks x {args.rounds} rounds, "
                  "1 worker -P prefork -c 2\n")
            print(table(["variant", "tasks/s (median)", *baselines.values(),
                         "coordination round trips / task"], rows))
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
