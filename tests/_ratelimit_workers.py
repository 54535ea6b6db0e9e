"""Process bodies for tests/test_ratelimit_invariants.py (importable, so 'spawn' can run them).

Each worker connects on its own and, for each phase, waits at a barrier so all
hammer one identity at once, then records every decision as (server time in
microseconds, admitted). The time is the one the script decided at
(``Decision.at``), never the worker's clock.
"""

from __future__ import annotations

import time
from typing import Any

from celery_kv import KV
from celery_kv.primitives.ratelimit import Rate, RateLimit

Phase = tuple[str, int, float, int | None]  # algorithm, limit, period, burst


def hammer(
    url: str, prefix: str, phases: list[Phase], duration: float, barrier: Any, out: Any
) -> None:
    """Hit one identity as fast as possible for ``duration`` seconds per phase."""
    kv = KV.from_url(url, prefix=prefix)
    records: dict[str, list[tuple[int, bool]]] = {}
    try:
        for algorithm, limit, period, burst in phases:
            rl = RateLimit(kv.store, Rate(limit, period), algorithm, burst)
            rl.peek("warm-up")  # load the script before the clock starts
            seen = records[algorithm] = []
            barrier.wait(timeout=60)
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                d = rl.hit("hot")
                assert d.at is not None
                seen.append((round(d.at * 1_000_000), d.allowed))
        out.put(("ok", records))
    except BaseException as exc:
        out.put(("error", repr(exc)))
