"""In-process checks of rate limits as data: several limits and costs per task, overrides,
throttles and their bad inputs (each a clear error, nothing left in Redis)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery

from celery_kv import KVTask, RateLimitExceeded, Throttled, install, signals
from celery_kv.celery import limits
from celery_kv.testing import fake_kv
from tests.conftest import keys_under, wait_for


@pytest.fixture
def app() -> Celery:
    made = Celery("rld", broker="memory://", backend="cache+memory://", set_as_current=False)
    made.conf.update(task_always_eager=True)
    install(made, kv=fake_kv())
    return made


def define(app: Celery, **options: Any) -> Any:
    def body(tenant_id: str, tokens: int = 1) -> str:
        return tenant_id

    return app.task(base=KVTask, shared=False, name="proj.call", **options)(body)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"rate_limit_cost": -1}, "rate_limit_cost=-1"),
    ({"global_rate_limit": "5/s", "rate_limit_cost": 0}, "rate_limit_cost=0"),
    ({"global_rate_limit": "5/s", "rate_limit_cost": 2.5}, "rate_limit_cost=2.5"),
    ({"global_rate_limit": "5/s", "rate_limit_cost": True}, "rate_limit_cost=True"),
    ({"global_rate_limit": "5/s", "rate_limit_cost": 6}, "rate_limit_cost=6 exceeds"),
    ({"rate_limits": []}, "rate_limits=[]"),
    ({"rate_limits": "10/s"}, "rate_limits='10/s'"),
    ({"rate_limits": ["10/s"]}, "rate_limits[0]='10/s'"),
    ({"rate_limits": [{"key": "{tenant_id}"}]}, "has no 'rate'"),
    ({"rate_limits": [{"rate": "ten/s"}]}, "rate_limits[0].rate"),
    ({"rate_limits": [{"rate": "1/s", "key": "{nope}"}]}, "rate_limits[0].key"),
    ({"rate_limits": [{"rate": "1/s", "cost": -3}]}, "rate_limits[0].cost=-3"),
    ({"rate_limits": [{"rate": "1/s", "nmae": "x"}]}, "unknown field(s) ['nmae']"),
    ({"rate_limits": [{"rate": "1/s", "name": ""}]}, "rate_limits[0].name=''"),
    ({"rate_limits": [{"rate": "2/s", "burst": 0}]}, "burst 0"),
    ({"rate_limits": [{"rate": "1/s", "name": "a"}, {"rate": "1/s", "name": "a"}]},
     "names one limit twice"),
    ({"rate_limits": [{"rate": "1/s", "name": "openai-tpm"}, {"rate": "1/s", "name": "rpm"}]},
     "different scopes"),
    ({"rate_limit_cost": 2}, "rate_limit_cost=2 is set but"),
]


@pytest.mark.parametrize(("options", "needle"), BAD)
def test_bad_limit_declarations_fail_at_definition(app: Celery, options: dict[str, Any],
                                                   needle: str) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        define(app, **options)
    assert "proj.call" in str(info.value) and needle in str(info.value), str(info.value)
    assert "proj.call" not in app.tasks
    assert keys_under(app.conf.get("kv") or _kv(app)) == []


def _kv(app: Celery) -> Any:
    from celery_kv.celery.install import installed

    return installed(app).kv


def test_several_limits_share_a_named_scope_and_charge_their_own_costs(app: Celery) -> None:
    task = define(app, rate_limits=[
        {"rate": "100/s"},
        {"rate": "10/s", "key": "{tenant_id}"},
        {"rate": "90000/m", "name": "openai-tpm", "cost": lambda tenant_id, tokens: tokens},
    ])
    kv = _kv(app)
    feature = task._kv_policy.feature("rate_limit")
    assert feature.scope == "openai-tpm"
    assert [spec.name for spec in feature.specs] == [
        "proj.call:limit-0", "proj.call:limit-1", "openai-tpm"]
    assert task.apply(("acme", 700)).get() == "acme"
    assert task.apply(("acme", 300)).get() == "acme"
    task_wide, tenant, tpm = feature.limits(kv)
    # the callable's costs, summed (1,500 units come back each second)
    assert 89000 <= tpm.peek("").remaining < 89000 + 300
    # two charges each (the 100/s one may have one back if the calls were 10 ms apart)
    assert tenant.peek("acme").remaining == 8 and task_wide.peek("").remaining in (98, 99)
    # the shared name is one state, whichever task charges it
    @app.task(base=KVTask, shared=False, name="proj.other",
              rate_limits=[{"rate": "90000/m", "name": "openai-tpm", "cost": 5}])
    def other() -> None: ...

    other.apply().get()
    assert 88995 <= tpm.peek("").remaining < 88995 + 600
    keys = [key for key in keys_under(kv) if ":metrics:" not in key]  # decision counters
    assert keys and all("{openai-tpm}" in key for key in keys), keys


def test_a_bad_cost_from_a_callable_fails_the_call_and_charges_nothing(app: Celery) -> None:
    task = define(app, global_rate_limit="10/s",
                  rate_limit_cost=lambda tenant_id, tokens: tokens)
    for bad in (-1, 0, 11, "3", None):
        with pytest.raises(ValueError, match=r"proj.call.*rate_limit_cost.*returned") as info:
            task.apply_async(("acme", bad))
        assert repr(bad) in str(info.value)
        result = task.apply(("acme", bad))
        assert result.failed() and repr(bad) in str(result.result)
    assert keys_under(_kv(app)) == []
    assert task.apply(("acme", 10)).get() == "acme"
    assert isinstance(task.apply(("acme", 1)).result, RateLimitExceeded), "10 of 10 taken"


def test_overrides_apply_to_the_next_admission_and_are_listed(app: Celery) -> None:
    task = define(app, global_rate_limit="1/m", rate_limit_key="{tenant_id}")
    kv = _kv(app)
    assert task.apply(("acme",)).get() == "acme"
    assert isinstance(task.apply(("acme",)).result, RateLimitExceeded)
    limits.set_override(task, "acme", "100/m")
    assert task.apply(("acme",)).get() == "acme"
    (item,) = limits.list_overrides(task)
    assert item.limit == "per-key" and str(item.rate) == "100/m" and item.ttl is None
    assert item.key == feature_limit(task, kv).redis_key("acme")
    assert limits.unset_override(task, "acme") is True
    assert limits.list_overrides(task) == []


def feature_limit(task: Any, kv: Any) -> Any:
    return task._kv_policy.feature("rate_limit").limits(kv)[0]


@pytest.mark.parametrize("bad", ["0/s", "lots", "-2/m", None, 1.5])
def test_a_bad_override_is_refused_by_name_and_writes_nothing(app: Celery, bad: Any) -> None:
    task = define(app, global_rate_limit="5/s", rate_limit_key="{tenant_id}")
    with pytest.raises((TypeError, ValueError)) as info:
        limits.set_override(task, "acme", bad)
    assert "proj.call" in str(info.value) and repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="no rate limit named 'nope'"):
        limits.set_override(task, "acme", "5/s", limit="nope")
    assert keys_under(_kv(app)) == []


def test_an_override_below_a_fixed_cost_is_refused(app: Celery) -> None:
    task = define(app, global_rate_limit="10/s", rate_limit_cost=4)
    with pytest.raises(ValueError, match="rate_limit_cost=4"):
        limits.set_override(task, "", "3/s")
    assert keys_under(_kv(app)) == []


def test_kv_throttle_holds_the_limit_back(app: Celery) -> None:
    @app.task(base=KVTask, shared=False, name="proj.t429", bind=True,
              global_rate_limit="100/s", rate_limit_key="{tenant_id}")
    def t429(self: Any, tenant_id: str, throttle: float = 0.0) -> float:
        return self.kv_throttle(throttle) if throttle else 0.0

    until = t429.apply(("acme", 30.0)).get()
    denied = t429.apply(("acme",))
    assert isinstance(denied.result, RateLimitExceeded)
    assert denied.result.retry_after == pytest.approx(until - _now(app), abs=0.5)
    assert t429.apply(("globex",)).get() == 0.0, "another identity is not held back"
    with pytest.raises(RuntimeError, match="inside a run"):
        t429.kv_throttle(1.0)


def _now(app: Celery) -> float:
    sec, usec = _kv(app).client.time()
    return float(sec) + usec / 1e6


def test_throttled_survives_the_json_round_trip() -> None:
    exc = Throttled(2.5, "openai-tpm")
    again = type(exc)(*json.loads(json.dumps(exc.args)))
    assert str(again) == str(exc) and again.retry_after == 2.5 and again.limit == "openai-tpm"
    assert "2.500s" in str(exc) and "openai-tpm" in str(exc)


def test_throttled_from_an_eager_run_fails_it_with_the_limit_named(app: Celery) -> None:
    @app.task(base=KVTask, shared=False, name="proj.raises", global_rate_limit="100/s")
    def raises() -> None:
        raise Throttled(5.0)

    result = raises.apply()
    assert isinstance(result.result, RateLimitExceeded)
    assert "proj.raises" in str(result.result)

    @app.task(base=KVTask, shared=False, name="proj.plain_raises", singleton=True)
    def plain_raises() -> None:
        raise Throttled(5.0)

    assert isinstance(plain_raises.apply().result, Throttled), "no limit: a plain failure"

    @app.task(base=KVTask, shared=False, name="proj.bad_throttle", singleton=True,
              global_rate_limit="100/s")
    def bad_throttle() -> None:
        raise Throttled(-1.0)

    failed = bad_throttle.apply()
    assert isinstance(failed.result, ValueError) and "-1.0" in str(failed.result)
    again = bad_throttle.apply().result
    assert isinstance(again, ValueError), f"the singleton key was let go, it ran again: {again!r}"


def test_a_reservation_is_used_once_and_an_early_copy_waits_again(app: Celery) -> None:
    """The start step as a worker runs it (eager runs never reserve): a slot reserved
    behind a throttle, a copy back early, the use at the slot, and a replayed header."""
    from types import SimpleNamespace

    from celery_kv.celery.context import HEADER, Run

    task = define(app, global_rate_limit="100/s", rate_limit_key="{tenant_id}")
    feature = task._kv_policy.feature("rate_limit")
    store = _kv(app).store

    def start(header: dict[str, Any]) -> tuple[Any, Any]:
        request = SimpleNamespace(id="t-1", retries=0, headers={HEADER: header},
                                  is_eager=False, hostname="h")
        run = Run(task, request, ("acme",), {})
        reply = store.run_phase("execution start", [feature.start(run)]).replies[-1]
        return run, reply

    run, _ = start({})
    feature.throttle(run, 0.3)
    run, reply = start({})
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any = None, **named: Any) -> None:
        seen.append(named)

    signals.task_rate_limited.connect(receiver, weak=False)
    try:
        wait = feature.denied(run, reply)
    finally:
        signals.task_rate_limited.disconnect(receiver)
    assert seen and seen[0]["reserved"] is True and seen[0]["key"] == "acme"
    assert seen[0]["countdown"] == wait.countdown
    marks = {**wait.marks, "attempt": 0}
    assert marks["rate_limit_reservation"] and 0.25 < (wait.countdown or 0) <= 0.3
    run, reply = start(marks)
    early = feature.denied(run, reply)
    assert 0 < (early.countdown or 0) <= 0.3 and early.budget is None, "waits, not charged"
    slot = int(str(marks["rate_limit_reservation"]).split()[0]) / 1e6
    wait_for(lambda: _now(app) >= slot, 3, "the slot")
    run, reply = start(marks)
    assert reply[0] == b"ok" and reply[1] == b"reserved"
    feature.started(run, reply)
    assert run.request.kv_rate_limit.at == pytest.approx(slot, abs=1e-6)
    run, reply = start(marks)  # the same header again (a redelivery): charged anew
    assert reply[0] == b"ok" and reply[1] != b"reserved"
    forged = {**marks, "rate_limit_reservation": f"{int(slot * 1e6)} 1 1"}
    run, reply = start(forged)
    assert reply[1] != b"reserved", "a header the server never recorded admits nothing"
