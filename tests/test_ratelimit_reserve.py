"""Reservations, per-limit costs, overrides and throttles of the rate-limit primitive,
on every backend (fakeredis, redis, cluster and the server matrix)."""

from __future__ import annotations

from typing import Any

import pytest

from celery_kv import KV
from celery_kv.primitives.ratelimit import Rate, RateLimit, give_back, reserve_all
from celery_kv.store import scripts

from .conftest import keys_under, wait_for

US = 1e-6
ALGORITHMS = ["gcra", "sliding_log", "sliding_window", "fixed_window"]


def slot_us(reservation: Any) -> int:
    return round(reservation.slot * 1e6)


def test_gcra_reserves_consecutive_slots_one_interval_apart(kv: KV) -> None:
    rl = kv.rate_limit("10/s")  # burst 10, one unit per 100 ms
    assert rl.hit("k", cost=10).allowed
    first, second = rl.reserve("k"), rl.reserve("k")
    assert first.reserved and second.reserved and not first.admitted
    assert slot_us(second) - slot_us(first) == 100_000
    assert 0.0 < first.delay <= 0.1 + US
    # a plain hit now waits behind both reservations
    denied = rl.hit("k")
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(second.slot + 0.1 - denied.at, abs=2e-3)
    # a slot past max_wait is not taken, and nothing is charged
    far = rl.reserve("k", cost=1, max_wait=0.05)
    assert not far.reserved and not far.admitted and far.token == ""
    assert rl.reserve("k").slot == pytest.approx(second.slot + 0.1, abs=US)


def test_an_admission_now_is_a_reservation_at_now(kv: KV) -> None:
    rl = kv.rate_limit("10/s")
    got = rl.reserve("k")
    assert got.admitted and got.delay == 0.0 and got.slot == got.decision.at


def test_gcra_gives_back_only_the_last_reservation(kv: KV) -> None:
    rl = kv.rate_limit("10/s")
    rl.hit("k", cost=10)
    first, second = rl.reserve("k"), rl.reserve("k")
    assert give_back([(rl, "k")], first) == 0, "a later slot stacked on it: kept"
    assert give_back([(rl, "k")], second) == 1
    again = rl.reserve("k")
    assert again.slot == pytest.approx(second.slot, abs=US), "the given-back slot is reused"


def test_fixed_window_reserves_the_first_window_with_room(kv: KV) -> None:
    rl = kv.rate_limit(Rate(5, 1.0), algorithm="fixed_window")
    for _ in range(3):  # a window that rolls over mid-test is no help: start over
        rl.reset("k")
        full = rl.hit("k", cost=5)
        a, b, c = rl.reserve("k", cost=2), rl.reserve("k", cost=3), rl.reserve("k", cost=1)
        if int(a.slot) == int(full.at or 0) + 1:
            break
    assert slot_us(a) % 1_000_000 == 0 and slot_us(a) == slot_us(b), "the next window"
    assert slot_us(c) == slot_us(a) + 1_000_000, "the one after: the next is full"
    assert give_back([(rl, "k")], b) == 1
    d = rl.reserve("k", cost=3)
    assert d.slot == a.slot, "the given-back units are free again"


def test_sliding_window_reserves_where_the_weighted_estimate_has_room(kv: KV) -> None:
    rl = kv.rate_limit(Rate(4, 1.0), algorithm="sliding_window")
    for _ in range(3):
        rl.reset("k")
        full = rl.hit("k", cost=4)
        got = rl.reserve("k")
        if int(got.slot) == int(full.at or 0) + 1:
            break
    # next window: p = 4, c = 0; 4 * (P - e) + 1 * P <= 4 * P  <=>  e >= P / 4
    assert slot_us(got) % 1_000_000 == 250_000
    second = rl.reserve("k")  # c = 1: 4 * (P - e) + 2 * P <= 4 * P  <=>  e >= P / 2
    assert slot_us(second) % 1_000_000 == 500_000


def test_sliding_log_reserves_when_the_oldest_unit_leaves(kv: KV) -> None:
    rl = kv.rate_limit(Rate(3, 1.0), algorithm="sliding_log")
    first = rl.hit("k")
    rl.hit("k", cost=2)
    got = rl.reserve("k")
    assert got.reserved
    assert got.slot == pytest.approx((first.at or 0) + 1.0, abs=US)
    nxt = rl.reserve("k", cost=2)
    assert nxt.slot > got.slot
    assert give_back([(rl, "k")], nxt) == 1 and give_back([(rl, "k")], got) == 1
    assert rl.reserve("k").slot == pytest.approx(got.slot, abs=US)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_costs_add_up_exactly_per_limit(kv: KV, algorithm: str) -> None:
    a = kv.rate_limit("100/m", algorithm=algorithm, name="a", scope="s")
    b = kv.rate_limit("50/m", algorithm=algorithm, name="b", scope="s")
    for costs in ([3, 7], [5, 1], [11, 2]):
        got = reserve_all([(a, "t"), (b, "t")], costs)
        assert got.admitted
    assert a.peek("t").remaining == 100 - 19
    assert b.peek("t").remaining == 50 - 10


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reserve_all_is_all_or_nothing_at_a_slot_both_admit(kv: KV, algorithm: str) -> None:
    fast = kv.rate_limit(Rate(10, 1.0), algorithm=algorithm, name="fast", scope="s")
    slow = kv.rate_limit(Rate(2, 1.0), algorithm=algorithm, name="slow", scope="s")
    for _ in range(3):  # a fixed window that rolls over between the two calls: start over
        fast.reset("t")
        slow.reset("t")
        first = reserve_all([(fast, "t"), (slow, "t")], [1, 2])
        later = reserve_all([(fast, "t"), (slow, "t")], [1, 2])
        if algorithm != "fixed_window" or int(later.decision.at or 0) == int(
                first.decision.at or 0):
            break
    assert first.admitted
    assert later.reserved and later.decision.denied_by == "slow"
    peek = fast.peek("t")
    if algorithm == "gcra":  # its TAT moved as if the unit arrived at the slot
        assert peek.retry_after == pytest.approx(later.slot + 0.2 - 1.0 - peek.at, abs=2e-3)
    else:  # the unit counts in the slot's window
        assert peek.remaining == (8 if algorithm == "sliding_log" else 9)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_override_changes_one_identitys_rate(kv: KV, algorithm: str) -> None:
    rl = RateLimit(kv.store, "1/m", algorithm, dynamic=True, name="api")
    rl.override("vip", "20/m")
    assert rl.hit("plain").allowed and not rl.hit("plain").allowed
    assert all(rl.hit("vip").allowed for _ in range(20))
    assert not rl.hit("vip").allowed
    assert list(rl.overrides()) == [rl.redis_key("vip")]
    assert rl.clear_override("vip") is True and rl.clear_override("vip") is False
    assert rl.overrides() == {}


def test_an_override_rescales_a_gcra_debt_to_the_new_rate(kv: KV) -> None:
    rl = RateLimit(kv.store, "1/m", dynamic=True, name="api")
    assert rl.hit("k").allowed and not rl.hit("k").allowed  # 60 s of debt at 1/m
    rl.override("k", "100/s")  # one unit owed is 10 ms at 100/s
    assert sum(rl.hit("k").allowed for _ in range(99)) >= 98
    rl.clear_override("k")
    denied = rl.hit("k")
    assert not denied.allowed and denied.retry_after > 50, "back to 1/m: ~100 units owed"


def test_a_static_limit_ignores_overrides_and_throttles(kv: KV) -> None:
    rl = kv.rate_limit("10/s", name="api")
    rl.override("k", "1/m")
    rl.throttle("k", 60)
    assert all(rl.hit("k").allowed for _ in range(5))


def test_an_override_with_a_ttl_lapses(kv: KV) -> None:
    rl = RateLimit(kv.store, "1/m", dynamic=True, name="api")
    rl.override("k", "1000/s", ttl=0.3)
    rate, left = rl.overrides()[rl.redis_key("k")]
    assert rate == Rate(1000, 1.0) and left is not None and 0 < left <= 0.3
    assert rl.hit("k").allowed and rl.hit("k").allowed
    wait_for(lambda: not rl.overrides(), 3, "the override to lapse")
    wait_for(lambda: not kv.client.exists(rl.overrides_key), 3, "the hash to expire with it")
    rl.reset("k")
    assert rl.hit("k").allowed and not rl.hit("k").allowed
    for key in keys_under(kv):
        assert kv.client.pttl(key) > 0, f"{key} has no TTL"


@pytest.mark.parametrize("bad", ["0/s", "ten/s", "-1/m", "", None, 2.5, "1/w"])
def test_a_bad_override_rate_is_named_and_writes_nothing(kv: KV, bad: Any) -> None:
    rl = RateLimit(kv.store, "1/m", dynamic=True, name="api")
    with pytest.raises((TypeError, ValueError), match="override of rate limit 'api'") as info:
        rl.override("k", bad)
    assert repr(bad) in str(info.value)
    assert keys_under(kv) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_throttle_holds_every_admission_back(kv: KV, algorithm: str) -> None:
    rl = RateLimit(kv.store, "1000/s", algorithm, dynamic=True, name="api")
    until = rl.throttle("k", 0.5)
    denied = rl.hit("k")
    assert not denied.allowed and denied.retry_after > 0.3
    assert until == pytest.approx((denied.at or 0) + denied.retry_after, abs=US)
    got = rl.reserve("k")
    assert got.reserved and got.slot >= until - US
    assert rl.hit("other").allowed, "other identities are not throttled"
    assert rl.throttle("k", 0.1) == until, "a throttle only ever moves later"


def test_bad_costs_and_waits_are_refused(kv: KV) -> None:
    rl = kv.rate_limit("5/s")
    for bad in (0, -1, 6, 1.5, True):
        with pytest.raises((TypeError, ValueError), match="cost"):
            rl.reserve("k", cost=bad)
    with pytest.raises(ValueError, match="max_wait"):
        rl.reserve("k", max_wait=-1)
    with pytest.raises(ValueError, match="2 costs for 1"):
        reserve_all([(rl, "k")], [1, 2])
    assert keys_under(kv) == []


def test_the_new_scripts_declare_their_replay_safety() -> None:
    assert scripts.load("ratelimit_give_back").retry_safe is False
    assert scripts.load("ratelimit_throttle").retry_safe is True
    assert scripts.load("ratelimit_override").retry_safe is True
    assert scripts.load("task_rate_limit_start").retry_safe is False
    assert scripts.load("task_rate_limit_give_back").retry_safe is True
