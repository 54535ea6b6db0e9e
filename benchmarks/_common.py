"""Shared helpers for the benchmarks: a private Redis, medians, and a table printer."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

from celery_kv.testing import redis_server


@contextlib.contextmanager
def bench_redis() -> Iterator[str]:
    """``BENCH_REDIS_URL`` if set, else a private redis-server for this run."""
    url = os.environ.get("BENCH_REDIS_URL")
    if url:
        yield url
        return
    with redis_server() as server:
        yield server.url


def median_us(op: Callable[[], object], rounds: int = 2000, warmup: int = 200) -> float:
    """Median wall time of one call, in microseconds (samples interleave with nothing else)."""
    for _ in range(warmup):
        op()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        op()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000.0


def interleaved_medians(
    ops: dict[str, Callable[[], object]], rounds: int = 2000, warmup: int = 200
) -> dict[str, float]:
    """Median per op with the ops interleaved round by round, so drift hits all alike."""
    for op in ops.values():
        for _ in range(warmup):
            op()
    samples: dict[str, list[int]] = {name: [] for name in ops}
    for _ in range(rounds):
        for name, op in ops.items():
            t0 = time.perf_counter_ns()
            op()
            samples[name].append(time.perf_counter_ns() - t0)
    return {name: statistics.median(s) / 1000.0 for name, s in samples.items()}


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
