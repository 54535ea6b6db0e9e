"""Cache contract: explicit misses, O(1) clear, single flight, XFetch, bad input."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from celery_kv import KV
from celery_kv.primitives.cache import Cache
from celery_kv.store import identity

from ._primitive_workers import wait_until
from .conftest import count_commands, keys_under

FALSY: list[Any] = [None, 0, 0.0, "", [], {}, False]
ODD_KEYS: list[Any] = [
    "", "ü", "日本", "{", "}", "{a}", ":", "a:b", ("a", "b"), "*", "\n", "x" * 10_240,
    "x" * 10_239 + "y", b"bytes", 7, "7",
]


def test_falsy_values_are_hits(kv: KV) -> None:
    cache = kv.cache("c", ttl=30)
    for i, value in enumerate(FALSY):
        cache.set(i, value)
        assert cache.get(i, default="MISS") == value
        assert cache.get_or_set(i, lambda: pytest.fail("a falsy value must be a hit")) == value


def test_miss_returns_default(kv: KV) -> None:
    cache = kv.cache("c")
    assert cache.get("absent") is None
    assert cache.get("absent", default="MISS") == "MISS"


def test_set_overwrites_and_round_trips_json(kv: KV) -> None:
    cache = kv.cache("c")
    cache.set("k", {"a": [1, 2, {"b": None}]})
    cache.set("k", {"a": "new"})
    assert cache.get("k") == {"a": "new"}


def test_value_expires_after_its_ttl(kv: KV) -> None:
    cache = kv.cache("c", ttl=30)
    cache.set("short", 1, ttl=0.2)
    cache.set("long", 2)
    wait_until(lambda: cache.get("short", "MISS") == "MISS", timeout=5)
    assert cache.get("long") == 2


def test_delete(kv: KV) -> None:
    cache = kv.cache("c")
    cache.set("k", 0)
    assert cache.delete("k") is True
    assert cache.get("k", "MISS") == "MISS"
    assert cache.delete("k") is False


def test_clear_hides_every_value_in_one_round_trip(kv: KV) -> None:
    cache = kv.cache("c")
    for i in range(50):
        cache.set(i, i)
    cache.clear()  # warm the script
    for i in range(50):
        cache.set(i, i)
    with count_commands(kv) as sent:
        cache.clear()
    assert len(sent) == 1
    assert all(cache.get(i, "MISS") == "MISS" for i in range(50))
    assert cache.delete(3) is False  # an old value is not "live"
    cache.set(3, "new")
    assert cache.get(3) == "new"


def test_clear_on_an_empty_namespace_and_namespaces_are_separate(kv: KV) -> None:
    a, b = kv.cache("a"), kv.cache("b")
    a.clear()
    a.set("k", "in a")
    b.set("k", "in b")
    b.clear()
    assert a.get("k") == "in a"
    assert b.get("k", "MISS") == "MISS"


def test_a_lost_version_key_never_revives_old_values(kv: KV) -> None:
    cache = kv.cache("c")
    cache.set("old", 1)
    version_key = kv.store.keys.key("cache", "c", "ver")
    kv.store.client.delete(version_key)  # as if it had expired or been evicted
    assert cache.get("old", "MISS") == "MISS"
    cache.set("new", 2)  # starts a fresh version from server time
    assert cache.get("old", "MISS") == "MISS"
    assert cache.get("new") == 2


def test_every_key_has_a_ttl_and_one_namespace_tag(kv: KV) -> None:
    cache = kv.cache("c", ttl=30)
    cache.set("a", 1)
    cache.get_or_set("b", lambda: 2)
    cache.clear()
    found = keys_under(kv)
    assert found
    for key in found:
        assert key.count("{") == 1 and "{c}" in key, key
        assert kv.store.client.pttl(key) > 0, key
    version_ttl = kv.store.client.pttl(kv.store.keys.key("cache", "c", "ver"))
    assert version_ttl >= 30 * 24 * 3600 * 1000 - 60_000


@pytest.mark.parametrize("bad", [object(), {1, 2}, threading.Lock()])
def test_non_json_set_raises_and_stores_nothing(kv: KV, bad: Any) -> None:
    cache = kv.cache("reports")
    with pytest.raises(TypeError, match=r"'invoice:42'.*'reports'.*JSON"):
        cache.set("invoice:42", {"x": bad})
    assert keys_under(kv) == []


def test_non_json_compute_raises_releases_and_stores_nothing(kv: KV) -> None:
    cache = kv.cache("reports")
    with pytest.raises(TypeError, match=r"'k'.*'reports'"):
        cache.get_or_set("k", object)
    assert [k for k in keys_under(kv) if not k.endswith(":ver")] == []
    assert cache.get_or_set("k", lambda: 5) == 5  # the lease is free again


def test_get_or_set_computes_once_then_hits(kv: KV) -> None:
    cache = kv.cache("c")
    calls: list[int] = []

    def compute() -> tuple[int, int]:
        calls.append(1)
        return (1, 2)

    assert cache.get_or_set("k", compute) == [1, 2]  # as every later caller sees it
    assert cache.get_or_set("k", compute) == [1, 2]
    assert cache.get("k") == [1, 2]
    assert len(calls) == 1


def test_compute_raising_releases_the_lease(kv: KV) -> None:
    cache = kv.cache("c")

    def boom() -> int:
        raise RuntimeError("origin down")

    with pytest.raises(RuntimeError, match="origin down"):
        cache.get_or_set("k", boom)
    assert cache.get("k", "MISS") == "MISS"
    assert cache.get_or_set("k", lambda: "ok") == "ok"


def _threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)


def test_single_flight_across_clients(kv_factory: Callable[..., KV]) -> None:
    caches = [kv_factory().cache("c", lock_timeout=10) for _ in range(6)]
    calls: list[int] = []
    results: dict[int, Any] = {}
    gate = threading.Barrier(6)

    def compute() -> dict[str, int]:
        calls.append(1)
        threading.Event().wait(0.3)  # the slow origin
        return {"n": len(calls)}

    def worker(i: int) -> None:
        gate.wait()
        results[i] = caches[i].get_or_set("hot", compute)

    _threads(6, worker)
    assert len(calls) == 1
    assert list(results.values()) == [{"n": 1}] * 6


def test_a_waiter_takes_over_when_compute_raises(kv_factory: Callable[..., KV]) -> None:
    kv = kv_factory()
    caches = [kv_factory().cache("c") for _ in range(3)]
    waiters_key = kv.store.keys.key("cache", "c", "waiters", identity("hot"))
    started = threading.Event()
    results: dict[int, Any] = {}
    takeovers: list[int] = []

    def failing() -> int:
        started.set()
        wait_until(lambda: int(kv.store.client.get(waiters_key) or 0) >= 2, timeout=10)
        raise RuntimeError("first computer fails")

    def worker(i: int) -> None:
        if i == 0:
            with pytest.raises(RuntimeError):
                caches[0].get_or_set("hot", failing)
            return
        started.wait(10)

        def compute() -> str:
            takeovers.append(i)
            return f"by {i}"

        results[i] = caches[i].get_or_set("hot", compute)

    _threads(3, worker)
    assert len(takeovers) == 1
    assert results == {1: f"by {takeovers[0]}", 2: f"by {takeovers[0]}"}


def test_a_waiter_takes_over_when_the_lease_runs_out(kv_factory: Callable[..., KV]) -> None:
    slow, fast = kv_factory().cache("c", lock_timeout=0.3), kv_factory().cache("c")
    started, release = threading.Event(), threading.Event()
    got: dict[str, Any] = {}

    def stuck() -> str:
        started.set()
        release.wait(10)
        return "late"

    def first(_: int) -> None:
        got["slow"] = slow.get_or_set("hot", stuck)

    runner = threading.Thread(target=first, args=(0,))
    runner.start()
    assert started.wait(10)
    got["fast"] = fast.get_or_set("hot", lambda: "taken over")
    release.set()
    runner.join(10)
    assert got["fast"] == "taken over"
    assert got["slow"] == "late"


def test_a_value_computed_across_a_clear_is_not_stored(kv_factory: Callable[..., KV]) -> None:
    cache = kv_factory().cache("c")
    started, release = threading.Event(), threading.Event()
    got: list[Any] = []

    def compute() -> str:
        started.set()
        release.wait(10)
        return "stale"

    runner = threading.Thread(target=lambda: got.append(cache.get_or_set("k", compute)))
    runner.start()
    assert started.wait(10)
    cache.clear()
    release.set()
    runner.join(10)
    assert got == ["stale"]
    assert cache.get("k", "MISS") == "MISS"


def _invalidate(other: Cache, how: str) -> None:
    if how == "delete":
        other.delete("k")
    else:
        other.set("k", "new")


@pytest.mark.parametrize(("how", "after"), [("delete", "MISS"), ("set", "new")])
def test_a_delete_or_set_during_compute_wins(
    kv_factory: Callable[..., KV], how: str, after: str
) -> None:
    cache, other = kv_factory().cache("c"), kv_factory().cache("c")

    def compute() -> str:
        _invalidate(other, how)  # another client, while this one computes
        return "stale"

    assert cache.get_or_set("k", compute) == "stale"  # its own caller still gets it
    assert cache.get("k", "MISS") == after  # but it is not cached over the invalidation
    if how == "delete":
        assert cache.get_or_set("k", lambda: "fresh") == "fresh"  # a later miss fills
        assert other.get("k") == "fresh"


@pytest.mark.parametrize(("how", "after"), [("delete", "MISS"), ("set", "new")])
def test_a_delete_or_set_during_an_xfetch_refresh_wins(
    kv_factory: Callable[..., KV], how: str, after: str
) -> None:
    cache, other = kv_factory().cache("c", ttl=1.0, beta=10.0), kv_factory().cache("c")
    calls: list[int] = []
    assert cache.get_or_set("k", _slow("old", calls)) == "old"
    cache._random = _Pinned(1.0 - 1e-12)  # the next get_or_set refreshes early

    def refresh() -> str:
        _invalidate(other, how)
        return "refreshed"

    assert cache.get_or_set("k", refresh) == "refreshed"
    assert cache.get("k", "MISS") == after


def test_a_compute_past_its_lease_does_not_overwrite_the_takeover(
    kv_factory: Callable[..., KV], caplog: pytest.LogCaptureFixture
) -> None:
    kv = kv_factory()
    slow, fast = kv.cache("c", lock_timeout=0.2), kv_factory().cache("c")
    lease_key = kv.store.keys.key("cache", "c", "lease", identity("k"))

    def late() -> str:
        wait_until(lambda: not kv.store.client.exists(lease_key), timeout=10)
        assert fast.get_or_set("k", lambda: "taken over") == "taken over"
        return "late"

    with caplog.at_level(logging.WARNING, logger="celery_kv.cache"):
        assert slow.get_or_set("k", late) == "late"
    assert fast.get("k") == "taken over"
    assert "past its lock_timeout" in caplog.text


def test_a_compute_past_its_lease_leaves_the_new_holder_alone(
    kv_factory: Callable[..., KV],
) -> None:
    kv = kv_factory()
    slow, fast = kv.cache("c", lock_timeout=0.2), kv_factory().cache("c")
    lease_key = kv.store.keys.key("cache", "c", "lease", identity("k"))
    taken, release = threading.Event(), threading.Event()
    got: list[Any] = []

    def second() -> str:
        taken.set()
        release.wait(10)
        return "taken over"

    def late() -> str:
        wait_until(lambda: not kv.store.client.exists(lease_key), timeout=10)
        runner.start()  # takes the free lease and holds it while this fills
        assert taken.wait(10)
        return "late"

    runner = threading.Thread(target=lambda: got.append(fast.get_or_set("k", second)))
    try:
        assert slow.get_or_set("k", late) == "late"
        assert slow.get("k", "MISS") == "MISS"  # not stored: the lease was another's
        assert kv.store.client.exists(lease_key)  # and left with its holder
    finally:
        release.set()
        if runner.is_alive():
            runner.join(10)
    assert got == ["taken over"] and slow.get("k") == "taken over"


def test_a_plain_get_or_set_and_an_xfetch_refresh_still_fill(kv: KV) -> None:
    cache = kv.cache("c", ttl=1.0, beta=10.0)
    calls: list[int] = []
    cache._random = _Pinned(0.0)  # no early refresh
    assert cache.get_or_set("k", _slow("v1", calls)) == "v1"
    assert cache.get("k") == "v1"
    cache._random = _Pinned(1.0 - 1e-12)  # refresh early; nothing invalidates it
    assert cache.get_or_set("k", _slow("v2", calls)) == "v2"
    assert cache.get("k") == "v2" and len(calls) == 2
    lease_key = kv.store.keys.key("cache", "c", "lease", identity("k"))
    assert not kv.store.client.exists(lease_key)


class _Pinned:
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def _slow(result: Any, calls: list[int]) -> Callable[[], Any]:
    def compute() -> Any:
        calls.append(1)
        threading.Event().wait(0.05)  # delta = 50 ms
        return result

    return compute


def test_xfetch_recomputes_early_when_the_draw_says_so(kv: KV) -> None:
    cache = kv.cache("c", ttl=1.0, beta=10.0)
    calls: list[int] = []
    assert cache.get_or_set("k", _slow("v1", calls)) == "v1"
    cache._random = _Pinned(1.0 - 1e-12)  # -log(1e-12) * 10 * 50 ms >> 1 s left
    assert cache.get_or_set("k", _slow("v2", calls)) == "v2"
    assert cache.get("k") == "v2" and len(calls) == 2


@pytest.mark.parametrize(("beta", "draw"), [(0.0, 1.0 - 1e-12), (10.0, 0.0)])
def test_xfetch_off_or_lucky_draw_serves_the_value(kv: KV, beta: float, draw: float) -> None:
    cache = kv.cache("c", ttl=1.0, beta=beta)
    calls: list[int] = []
    cache._random = _Pinned(draw)
    for _ in range(5):
        assert cache.get_or_set("k", _slow("v", calls)) == "v"
    assert len(calls) == 1


def test_xfetch_only_one_caller_recomputes(kv_factory: Callable[..., KV]) -> None:
    a, b = kv_factory().cache("c", ttl=1.0, beta=10.0), kv_factory().cache("c", beta=10.0)
    calls: list[int] = []
    assert a.get_or_set("k", _slow("old", calls)) == "old"
    a._random = b._random = _Pinned(1.0 - 1e-12)
    started, release = threading.Event(), threading.Event()
    got: list[Any] = []

    def refresh() -> str:
        started.set()
        release.wait(10)
        return "new"

    runner = threading.Thread(target=lambda: got.append(a.get_or_set("k", refresh)))
    runner.start()
    assert started.wait(10)
    assert b.get_or_set("k", lambda: pytest.fail("only one caller recomputes")) == "old"
    release.set()
    runner.join(10)
    assert got == ["new"] and b.get("k") == "new"


def test_warm_operations_are_one_round_trip(kv: KV) -> None:
    cache = kv.cache("c")
    ops: list[Callable[[], Any]] = [
        lambda: cache.set("k", [1]),
        lambda: cache.get("k"),
        lambda: cache.get_or_set("k", lambda: pytest.fail("hit expected")),
        lambda: cache.delete("k"),
        lambda: cache.get("k"),
        cache.clear,
    ]
    for op in ops:
        op()  # warm: load the scripts
    cache.set("k", [1])
    for op in ops:
        with count_commands(kv) as sent:
            op()
        assert len(sent) == 1, sent


def test_odd_keys_work_and_never_collide(kv: KV) -> None:
    cache = kv.cache("c")
    for i, key in enumerate(ODD_KEYS):
        cache.set(key, i)
    assert [cache.get(key) for key in ODD_KEYS] == list(range(len(ODD_KEYS)))
    for key in keys_under(kv):
        assert key.count("{") == 1 and key.count("}") == 1, key


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "60", True, None])
def test_bad_ttls_are_refused(kv: KV, bad: Any) -> None:
    if bad is not None:
        with pytest.raises(ValueError, match="ttl"):
            kv.cache("c", ttl=bad)
    cache = kv.cache("c")
    if bad is not None:
        with pytest.raises(ValueError, match="ttl"):
            cache.set("k", 1, ttl=bad)
        with pytest.raises(ValueError, match="ttl"):
            cache.get_or_set("k", lambda: 1, ttl=bad)
    for option in ("lock_timeout", "beta"):
        if bad is not None and not (option == "beta" and bad == 0):
            with pytest.raises(ValueError, match=option):
                kv.cache("c", **{option: bad})
    assert keys_under(kv) == []


def test_bad_namespaces_are_refused(kv: KV) -> None:
    for bad in ["", "a{b", "a}b", "a:b", "a*", "a\nb", "ü", "x" * 10_240, 7]:
        with pytest.raises(ValueError, match="namespace"):
            kv.cache(bad)  # type: ignore[arg-type]
    assert keys_under(kv) == []


def test_works_with_a_decoding_client() -> None:
    kv = KV(client=fakeredis.FakeRedis(decode_responses=True), prefix="dec")
    cache = kv.cache("c")
    cache.set("k", "v")
    assert cache.get("k") == "v"
    assert cache.get_or_set("j", lambda: [1]) == [1]
    cache.clear()
    assert cache.get("k") is None


def test_repr_and_defaults(kv: KV) -> None:
    cache = Cache(kv.store, "c")
    assert cache.ttl == 300.0 and cache.lock_timeout == 10.0 and math.isclose(cache.beta, 1.0)
    assert "c" in repr(cache)
