"""Deferred tasks through the delay store against broker countdowns.

Run: ``.venv/bin/python -m benchmarks.bench_delay``. Two private redis-servers (broker,
coordination) and one in-process worker (``start_worker``, solo pool, with celery-kv's
maintenance thread). For each way, ``--tasks`` no-op tasks are deferred by ``--delay``
seconds, and we measure:

- the producer's cost per deferral (``apply_async`` with a countdown, median, interleaved);
- deferred tasks run per second once they fall due (from the first due time to the last
  run);
- round trips to the coordination Redis per deferral (EVALSHA and other commands sent,
  producer and worker together: the add, the claim and ack in batches of 100, the
  consume at execution).

Ways: ``broker countdown`` (``delay_store=False``: an ETA message the worker holds in
memory) and ``delay store`` (``delay_store="all"``: the message waits in Redis, the
worker's maintenance thread publishes it when due).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_kv import KVTask, install
from celery_kv.celery.delays import delay_store_for
from celery_kv.testing import redis_server

from ._common import interleaved_medians, table


@contextmanager
def counting(client: Any) -> Iterator[list[str]]:
    """Every command the coordination client sends, by name (one per round trip)."""
    sent: list[str] = []
    original = client.execute_command
    lock = threading.Lock()

    def count(*args: Any, **kwargs: Any) -> Any:
        with lock:
            sent.append(str(args[0]))
        return original(*args, **kwargs)

    client.execute_command = count
    try:
        yield sent
    finally:
        del client.execute_command


def run_way(app: Celery, task: Any, ran: list[float], n: int, delay: float) -> tuple[float, int]:
    """Defer ``n`` tasks by ``delay``; (tasks per second once due, round trips sent)."""
    kv = task.kv
    ran.clear()
    with counting(kv.client) as sent:
        start = time.monotonic()
        for i in range(n):
            task.apply_async((i,), countdown=delay)
        due = start + delay
        deadline = due + 120
        while len(ran) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(ran) < n:
            raise RuntimeError(f"only {len(ran)} of {n} deferred tasks ran")
        last = max(ran)
        rate = n / max(last - max(due, start), 1e-3)
        wait_store = time.monotonic() + 10
        while delay_store_for(task.app).count() and time.monotonic() < wait_store:
            time.sleep(0.01)
        trips = len(sent)
    return rate, trips


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args()
    with redis_server() as broker, redis_server() as kv_server:
        app = Celery("bench-delay", broker=broker.url, set_as_current=False)
        app.conf.update(kv_redis_url=kv_server.url, kv_prefix="bench", task_ignore_result=True,
                        kv_delay_poll_interval=0.05, worker_prefetch_multiplier=0)
        install(app)
        ran: list[float] = []

        def noop(i: int) -> None:
            ran.append(time.monotonic())

        countdown: Any = app.task(name="bench.countdown", base=KVTask, shared=False,
                                  delay_store=False)(noop)
        stored: Any = app.task(name="bench.stored", base=KVTask, shared=False,
                               delay_store="all")(noop)

        # the producer's cost alone: deferrals far in the future, nothing runs
        far = 3600.0
        medians = interleaved_medians({
            "broker countdown": lambda: countdown.apply_async((0,), countdown=far),
            "delay store": lambda: stored.apply_async((0,), countdown=far),
        }, rounds=args.rounds, warmup=50)
        app.connection_for_write().default_channel.client.flushdb()  # drop those messages
        kv = stored.kv
        kv.client.flushdb()

        rows = []
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
            for name, task in (("broker countdown", countdown), ("delay store", stored)):
                rate, trips = run_way(app, task, ran, args.tasks, args.delay)
                rows.append([name, f"{medians[name]:,.0f}", f"{rate:,.0f}",
                             f"{trips / args.tasks:.2f}"])
        base = float(rows[0][2].replace(",", ""))
        for row in rows:
            row.append(f"{float(row[2].replace(',', '')) / base:.2f}x")
        print(f"## {args.tasks} no-op tasks deferred by {args.delay} s, one solo worker\n")
        print(table(["way", "apply_async µs (median)", "tasks/s once due",
                     "Redis round trips / deferral", "tasks/s vs countdown"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
