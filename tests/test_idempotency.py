"""Idempotency contract: the state machine, fingerprints, leases, bad input, round trips."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_kv import KV, IdempotencyInProgress, IdempotencyKeyReused, IdempotencyOutcomeUnknown
from celery_kv.primitives.idempotency import Claim, Idempotency
from celery_kv.testing import fake_kv

from ._primitive_workers import wait_until
from .conftest import count_commands, keys_under

ODD_KEYS = ["", "ü", "日本", "{", "}", "{a}", ":", "a:b", "*", "\n", "x" * 255, "x" * 254 + "y"]


class Counter:
    """A compute function that counts its runs."""

    def __init__(self, result: Any = "done") -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.result = result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.result


def test_first_caller_runs_later_callers_replay(kv: KV) -> None:
    idem = kv.idempotency("pay")
    charge = Counter({"charged": 10})
    assert idem.run("order-1", charge, 1, amount=10) == {"charged": 10}
    assert idem.run("order-1", charge, 1, amount=10) == {"charged": 10}
    assert len(charge.calls) == 1
    assert charge.calls[0] == ((1,), {"amount": 10})
    state = idem.state("order-1")
    assert state.status == "completed" and state.result == {"charged": 10}
    assert state.ttl_left is not None and 86_000 < state.ttl_left <= 86_400


def test_results_round_trip_rich_json(kv: KV) -> None:
    idem = kv.idempotency("pay")
    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)
    assert idem.run("k", lambda: (when, None)) == [when, None]
    assert idem.run("k", lambda: pytest.fail("replayed")) == [when, None]


def test_falsy_results_are_stored_results(kv: KV) -> None:
    idem = kv.idempotency("pay")
    falsy: list[Any] = [None, 0, "", [], {}, False]
    for i, value in enumerate(falsy):
        assert idem.run(str(i), Counter(value)) == value
        assert idem.run(str(i), lambda: pytest.fail("replayed")) == value


def test_different_arguments_are_a_reused_key(kv: KV) -> None:
    idem = kv.idempotency("pay")
    idem.run("k", Counter(), 1, amount=10)
    with pytest.raises(IdempotencyKeyReused) as info:
        idem.run("k", Counter(), 1, amount=11)
    assert info.value.key == "k"
    assert type(info.value)(*info.value.args).key == "k"  # survives a JSON round trip


def test_keyword_order_does_not_change_the_fingerprint(kv: KV) -> None:
    idem = kv.idempotency("pay")
    charge = Counter()
    idem.run("k", charge, a=1, b={"x": 1, "y": 2})
    idem.run("k", charge, b={"y": 2, "x": 1}, a=1)
    assert len(charge.calls) == 1


def test_an_explicit_fingerprint_wins_over_arguments(kv: KV) -> None:
    idem = kv.idempotency("pay")
    charge = Counter("first")
    assert idem.run("k", charge, 1, fingerprint="request-abc") == "first"
    assert idem.run("k", charge, 2, fingerprint="request-abc") == "first"
    with pytest.raises(IdempotencyKeyReused):
        idem.run("k", charge, 1, fingerprint="request-xyz")
    assert len(charge.calls) == 1


def test_a_caller_during_the_run_gets_in_progress(kv: KV) -> None:
    idem = kv.idempotency("pay")
    claim = idem.begin("k", "task-1")
    with pytest.raises(IdempotencyInProgress) as info:
        idem.run("k", Counter())
    assert info.value.key == "k" and info.value.holder == "task-1"
    assert "task-1" in str(type(info.value)(*info.value.args))
    assert claim.status == "acquired"


def test_compute_raising_releases_the_claim(kv: KV) -> None:
    idem = kv.idempotency("pay")

    def boom() -> None:
        raise ValueError("card declined")

    with pytest.raises(ValueError, match="card declined"):
        idem.run("k", boom)
    assert idem.state("k").status == "absent"
    assert idem.run("k", Counter("retried")) == "retried"


def test_non_json_result_raises_releases_and_stores_nothing(kv: KV) -> None:
    idem = kv.idempotency("pay")
    with pytest.raises(TypeError, match=r"'order-9'.*'pay'.*JSON"):
        idem.run("order-9", Counter(object()))
    assert idem.state("order-9").status == "absent"
    assert keys_under(kv) == []


def test_non_json_arguments_raise_before_anything_is_written(kv: KV) -> None:
    idem = kv.idempotency("pay")
    with pytest.raises(TypeError, match=r"arguments.*'k'"):
        idem.run("k", Counter(), object())
    assert keys_under(kv) == []


def test_state_machine_transitions(kv: KV) -> None:
    idem = kv.idempotency("pay", ttl=100, lease=10)
    assert idem.state("k").status == "absent"

    claim = idem.begin("k", "a", "fp")
    assert claim == Claim("acquired", "a", None, 10.0) and claim.ours
    state = idem.state("k")
    assert (state.status, state.owner, state.fingerprint) == ("in_progress", "a", "fp")
    assert state.lease_left is not None and 9 < state.lease_left <= 10

    assert idem.begin("k", "b", "fp").status == "in_progress"
    assert idem.begin("k", "b", "fp").owner == "a"
    assert idem.complete("k", "b", "stolen") is False
    assert idem.abandon("k", "b") is False
    assert idem.renew("k", "b") is False

    assert idem.begin("k", "a", "fp").status == "reentered"
    assert idem.complete("k", "a", {"ok": True}) is True
    assert idem.complete("k", "a", {"ok": True}) is True  # a retried complete
    done = idem.begin("k", "b", "fp")
    assert done == Claim("completed", "a", {"ok": True}, None)
    assert idem.abandon("k", "a") is False  # a completed record is never released
    assert idem.renew("k", "a") is False
    assert idem.complete("k", "b", "other") is False
    state = idem.state("k")
    assert (state.status, state.owner, state.result) == ("completed", "a", {"ok": True})
    assert state.ttl_left is not None and 99 < state.ttl_left <= 100

    assert idem.forget("k") is True
    assert idem.forget("k") is False
    assert idem.state("k").status == "absent"


def test_takeover_hands_a_claim_from_one_owner_to_another(kv: KV) -> None:
    idem = kv.idempotency("pay", ttl=100, lease=10)
    idem.begin("k", "task-1", "fp", lease=2)
    assert idem.begin("k", "run-1", "fp", takeover="other").status == "in_progress"
    claim = idem.begin("k", "task-1#run", "fp", lease=8, takeover="task-1")
    assert claim == Claim("reentered", "task-1#run", None, 8.0) and claim.ours
    assert idem.begin("k", "task-1#run", "fp", takeover="task-1").status == "reentered"
    assert idem.renew("k", "task-1") is False  # the old owner lost it
    with pytest.raises(IdempotencyKeyReused):
        idem.begin("k", "x", "other-fp", takeover="task-1#run")
    assert idem.complete("k", "task-1#run", "paid") is True
    done = idem.begin("k", "task-2", "fp", takeover="task-1#run")
    assert done == Claim("completed", "task-1#run", "paid", None)  # never taken from done
    assert idem.begin("fresh", "a", takeover="nobody").status == "acquired"


def test_abandon_frees_the_key(kv: KV) -> None:
    idem = kv.idempotency("pay")
    idem.begin("k", "a")
    assert idem.abandon("k", "a") is True
    assert idem.abandon("k", "a") is False
    assert idem.begin("k", "b").status == "acquired"


def test_fingerprint_mismatch_changes_nothing(kv: KV) -> None:
    idem = kv.idempotency("pay")
    idem.begin("k", "a", "fp-1")
    with pytest.raises(IdempotencyKeyReused):
        idem.begin("k", "a", "fp-2")  # not even the owner re-enters with other arguments
    state = idem.state("k")
    assert (state.status, state.owner, state.fingerprint) == ("in_progress", "a", "fp-1")
    idem.complete("k", "a", 1)
    with pytest.raises(IdempotencyKeyReused):
        idem.begin("k", "b", "fp-2")
    assert idem.begin("k", "b").status == "completed"  # no fingerprint: not compared


def test_reentering_and_renewing_set_an_absolute_lease(kv: KV) -> None:
    idem = kv.idempotency("pay", ttl=100, lease=10)
    idem.begin("k", "a", lease=2)
    left = idem.state("k").lease_left
    assert left is not None and left <= 2
    assert idem.renew("k", "a", lease=50) is True
    left = idem.state("k").lease_left
    assert left is not None and 49 < left <= 50
    assert idem.renew("k", "a", lease=1) is True  # absolute, not added on
    left = idem.state("k").lease_left
    assert left is not None and left <= 1
    claim = idem.begin("k", "a")
    assert claim.status == "reentered" and claim.lease_left == 10.0


def test_an_unrenewed_claim_lapses_into_ran_result_unknown(kv: KV) -> None:
    """A runner that stopped renewing (killed, or cut off as its body ended) may have done
    its effects: the key says so, and no one else runs it, until it is forgotten."""
    idem = kv.idempotency("pay", ttl=60, lease=0.3)
    idem.begin("k", "crashed")
    state = wait_until(lambda: (s := idem.state("k")).status == "unknown" and s, timeout=5)
    assert state.owner == "crashed" and state.ttl_left is not None and state.ttl_left > 50
    claim = idem.begin("k", "next")
    assert claim.status == "unknown" and claim.owner == "crashed"
    effects: list[int] = []
    with pytest.raises(IdempotencyOutcomeUnknown, match="ran, result unknown") as info:
        idem.run("k", effects.append, 1)
    assert info.value.holder == "crashed" and effects == []
    assert idem.forget("k")
    idem.run("k", effects.append, 1)
    assert effects == [1]


def test_a_lapsed_runner_can_still_renew_or_complete_its_own_claim(kv: KV) -> None:
    idem = kv.idempotency("pay", ttl=60, lease=0.3)
    idem.begin("k", "slow")
    wait_until(lambda: idem.state("k").status == "unknown", timeout=5)
    assert idem.renew("k", "slow") and idem.state("k").status == "in_progress"
    wait_until(lambda: idem.state("k").status == "unknown", timeout=5)
    assert idem.complete("k", "slow", {"ok": 1})
    assert idem.begin("k", "next").result == {"ok": 1}


def test_a_completed_record_expires_after_its_ttl(kv: KV) -> None:
    idem = kv.idempotency("pay", ttl=0.4, lease=0.2)
    idem.run("k", Counter())
    wait_until(lambda: idem.state("k").status == "absent", timeout=5)
    assert keys_under(kv) == []


def test_the_heartbeat_renews_a_running_claim(kv_factory: Callable[..., KV]) -> None:
    idem = kv_factory().idempotency("pay", lease=1.5)
    other = kv_factory().idempotency("pay", lease=1.5)
    seen: list[tuple[str, float | None]] = []

    def renewed() -> bool:
        state = other.state("k")
        seen.append((state.status, state.lease_left))
        return len(seen) > 1 and (seen[-1][1] or 0) > (seen[-2][1] or 0)

    def long_run() -> str:
        wait_until(renewed, timeout=15, every=0.05)  # the lease went back up while running
        return "finished"

    assert idem.run("k", long_run) == "finished"
    assert {status for status, _left in seen} == {"in_progress"}
    assert other.run("k", Counter()) == "finished"


def test_a_claim_lost_mid_run_is_not_overwritten(kv: KV) -> None:
    idem = kv.idempotency("pay")

    def lose_claim() -> str:
        idem.forget("k")
        idem.begin("k", "someone-else")
        return "mine"

    assert idem.run("k", lose_claim) == "mine"
    state = idem.state("k")
    assert (state.status, state.owner) == ("in_progress", "someone-else")


def test_warm_operations_are_one_round_trip(kv: KV) -> None:
    idem = kv.idempotency("pay")
    idem.run("done", Counter("x"))
    ops: list[Callable[[], Any]] = [
        lambda: idem.begin("k", "a"),
        lambda: idem.renew("k", "a"),
        lambda: idem.state("k"),
        lambda: idem.complete("k", "a", 1),
        lambda: idem.begin("k2", "a"),
        lambda: idem.abandon("k2", "a"),
        lambda: idem.forget("k"),
        lambda: idem.run("done", lambda: pytest.fail("replayed")),
    ]
    for op in ops:
        op()  # warm: load the scripts
    idem.forget("k")
    for op in ops:
        with count_commands(kv) as sent:
            op()
        assert len(sent) == 1, sent


def test_odd_keys_work_and_never_collide(kv: KV) -> None:
    idem = kv.idempotency("pay")
    for i, key in enumerate(ODD_KEYS):
        assert idem.run(key, Counter(i)) == i
    assert [idem.state(key).result for key in ODD_KEYS] == list(range(len(ODD_KEYS)))
    for key in keys_under(kv):
        assert key.count("{") == 1 and key.count("}") == 1, key


@pytest.mark.parametrize("bad", ["x" * 256, "y" * 10_240, 7, b"bytes", None, ("a",)])
def test_bad_keys_are_refused_and_nothing_is_written(kv: KV, bad: Any) -> None:
    idem = kv.idempotency("pay")
    ops: list[Callable[[], Any]] = [
        lambda: idem.run(bad, Counter()),
        lambda: idem.begin(bad, "a"),
        lambda: idem.complete(bad, "a", 1),
        lambda: idem.abandon(bad, "a"),
        lambda: idem.renew(bad, "a"),
        lambda: idem.state(bad),
        lambda: idem.forget(bad),
    ]
    for op in ops:
        with pytest.raises(ValueError, match="idempotency key") as info:
            op()
        assert len(str(info.value)) < 300  # a 10 KB key is cut in the message
    assert keys_under(kv) == []


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"ttl": 0}, "ttl"), ({"ttl": -1}, "ttl"), ({"ttl": float("inf")}, "ttl"),
        ({"ttl": float("nan")}, "ttl"), ({"ttl": "1"}, "ttl"), ({"lease": 0}, "lease"),
        ({"lease": -5}, "lease"), ({"lease": True}, "lease"), ({"ttl": 10, "lease": 11}, "lease"),
    ],
)
def test_bad_options_are_refused(kv: KV, options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        kv.idempotency("pay", **options)
    assert keys_under(kv) == []


def test_bad_step_arguments_are_refused(kv: KV) -> None:
    idem = kv.idempotency("pay")
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="lease"):
            idem.begin("k", "a", lease=bad)
        with pytest.raises(ValueError, match="lease"):
            idem.renew("k", "a", lease=bad)
    for owner in ("", None, 5):
        with pytest.raises(ValueError, match="owner"):
            idem.begin("k", owner)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fingerprint"):
        idem.begin("k", "a", fingerprint="f" * 2000)
    with pytest.raises(TypeError, match="'k'"):
        idem.complete("k", "a", object())
    assert keys_under(kv) == []


def test_bad_namespaces_are_refused(kv: KV) -> None:
    for bad in ["", "a{b", "a:b", "a\nb", "ü", "x" * 10_240, 7]:
        with pytest.raises(ValueError, match="namespace"):
            kv.idempotency(bad)  # type: ignore[arg-type]
    assert keys_under(kv) == []


def test_namespaces_are_separate(kv: KV) -> None:
    a, b = kv.idempotency("a"), kv.idempotency("b")
    assert a.run("k", Counter("in a")) == "in a"
    assert b.run("k", Counter("in b")) == "in b"


def test_works_with_a_decoding_client() -> None:
    kv = KV(client=fakeredis.FakeRedis(decode_responses=True), prefix="dec")
    idem = kv.idempotency("pay")
    assert idem.run("k", Counter([1])) == [1]
    assert idem.begin("k", "x").result == [1]
    assert idem.state("k").status == "completed"


def test_defaults_and_repr(kv: KV) -> None:
    idem = Idempotency(kv.store, "pay")
    assert (idem.ttl, idem.lease) == (86400.0, 60.0)
    assert "pay" in repr(idem)


OWNERS = st.sampled_from(["a", "b", "c"])
FPS = st.sampled_from([None, "f1", "f2"])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("begin"), OWNERS, FPS),
        st.tuples(st.just("complete"), OWNERS, st.integers(0, 3)),
        st.tuples(st.just("abandon"), OWNERS),
        st.tuples(st.just("forget")),
    ),
    max_size=25,
)


def _model_step(rec: dict[str, Any] | None, step: tuple[Any, ...]) -> tuple[Any, Any]:
    """The state machine as a plain-Python model: (new record, expected answer)."""
    op = step[0]
    if op == "begin":
        _, owner, fp = step
        if rec is None:
            return {"s": "p", "o": owner, "f": fp or ""}, ("acquired", owner, None)
        if fp and rec["f"] and fp != rec["f"]:
            return rec, "reused"
        if rec["s"] == "c":
            return rec, ("completed", rec["o"], rec["r"])
        return rec, ("reentered" if rec["o"] == owner else "in_progress", rec["o"], None)
    if op == "complete":
        _, owner, result = step
        if rec is None or rec["o"] != owner:
            return rec, False
        return (rec if rec["s"] == "c" else {**rec, "s": "c", "r": result}), True
    if op == "abandon":
        if rec is not None and rec["s"] == "p" and rec["o"] == step[1]:
            return None, True
        return rec, False
    return None, rec is not None


@settings(max_examples=60, deadline=None)
@given(STEPS)
def test_the_scripts_follow_the_state_machine(steps: list[tuple[Any, ...]]) -> None:
    idem = fake_kv().idempotency("pay")
    rec: dict[str, Any] | None = None
    for step in steps:
        rec, expected = _model_step(rec, step)
        op = step[0]
        if op == "begin":
            try:
                claim = idem.begin("k", step[1], step[2])
                got: Any = (claim.status, claim.owner, claim.result)
            except IdempotencyKeyReused:
                got = "reused"
        elif op == "complete":
            got = idem.complete("k", step[1], step[2])
        elif op == "abandon":
            got = idem.abandon("k", step[1])
        else:
            got = idem.forget("k")
        assert got == expected, (step, rec)
        state = idem.state("k")
        want = "absent" if rec is None else {"p": "in_progress", "c": "completed"}[rec["s"]]
        assert state.status == want
