"""Reservation invariants (hypothesis): with reservations, plain hits, random costs and
give-backs, no window ever admits more than its limit, every unit counted at its slot.

Each example drives one fresh identity through a random sequence of calls (on fakeredis
and on the session's redis-server) and keeps what the scripts said was charged: the
slot and cost of every admission and reservation, less what was given back. The checks
are the algorithms' bounds over those slots (server microseconds):

- fixed window: at most ``limit`` per aligned window;
- sliding log: at most ``limit`` in any window ``(t - period, t]``;
- sliding window: at most ``limit`` per aligned window, and at each slot t (offset e in
  window w) ``p(w-1) * (period - e) + c(w, <= t) * period <= limit * period``;
- GCRA: any run of units in slot order takes at most ``tau + (t_last - t_first)``
  of emission time (``cost * interval`` each).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_kv import KV
from celery_kv.primitives.ratelimit import Rate, RateLimit, give_back, hit_all, reserve_all
from celery_kv.primitives.ratelimit.gcra import GCRA
from celery_kv.testing import RedisServer

Charge = tuple[int, int]  # slot_us, cost


@pytest.fixture(scope="module", params=["fakeredis", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[KV]:
    if request.param == "fakeredis":
        yield KV(client=fakeredis.FakeRedis(), prefix="inv" + uuid.uuid4().hex[:6])
    else:
        server: RedisServer = request.getfixturevalue("redis_srv")
        yield KV.from_url(server.url, prefix="inv" + uuid.uuid4().hex[:6])


OPS = st.lists(
    st.tuples(st.sampled_from(["reserve", "reserve", "reserve", "hit", "now", "give_back"]),
              st.integers(1, 6), st.integers(1, 6), st.integers(0, 50)),
    min_size=1, max_size=25)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(algorithm=st.sampled_from(["gcra", "sliding_log", "sliding_window", "fixed_window"]),
       limits=st.lists(st.tuples(st.integers(1, 6), st.integers(20, 300), st.integers(1, 6)),
                       min_size=1, max_size=2),
       max_wait=st.floats(0.0, 1.5), ops=OPS)
def test_no_window_admits_more_than_its_limit(backend: KV, algorithm: str,
                                              limits: list[tuple[int, int, int]],
                                              max_wait: float,
                                              ops: list[tuple[str, int, int, int]]) -> None:
    """One or two limits charged together, each its own cost per call (``hit``: the
    primitive's plain hit, one cost for all; ``now``: a reservation that may not wait)."""
    scope = "s" + uuid.uuid4().hex[:8]
    rls = [RateLimit(backend.store, Rate(limit, period_ms / 1000), algorithm,
                     burst=min(burst, limit) if algorithm == "gcra" else None,
                     name=f"l{i}", scope=scope)
           for i, (limit, period_ms, burst) in enumerate(limits)]
    pairs = [(rl, "hot") for rl in rls]
    charges: dict[int, list[Charge]] = {}  # by call number: one charge per limit
    reserved: list[tuple[int, Any]] = []
    for n, (kind, cost, other, pick) in enumerate(ops):
        costs = [min(c, rl.capacity) for c, rl in zip((cost, other), rls, strict=False)]
        if kind == "give_back":
            if reserved:
                index, reservation = reserved.pop(pick % len(reserved))
                if give_back(pairs, reservation) == len(pairs):
                    del charges[index]
                else:  # GCRA: kept where a later charge stacked on it
                    assert algorithm == "gcra"
            continue
        if kind == "hit":
            same = min(costs)
            decision = hit_all(pairs, same)
            if decision.allowed:
                charges[n] = [(round((decision.at or 0) * 1e6), same)] * len(pairs)
            continue
        got = reserve_all(pairs, costs, 0.0 if kind == "now" else max_wait)
        if got.slot is not None:
            charges[n] = [(round(got.slot * 1e6), c) for c in costs]
            assert got.delay <= max_wait + 1e-6
            if got.reserved:
                reserved.append((n, got))
    for i, rl in enumerate(rls):
        check(algorithm, rl, rl.rate, sorted(units[i] for units in charges.values()))


def check(algorithm: str, rl: RateLimit, rate: Rate, units: list[Charge]) -> None:
    period, limit = rate.period_us, rate.limit
    if algorithm == "gcra":
        assert isinstance(rl.strategy, GCRA)
        interval = rl.strategy.interval_us
        tau = rl.strategy.burst * interval
        for i in range(len(units)):
            spent = 0
            for j in range(i, len(units)):
                spent += units[j][1] * interval
                assert spent <= tau + units[j][0] - units[i][0], (i, j, units)
    elif algorithm == "sliding_log":
        for t, _ in units:
            inside = sum(c for s, c in units if t - period < s <= t)
            assert inside <= limit, (t, units)
    else:
        per_window: dict[int, int] = defaultdict(int)
        for t, c in units:
            per_window[t // period] += c
        assert max(per_window.values(), default=0) <= limit, units
        if algorithm == "sliding_window":
            for t, _ in units:
                w, e = divmod(t, period)
                before = per_window[w - 1]
                upto = sum(c for s, c in units if s // period == w and s <= t)
                assert before * (period - e) + upto * period <= limit * period, (t, units)
