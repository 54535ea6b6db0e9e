"""Rate limits: the contract of every algorithm, on every backend (fakeredis, redis, cluster)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from celery_kv import KV, Decision
from celery_kv.primitives.ratelimit import Rate, RateLimit, hit_all, parse_rate
from celery_kv.store import KeyLike, scripts

from .conftest import count_commands, keys_under

ALGORITHMS = ["gcra", "sliding_log", "sliding_window", "fixed_window"]
ODD_KEYS: list[KeyLike] = [
    "", "ü", "{", "}", ":", "*", "\n", "a:b", ("a", "b"), "x" * 10_240, "x" * 10_239 + "y",
    1, "1", b"1", ("1",),
]  # fmt: skip
US = 1e-6  # one microsecond: the scripts' resolution


def assert_every_key_expires(kv: KV) -> None:
    for key in keys_under(kv):
        assert kv.client.pttl(key) > 0, f"{key} has no TTL"


def exhaust(rl: RateLimit, key: KeyLike) -> tuple[Decision, Decision]:
    """Take the whole capacity in one call, then return (that hit, the first denial)."""
    for _ in range(3):
        rl.reset(key)
        full = rl.hit(key, cost=rl.capacity)
        assert full.allowed and full.remaining == 0, full
        denied = rl.hit(key)
        if not denied.allowed:
            return full, denied
        # Only time can explain an admission here: a fixed window that rolled
        # over, or (on a starved CPU) a unit that came back between the two calls,
        # which no algorithm does sooner than period / limit.
        gap = denied.at - full.at  # type: ignore[operator]
        if rl.algorithm == "fixed_window":
            assert gap >= full.reset_after - US
        else:
            assert gap >= rl.rate.period / rl.rate.limit - US
    raise AssertionError("could not observe a denial right after exhausting the limit")


# -- rates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/m", Rate(100, 60.0)),
        ("10/s", Rate(10, 1.0)),
        ("1000/h", Rate(1000, 3600.0)),
        ("5/d", Rate(5, 86400.0)),
        ("10", Rate(10, 1.0)),
        (" 7 / m ", Rate(7, 60.0)),
        (3, Rate(3, 1.0)),
    ],
)
def test_rates_read_celery_notation(text: Any, rate: Rate) -> None:
    assert parse_rate(text) == rate
    assert parse_rate(rate) is rate
    assert parse_rate(str(rate)) == rate


@pytest.mark.parametrize(
    "bad", ["0/s", "-1/m", "abc", "10/x", "", "1.5/s", "10/", "/s", 0, -3, None, 2.5]
)
def test_bad_rates_are_refused_by_name(kv: KV, bad: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="rate") as info:
        kv.rate_limit(bad)
    assert repr(bad) in str(info.value)
    assert keys_under(kv) == []


@pytest.mark.parametrize("bad", [None, 1.5, b"10/s", True])
def test_rates_of_the_wrong_type_are_refused_by_name(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        parse_rate(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("period", [0, -1.0, float("nan"), float("inf"), 0.0001])
def test_bad_periods_are_refused(period: float) -> None:
    with pytest.raises(ValueError, match="period"):
        Rate(1, period)


# -- construction ------------------------------------------------------------------------


def test_unknown_algorithm_is_named_with_the_valid_ones(kv: KV) -> None:
    with pytest.raises(ValueError, match="'leaky'") as info:
        kv.rate_limit("10/s", algorithm="leaky")
    for name in ALGORITHMS:
        assert repr(name) in str(info.value)
    assert keys_under(kv) == []


@pytest.mark.parametrize(
    "burst", [1e19, 10**19, 2**63, -1, 0, True, 1.5, float("nan"), "3", 3.0, 22_517_998_137]
)
def test_bad_burst_is_refused_by_name(kv: KV, burst: Any) -> None:
    with pytest.raises(ValueError, match="burst") as info:
        kv.rate_limit("10/s", burst=burst)
    assert repr(burst) in str(info.value) and "'10/s'" in str(info.value)
    assert keys_under(kv) == []


@pytest.mark.parametrize(
    ("rate", "most"),
    [("10/s", 22_517_998_136), ("1000000000/s", 2**51), ("1/d", 26_062), ("7/m", 262_709_965)],
)
def test_the_largest_burst_keeps_the_arithmetic_exact(kv: KV, rate: str, most: int) -> None:
    # burst * interval <= 2**51 us: every value in the script stays below 2**53, exact
    with pytest.raises(ValueError, match=f"from 1 to {most}"):
        kv.rate_limit(rate, burst=most + 1)
    rl = kv.rate_limit(rate, burst=most)
    tau = most * rl.strategy.interval_us * US  # type: ignore[attr-defined]
    one = rl.hit("one")
    assert one.allowed and (one.limit, one.remaining) == (most, most - 1)
    full = rl.hit("k", cost=most)
    assert full.allowed and full.remaining == 0
    assert full.reset_after == pytest.approx(tau, abs=2 * US)
    denied = rl.hit("k", cost=most)  # the largest intermediate: now + 2 * tau
    assert not denied and 0 <= denied.remaining <= most
    elapsed = denied.at - full.at  # type: ignore[operator]
    assert denied.retry_after == pytest.approx(tau - elapsed, abs=2 * US)
    assert 0 <= rl.peek("k").remaining <= most
    assert 0 < kv.client.pttl(rl.redis_key("k")) <= tau * 1000 + 5


@pytest.mark.parametrize("algorithm", ALGORITHMS[1:])
@pytest.mark.parametrize("burst", [5, 10, 10**19, 0, True, "3"])
def test_burst_is_only_for_gcra(kv: KV, algorithm: str, burst: Any) -> None:
    with pytest.raises(ValueError, match="gcra") as info:
        kv.rate_limit("10/s", algorithm=algorithm, burst=burst)
    assert repr(burst) in str(info.value) and "'10/s'" in str(info.value)
    assert keys_under(kv) == []


@pytest.mark.parametrize("field", ["name", "scope"])
@pytest.mark.parametrize("bad", ["", 7, ("a",)])
def test_bad_name_or_scope_is_refused(kv: KV, field: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=field):
        kv.rate_limit("10/s", **{field: bad})


def test_default_name_says_what_the_limit_is(kv: KV) -> None:
    assert kv.rate_limit("100/m").name == "gcra:100/m"
    assert kv.rate_limit("100/m", burst=5).name == "gcra:100/m+5"
    limit = kv.rate_limit("10/s", algorithm="sliding_log")
    assert (limit.name, limit.scope, limit.capacity) == ("sliding_log:10/s", "sliding_log:10/s", 10)


def test_every_script_is_declared_unsafe_to_replay() -> None:
    for algorithm in ALGORITHMS:
        assert scripts.load(f"ratelimit_{algorithm}").retry_safe is False


# -- costs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cost", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (1.5, TypeError),
        ("1", TypeError),
        (True, TypeError),
        (11, ValueError),
    ],
)
def test_bad_cost_is_refused_by_name_and_writes_nothing(
    kv: KV, cost: Any, error: type[Exception]
) -> None:
    rl = kv.rate_limit("10/s")
    with pytest.raises(error, match="cost") as info:
        rl.hit("tenant", cost=cost)
    assert repr(cost) in str(info.value)
    with pytest.raises(error, match="cost"):
        hit_all([(rl, "tenant")], cost=cost)
    assert keys_under(kv) == []


@pytest.mark.parametrize("bad", [None, 1.5, [1], True])
def test_bad_identity_is_refused_and_writes_nothing(kv: KV, bad: Any) -> None:
    rl = kv.rate_limit("10/s")
    with pytest.raises(TypeError):
        rl.hit(bad)
    assert keys_under(kv) == []


# -- the contract of every algorithm -----------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_admits_exactly_the_capacity_then_denies(kv: KV, algorithm: str) -> None:
    rl = kv.rate_limit("10/h", algorithm=algorithm)
    decisions = [rl.hit("tenant-7") for _ in range(10)]
    assert all(decisions)
    assert [d.remaining for d in decisions] == list(range(9, -1, -1))
    assert {(d.limit, d.retry_after, d.denied_by) for d in decisions} == {(10, 0.0, None)}
    assert all(0 < d.reset_after <= 2 * 3600 for d in decisions)
    for _ in range(3):
        denied = rl.hit("tenant-7")
        assert not denied and denied.allowed is False
        assert (denied.remaining, denied.denied_by) == (0, rl.name)
        assert 0 < denied.retry_after <= denied.reset_after
    assert_every_key_expires(kv)


def test_gcra_burst_admits_burst_at_once(kv: KV) -> None:
    rl = kv.rate_limit("10/h", burst=3)
    assert [bool(rl.hit("k")) for _ in range(4)] == [True, True, True, False]
    assert rl.capacity == 3 and rl.peek("k").limit == 3
    assert rl.peek("k").retry_after == pytest.approx(360.0, abs=0.01)  # one unit drips per 6 min


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_denied_hit_consumes_nothing_and_retry_after_is_exact(kv: KV, algorithm: str) -> None:
    rl = kv.rate_limit("5/s", algorithm=algorithm)
    full, first = exhaust(rl, "tenant")
    assert first.at is not None
    target = first.at + first.retry_after  # when one more unit is admitted
    deadline = time.monotonic() + first.retry_after + 5.0
    d = first
    while True:
        assert time.monotonic() < deadline, "never admitted again"
        peeked = rl.peek("tenant")
        if peeked.allowed:
            break
        d = rl.hit("tenant")
        if d.allowed:
            break
        # A denial moves nothing: every denied hit and peek points at the same instant.
        for seen in (peeked, d):
            assert seen.at + seen.retry_after == pytest.approx(target, abs=2 * US)  # type: ignore[operator]
        time.sleep(min(0.005, d.retry_after / 4))
    admitted = d if d.allowed else rl.hit("tenant")
    assert admitted.allowed and admitted.at is not None
    assert admitted.at >= target - 2 * US  # never before retry_after
    assert admitted.at <= target + 2.0  # and soon after it (generous: shared CPUs)
    assert full.at is not None and target - full.at <= 1.2 + 1e-3  # at most one period and a fifth
    assert_every_key_expires(kv)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_peek_consumes_nothing(kv: KV, algorithm: str) -> None:
    rl = kv.rate_limit("10/h", algorithm=algorithm)
    fresh = rl.peek("tenant")
    assert (fresh.allowed, fresh.remaining, fresh.retry_after, fresh.reset_after) == (
        True, 10, 0.0, 0.0,
    )  # fmt: skip
    assert keys_under(kv) == []  # a peek writes nothing
    rl.hit("tenant", cost=3)
    assert [rl.peek("tenant").remaining for _ in range(5)] == [7] * 5
    assert rl.hit("tenant").remaining == 6
    rl.hit("tenant", cost=6)
    peeked, hit = rl.peek("tenant"), rl.hit("tenant")
    assert not peeked and not hit
    assert peeked.retry_after == pytest.approx(hit.retry_after, abs=0.5)
    assert peeked.denied_by == rl.name


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reset_clears_in_one_command(kv: KV, algorithm: str) -> None:
    rl = kv.rate_limit("3/h", algorithm=algorithm)
    rl.hit("tenant", cost=3)
    rl.hit("other")
    assert not rl.hit("tenant")
    with count_commands(kv) as sent:
        rl.reset("tenant")
    assert len(sent) == 1
    assert keys_under(kv) == [rl.redis_key("other")]
    assert rl.hit("tenant").remaining == 2
    rl.reset("never-seen")  # resetting nothing is fine


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hit_all_charges_every_limit_or_none(kv: KV, algorithm: str) -> None:
    task = kv.rate_limit("100/h", algorithm=algorithm, name="task", scope="partner")
    tenant = kv.rate_limit("2/h", algorithm=algorithm, name="tenant", scope="partner")
    first = kv.hit_all([(task, "all"), (tenant, "t7")])
    assert first.allowed and first.remaining == 1 and first.limit == 2  # the tighter limit
    assert kv.hit_all([(task, "all"), (tenant, "t7")])
    for _ in range(3):
        denied = kv.hit_all([(task, "all"), (tenant, "t7")])
        assert not denied and denied.denied_by == "tenant" and denied.retry_after > 0
        assert task.peek("all").remaining == 98  # the task-wide limit was not charged
    assert kv.hit_all([(task, "all"), (tenant, "t8")]).remaining == 1
    assert task.peek("all").remaining == 97
    # the task-wide limit denies too, naming itself
    tight = kv.rate_limit("1/h", algorithm=algorithm, name="tight", scope="partner")
    assert kv.hit_all([(tight, "all"), (tenant, "t9")], cost=1)
    denied = kv.hit_all([(tight, "all"), (tenant, "t9")])
    assert denied.denied_by == "tight" and tenant.peek("t9").remaining == 1
    assert_every_key_expires(kv)


def test_hit_all_reports_the_longest_wait(kv: KV) -> None:
    minute = kv.rate_limit("1/m", name="minute", scope="s")
    hour = kv.rate_limit("1/h", name="hour", scope="s")
    assert kv.hit_all([(minute, "k"), (hour, "k")])
    denied = kv.hit_all([(minute, "k"), (hour, "k")])
    assert denied.denied_by == "hour" and denied.retry_after > 3500


def test_hit_all_refuses_limits_that_cannot_share_a_script(kv: KV) -> None:
    a = kv.rate_limit("10/s", name="a", scope="one")
    other_scope = kv.rate_limit("10/s", name="b", scope="two")
    other_algorithm = kv.rate_limit("10/s", algorithm="fixed_window", name="c", scope="one")
    for bad in (other_scope, other_algorithm):
        with pytest.raises(ValueError, match="share one store, algorithm and scope"):
            hit_all([(a, "k"), (bad, "k")])
    with pytest.raises(ValueError, match="at least one"):
        hit_all([])
    with pytest.raises(ValueError, match="twice"):
        hit_all([(a, "k"), (a, "k")])
    with pytest.raises(ValueError, match="cost 11"):
        hit_all([(a, "k")], cost=11)
    assert keys_under(kv) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_identities_are_independent_and_odd_ones_work(kv: KV, algorithm: str) -> None:
    rl = kv.rate_limit("1/h", algorithm=algorithm)
    assert all(rl.hit(key) for key in ODD_KEYS)  # a collision would deny a first hit
    assert not any(rl.hit(key) for key in ODD_KEYS)
    assert len(keys_under(kv)) == len(ODD_KEYS)
    assert_every_key_expires(kv)


def test_limits_with_different_names_or_scopes_are_independent(kv: KV) -> None:
    # "b" as its own scope keys "{b}:k"; named "b" in scope "a" it keys "{a}:b:k", which
    # must not meet the tuple identity ("b", "k") of the limit named "a" either.
    limits = [
        kv.rate_limit("1/h", name="a"),
        kv.rate_limit("1/h", name="b"),
        kv.rate_limit("1/h", name="b", scope="a"),
        kv.rate_limit("1/h", name="a", scope="b"),
    ]
    for key in ("k", ("b", "k"), "b:k"):
        assert all(limit.hit(key) for limit in limits)
        assert not any(limit.hit(key) for limit in limits)
    assert len(keys_under(kv)) == 12


def test_one_round_trip_per_operation(kv: KV) -> None:
    for algorithm in ALGORITHMS:
        task = kv.rate_limit("100/m", algorithm=algorithm, name="task", scope=algorithm)
        tenant = kv.rate_limit("10/m", algorithm=algorithm, name="tenant", scope=algorithm)
        task.hit("warm")  # the first call loads the script
        for operation in ("hit", "peek", "hit_all", "reset"):
            with count_commands(kv) as sent:
                if operation == "hit_all":
                    hit_all([(task, "k"), (tenant, "k")])
                else:
                    getattr(task, operation)("k")
            assert len(sent) == 1, (algorithm, operation, sent)


def test_gcra_key_is_one_small_integer_that_expires_with_the_tat(kv: KV) -> None:
    rl = kv.rate_limit("10/s")
    d = rl.hit("tenant-7")
    raw = kv.client.get(rl.redis_key("tenant-7"))
    assert raw is not None and raw.isdigit() and len(raw) <= 17
    pttl = kv.client.pttl(rl.redis_key("tenant-7"))
    assert 0 < pttl <= d.reset_after * 1000 + 1  # rounded up to whole ms


def test_gcra_key_uses_at_most_100_bytes(redis_url: str, prefix: str) -> None:
    kv = KV.from_url(redis_url, prefix=prefix)
    rl = kv.rate_limit("10/s")
    rl.hit("tenant-7")
    assert kv.client.memory_usage(rl.redis_key("tenant-7")) <= 100


def test_rate_limit_from_a_rate_object(kv: KV) -> None:
    rl = RateLimit(kv.store, Rate(2, 0.5), algorithm="sliding_window")
    assert rl.name == "sliding_window:2/0.5s"
    assert rl.hit("k", cost=2) and not rl.hit("k")


def test_sliding_log_keeps_one_member_per_unit(kv: KV) -> None:
    rl = kv.rate_limit("10/h", algorithm="sliding_log")
    for cost in (3, 1, 2, 1):
        assert rl.hit("k", cost=cost)
    assert kv.client.zcard(rl.redis_key("k")) == 7  # unique even within one microsecond
    assert rl.peek("k").remaining == 3


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keys_outlive_the_state_they_hold(kv: KV, algorithm: str) -> None:
    """Redis expires on a millisecond clock: a key must not vanish before reset_after."""
    rl = kv.rate_limit("50/m", algorithm=algorithm)  # GCRA state lasts 1.2 s per hit here
    for _ in range(20):
        d = rl.hit("k")
        assert d.allowed and d.at is not None
        try:
            expires_ms = kv.client.pexpiretime(rl.redis_key("k"))
        except redis.ResponseError as exc:
            if "unknown command" not in str(exc):
                raise
            pytest.skip("PEXPIRETIME, the one exact view of a key's expiry, needs Redis 7.0+")
        assert expires_ms * 1000 >= round((d.at + d.reset_after) * 1_000_000)
