"""Bad input to the fair concurrency options and the weights API: a clear error that names the
value, the option or key and the task, at definition or at the call, and nothing in Redis."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_kv import ConcurrencyWaitersFull, KVTask, install
from celery_kv.celery.features.concurrency import (
    clear_weight,
    pool_state,
    set_weight,
    weights,
)
from celery_kv.testing import fake_kv

from ..conftest import keys_under
from .test_options import new_app


@pytest.fixture
def app() -> Celery:
    made = new_app()
    install(made, kv=fake_kv())
    return made


BAD = [
    ({"concurrency_limit": 2, "concurrency_key": "{tenant}", "concurrency_total": 0},
     "concurrency_total=0"),
    ({"concurrency_limit": 2, "concurrency_key": "{tenant}", "concurrency_total": -3},
     "concurrency_total=-3"),
    ({"concurrency_limit": 2, "concurrency_key": "{tenant}", "concurrency_total": 2.5},
     "concurrency_total=2.5"),
    ({"concurrency_limit": 2, "concurrency_key": "{tenant}", "concurrency_total": "4"},
     "concurrency_total='4'"),
    ({"concurrency_limit": 2, "concurrency_key": "{tenant}", "concurrency_total": True},
     "concurrency_total=True"),
    ({"concurrency_limit": 2, "concurrency_total": 4}, "concurrency_total=4"),  # no key
    ({"concurrency_key": "{tenant}", "concurrency_total": 4}, "but concurrency_limit"),
    ({"concurrency_limit": 2, "concurrency_max_waiting": 0}, "concurrency_max_waiting=0"),
    ({"concurrency_limit": 2, "concurrency_max_waiting": "x"}, "concurrency_max_waiting='x'"),
    ({"concurrency_limit": 2, "concurrency_max_waiting": 1.5}, "concurrency_max_waiting=1.5"),
    ({"concurrency_max_waiting": 10}, "concurrency_max_waiting=10"),  # no limit
]


@pytest.mark.parametrize(("options", "named"), BAD)
def test_bad_options_fail_at_definition(app: Celery, options: dict[str, Any],
                                        named: str) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        @app.task(base=KVTask, shared=False, name="proj.pool", **options)
        def pool(tenant: str) -> None: ...

    assert "proj.pool" in str(caught.value) and named in str(caught.value)
    assert "proj.pool" not in app.tasks


def test_a_good_pool_and_its_max_defer(app: Celery) -> None:
    @app.task(base=KVTask, shared=False, name="proj.pool", concurrency_limit=2,
              concurrency_key="{tenant}", concurrency_total=5, concurrency_max_waiting=100,
              queued_ttl=120)
    def pool(tenant: str) -> None: ...

    feature = pool._kv_policy.feature("concurrency")
    assert (feature.limit, feature.total, feature.max_waiting) == (2, 5, 100)
    assert feature.max_defer == 120.0, "a waiter stays parked up to the queued TTL"
    assert pool._kv_policy.undo_hold >= 240.0


@pytest.mark.parametrize("weight", [0, -2, float("nan"), float("inf"), "3", None, True, 1e9])
def test_bad_weights_are_refused_naming_value_key_and_task(app: Celery, weight: Any) -> None:
    @app.task(base=KVTask, shared=False, name="proj.pool", concurrency_limit=2,
              concurrency_key="{tenant}", concurrency_total=4)
    def pool(tenant: str) -> None: ...

    with pytest.raises(ValueError) as caught:
        set_weight(app, "proj.pool", "tenant-a", weight)
    message = str(caught.value)
    assert "proj.pool" in message and "'tenant-a'" in message and repr(weight) in message
    assert keys_under(install(app)) == []


def test_weights_need_a_task_with_a_concurrency_limit(app: Celery) -> None:
    @app.task(base=KVTask, shared=False, name="proj.plain", singleton=True)
    def plain(tenant: str) -> None: ...

    with pytest.raises(ValueError, match=r"'proj\.missing'"):
        set_weight(app, "proj.missing", "a", 2)
    with pytest.raises(ValueError, match=r"'proj\.plain' has no concurrency_limit"):
        set_weight(app, "proj.plain", "a", 2)

    @app.task(base=KVTask, shared=False, name="proj.pool", concurrency_limit=2,
              concurrency_key="{tenant}")
    def pool(tenant: str) -> None: ...

    with pytest.raises(TypeError, match=r"'proj\.pool'.*key 7 must be a str"):
        set_weight(app, "proj.pool", 7, 2)  # type: ignore[arg-type]
    assert keys_under(install(app)) == []


def test_weights_api(app: Celery) -> None:
    @app.task(base=KVTask, shared=False, name="proj.pool", concurrency_limit=2,
              concurrency_key="{tenant}", concurrency_total=4)
    def pool(tenant: str) -> None: ...

    assert set_weight(app, "proj.pool", "tenant-a", 3) == 3.0
    assert weights(app, "proj.pool") == {"tenant-a": 3.0}
    assert clear_weight(app, "proj.pool", "tenant-a") is True
    assert weights(app, "proj.pool") == {} and pool_state(app, "proj.pool") == {}


def test_waiters_full_survives_the_json_round_trip() -> None:
    error = ConcurrencyWaitersFull("tenant-a", 50, "proj.pool")
    rebuilt = type(error)(*error.args)
    assert str(rebuilt) == str(error)
    assert "proj.pool" in str(error) and "'tenant-a'" in str(error) and "50" in str(error)


def test_a_granted_waiter_is_published_as_it_was_parked() -> None:
    """A waiter's message goes out as it was parked, never through the enqueue guard:
    there it would be taken for a new call, a duplicate of its own idempotency key held
    by another task id (a run cut off half-way), and swallowed; its grant would then
    lapse and be granted again forever, starving every waiter behind it (the SIGKILL
    fault scenario lost 60 calls so)."""
    from celery_kv.celery.features import concurrency
    from celery_kv.store import codec

    made = Celery("fair-publish", broker="memory://", backend="cache+memory://",
                  set_as_current=False)
    made.conf.update(task_serializer="json", accept_content=["json"])
    install(made, kv=fake_kv())

    @made.task(base=KVTask, shared=False, name="fp.charge", idempotent=True,
               idempotency_key="{order}", concurrency_limit=1)
    def charge(order: int) -> int:
        return order

    sent: list[tuple[str, dict[str, Any]]] = []

    def capture(producer: Any, name: str, message: Any, **options: Any) -> None:
        headers = {**message.headers, **(options.get("headers") or {})}
        sent.append((headers["id"], dict(headers.get("celery_kv") or {})))

    made.amqp.send_task_message = capture
    holder = charge.apply_async((7,))  # holds idempotency key 7 (as a cut-off run would)
    header = {"idempotency_key": "7", "attempt": 0, "concurrency_ticket": "t1"}
    parked = dict(charge.signature((7,), {}, {"task_id": "parked-waiter",
                                              "headers": {"celery_kv": header}}))
    concurrency.publish(made, [codec.dumps(parked, what="test")])
    assert [task_id for task_id, _ in sent] == [holder.id, "parked-waiter"]
    assert sent[1][1] == header, "the granted message was rewritten on its way out"
