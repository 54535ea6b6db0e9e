"""In-process checks: options fail at definition, keys bind by name, settings, signals."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_kv import (
    KV,
    CachedTask,
    IdempotentTask,
    KVTask,
    RateLimitedTask,
    SingletonTask,
    install,
    signals,
)
from celery_kv.celery.install import installed
from celery_kv.primitives.lock import describe
from celery_kv.testing import fake_kv


def new_app(**conf: Any) -> Celery:
    app = Celery("opts", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update({"task_always_eager": True, **conf})
    return app


@pytest.fixture
def app() -> Celery:
    app = new_app()
    install(app, kv=fake_kv())
    return app


BAD_OPTIONS: list[tuple[type[Any], dict[str, Any], str]] = [
    (RateLimitedTask, {"global_rate_limit": "abc"}, "global_rate_limit"),
    (RateLimitedTask, {"global_rate_limit": "0/s"}, "global_rate_limit"),
    (RateLimitedTask, {"global_rate_limit": "-5/m"}, "global_rate_limit"),
    (RateLimitedTask, {"global_rate_limit": ["10/s", "x"]}, "global_rate_limit"),
    (RateLimitedTask, {"global_rate_limit": []}, "global_rate_limit"),
    (RateLimitedTask, {"global_rate_limit": 2.5}, "global_rate_limit"),
    (RateLimitedTask, {"global_rate_limit": "1/s", "rate_limit_algorithm": "leaky"},
     "rate_limit_algorithm"),
    (RateLimitedTask, {"global_rate_limit": "1/s", "rate_limit_max_delay": 0},
     "rate_limit_max_delay"),
    (RateLimitedTask, {"global_rate_limit": "1/s", "rate_limit_key": "{nope}"},
     "rate_limit_key"),
    (RateLimitedTask, {}, "global_rate_limit"),
    (SingletonTask, {"lock_ttl": -1}, "lock_ttl"),
    (SingletonTask, {"lock_ttl": 0}, "lock_ttl"),
    (SingletonTask, {"lock_ttl": math.inf}, "lock_ttl"),
    (SingletonTask, {"lock_ttl": "10"}, "lock_ttl"),
    (SingletonTask, {"queued_ttl": math.nan}, "queued_ttl"),
    (SingletonTask, {"singleton_mode": "queue"}, "singleton_mode"),
    (SingletonTask, {"on_duplicate": "ignore"}, "on_duplicate"),
    (SingletonTask, {"on_locked": "wait"}, "on_locked"),
    (SingletonTask, {"singleton_key": "{tenant}"}, "singleton_key"),
    (SingletonTask, {"singleton_key": "{0}"}, "singleton_key"),
    (SingletonTask, {"singleton_key": "{tenant_id"}, "singleton_key"),
    (SingletonTask, {"singleton_key": ""}, "singleton_key"),
    (SingletonTask, {"singleton_key": 42}, "singleton_key"),
    (SingletonTask, {"singleton_key": ["{tenant_id}"]}, "singleton_key"),
    # templates take plain parameter names only, parted by a separator (F6, F10)
    (SingletonTask, {"singleton_key": "{tenant_id.__class__}"}, "tenant_id.__class__"),
    (SingletonTask, {"singleton_key": "{tenant_id[0]}"}, "tenant_id[0]"),
    (SingletonTask, {"singleton_key": "{tenant_id!r}"}, "tenant_id"),
    (SingletonTask, {"singleton_key": "{tenant_id:>10}"}, "tenant_id"),
    (SingletonTask, {"singleton_key": "{}"}, "singleton_key"),
    (SingletonTask, {"singleton_key": "{tenant_id}{full}"}, "{full}"),
    (SingletonTask, {"singleton_key": "{tenant_id}x{full}"}, "{full}"),
    (SingletonTask, {"singleton_key": "{tenant_id}%{full}"}, "{full}"),
    (SingletonTask, {"singleton_key": "{tenant_id}-{full}"}, "{full}"),
    (SingletonTask, {"singleton_key": "{tenant_id}.{full}"}, "{full}"),
    (CachedTask, {"cache_key": "{tenant_id.real}"}, "cache_key"),
    (IdempotentTask, {"idempotency_key": "{tenant_id}7{full}"}, "idempotency_key"),
    (RateLimitedTask, {"global_rate_limit": "1/s", "rate_limit_key": "{tenant_id}{full}"},
     "rate_limit_key"),
    # TTLs are bounded (at most 1e9 s), named before anything reaches Redis (F8)
    (SingletonTask, {"lock_ttl": 1e17}, "lock_ttl"),
    (SingletonTask, {"queued_ttl": 1e17}, "queued_ttl"),
    (CachedTask, {"cache_ttl": 1e17}, "cache_ttl"),
    (IdempotentTask, {"idempotency_ttl": 1e17}, "idempotency_ttl"),
    (IdempotentTask, {"idempotency_lease": 1e17}, "idempotency_lease"),
    (RateLimitedTask, {"global_rate_limit": "1/s", "rate_limit_max_delay": 1e17},
     "rate_limit_max_delay"),
    (KVTask, {"singleton": "yes"}, "singleton"),
    (KVTask, {"singleton_key": "{tenant_id}"}, "singleton_key"),  # singleton is off
    (IdempotentTask, {"idempotency_ttl": -3}, "idempotency_ttl"),
    (IdempotentTask, {"idempotency_lease": 100, "idempotency_ttl": 10}, "idempotency_lease"),
    (IdempotentTask, {"idempotency_key": "{order}"}, "idempotency_key"),
    (IdempotentTask, {"idempotency_key": object()}, "idempotency_key"),
    (KVTask, {"concurrency_limit": 0}, "concurrency_limit"),
    (KVTask, {"concurrency_limit": 2.0}, "concurrency_limit"),
    (KVTask, {"concurrency_limit": True}, "concurrency_limit"),
    (KVTask, {"concurrency_key": "{tenant_id}"}, "concurrency_key"),
    (CachedTask, {"cache_ttl": 0}, "cache_ttl"),
    (CachedTask, {"cache_ttl": -1.5}, "cache_ttl"),
    (CachedTask, {"cache_key": "{x}"}, "cache_key"),
    (CachedTask, {"cache_version": 1.5}, "cache_version"),
    (KVTask, {"cache_version": 2}, "cache_version"),  # cache is off
    (SingletonTask, {"on_unavailable": "ignore"}, "on_unavailable"),
    (SingletonTask, {"singleton_keys": "{tenant_id}"}, "singleton_keys"),
    (KVTask, {"rate_limit": "1/s", "rate_limit_algoritm": "gcra"}, "rate_limit_algoritm"),
    (CachedTask, {"cache_timeout": 5}, "cache_timeout"),
    (SingletonTask, {"on_unavailable": {"locks": "run"}}, "on_unavailable"),
    (SingletonTask, {"on_unavailable": {"cache": "later"}}, "on_unavailable"),
]


@pytest.mark.parametrize(("base", "options", "option"), BAD_OPTIONS)
def test_a_bad_option_fails_at_the_decorator(
    app: Celery, base: type[Any], options: dict[str, Any], option: str
) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        @app.task(base=base, shared=False, name="proj.sync", **options)
        def sync(tenant_id: str, full: bool = False) -> None: ...

    message = str(caught.value)
    assert "proj.sync" in message and option in message
    assert "proj.sync" not in app.tasks, "a half-defined task must not stay registered"


def test_bad_options_in_task_annotations_fail_at_the_decorator() -> None:
    app = new_app(task_annotations={"proj.sync": {"lock_ttl": -5}})
    install(app, kv=fake_kv())
    with pytest.raises(ValueError, match=r"proj\.sync.*lock_ttl=-5"):
        @app.task(base=SingletonTask, shared=False, name="proj.sync")
        def sync(tenant_id: str) -> None: ...


def test_tasks_defined_before_install_are_checked_at_install() -> None:
    app = new_app()

    @app.task(base=SingletonTask, shared=False, name="proj.early", singleton_key="{missing}")
    def early(tenant_id: str) -> None: ...

    with pytest.raises(ValueError, match=r"proj\.early"):
        install(app, kv=fake_kv())


@pytest.mark.parametrize(
    ("setting", "value"),
    [("kv_lock_ttl", 0), ("kv_queued_ttl", -1), ("kv_on_unavailable", "maybe"),
     ("kv_on_unavailable", {"lock": "run"}), ("kv_rate_limit_algorithm", "token_bucket"),
     ("kv_prefix", "a{b}"), ("kv_prefix", ""), ("kv_retry_deadline", math.inf),
     *[(f"kv_{name}", 1e17) for name in (
         "lock_ttl", "queued_ttl", "cache_ttl", "idempotency_ttl", "idempotency_lease",
         "rate_limit_max_delay", "retry_deadline", "completion_ttl", "enqueue_claim_ttl",
         "unavailable_max_delay", "wait_interval", "completion_deadline")]],
)
def test_bad_settings_fail_at_install(setting: str, value: Any) -> None:
    app = new_app(**{setting: value})
    with pytest.raises((ValueError, TypeError), match=setting):
        install(app, kv=fake_kv())


def test_the_coordination_url_defaults_to_a_redis_broker() -> None:
    app = Celery("u", broker="redis://127.0.0.1:1/5", set_as_current=False)
    assert installed(app).settings.coordination_url(app.conf.broker_url) == \
        "redis://127.0.0.1:1/5"
    amqp = Celery("u", broker="amqp://guest@127.0.0.1//", set_as_current=False)
    with pytest.raises(ValueError, match="kv_redis_url"):
        install(amqp)
    amqp.conf.kv_redis_url = "redis://127.0.0.1:1/3"


def test_install_twice_returns_the_same_kv(app: Celery) -> None:
    first = install(app)
    assert install(app) is first
    assert isinstance(first, KV)


def test_keys_bind_arguments_by_name_with_defaults(app: Celery) -> None:
    @app.task(base=KVTask, shared=False, name="proj.keys", singleton=True, idempotent=True)
    def keys(tenant_id: str, full: bool = False, *rest: Any, **extra: Any) -> None: ...

    one = keys.kv_keys(("t1",))
    assert keys.kv_keys((), {"tenant_id": "t1"}) == one
    assert keys.kv_keys(("t1", False)) == one
    assert keys.kv_keys(("t1", True)) != one
    assert keys.kv_keys(("t1",), {"z": 1, "a": 2}) == keys.kv_keys(("t1",), {"a": 2, "z": 1})
    assert keys.kv_keys(("t1",), idempotency_key="order-1").idempotency == "order-1"
    with pytest.raises(TypeError, match=r"proj\.keys"):
        keys.kv_keys((), {})


def test_template_and_callable_keys(app: Celery) -> None:
    with pytest.raises(ValueError, match=r"proj\.idx.*singleton_key.*'opts\[mode\]'"):
        @app.task(base=SingletonTask, shared=False, name="proj.idx",
                  singleton_key="{tenant_id}:{opts[mode]}")
        def idx(tenant_id: str, opts: dict[str, str] | None = None) -> None: ...

    @app.task(base=SingletonTask, shared=False, name="proj.tmpl",
              singleton_key="{tenant_id}:{mode}")
    def tmpl(tenant_id: str, mode: str = "full") -> None: ...

    # values are escaped: every character but letters, digits, "-", "_", "." becomes %XX
    assert tmpl.kv_keys(("t{1}:*\n",)).singleton == "t%7B1%7D%3A%2A%0A:full"

    @app.task(base=SingletonTask, shared=False, name="proj.call",
              singleton_key=lambda tenant_id, **kw: tenant_id.upper())
    def call(tenant_id: str, full: bool = False) -> None: ...

    assert call.kv_keys(("abc",), {"full": True}).singleton == "ABC"

    @app.task(base=SingletonTask, shared=False, name="proj.kw", singleton_key="{region}")
    def kw(tenant_id: str, **extra: Any) -> None: ...

    assert kw.kv_keys(("t",), {"region": "eu"}).singleton == "eu"
    with pytest.raises(ValueError, match="region"):
        kw.kv_keys(("t",))


def test_long_idempotency_keys_are_digested(app: Celery) -> None:
    @app.task(base=IdempotentTask, shared=False, name="proj.long", idempotency_key="{payload}")
    def long(payload: str) -> None: ...

    short = long.kv_keys(("x" * 255,)).idempotency
    digested = long.kv_keys(("x" * 10_000,)).idempotency
    assert short == "x" * 255
    assert digested is not None and len(digested) < 255 and digested != long.kv_keys(
        ("x" * 10_001,)).idempotency


def test_features_run_eagerly_and_expose_kv_and_fence(app: Celery) -> None:
    seen: list[Any] = []

    @app.task(base=KVTask, shared=False, name="proj.all", bind=True, singleton=True,
              idempotent=True, global_rate_limit=["100/s", "1000/m"], concurrency_limit=2,
              cache_ttl=30)
    def everything(self: Any, x: int) -> int:
        seen.append((self.fence, self.request.kv_rate_limit.allowed, self.kv))
        return x * 2

    assert everything.delay(4).get() == 8
    assert everything.delay(4).get() == 8  # replayed
    assert len(seen) == 1
    fence, allowed, kv = seen[0]
    assert isinstance(fence, int) and allowed and kv is installed(app).kv
    assert everything.fence is None  # outside a run
    lock = describe(kv.store, ("proj.all", everything.kv_keys((4,)).singleton))
    assert lock is None, "released after success"


def test_a_receiver_that_raises_never_breaks_a_task(app: Celery) -> None:
    @app.task(base=CachedTask, shared=False, name="proj.cached")
    def cached(x: int) -> int:
        return x + 1

    def broken(**_: Any) -> None:
        raise RuntimeError("receiver bug")

    received: list[str] = []

    def working(sender: Any, key: str, **_: Any) -> None:
        received.append(key)

    for signal in (signals.cache_miss, signals.cache_hit):
        signal.connect(broken, weak=False)
        signal.connect(working, weak=False)
    try:
        assert cached.delay(1).get() == 2
        assert cached.delay(1).get() == 2
    finally:
        for signal in (signals.cache_miss, signals.cache_hit):
            signal.disconnect(broken)
            signal.disconnect(working)
    assert len(received) == 2


def test_task_objects_are_not_mutated_at_run_time(app: Celery) -> None:
    @app.task(base=KVTask, shared=False, name="proj.rl", global_rate_limit="1/m", max_retries=0,
              singleton=True)
    def limited(x: int) -> int:
        return x

    assert limited.delay(1).get() == 1  # Celery fills its own caches on first use
    before = dict(type(limited).__dict__), dict(limited.__dict__)
    with pytest.raises(Exception, match="rate limit"):
        limited.delay(2).get()  # eager: a deferral raises its reason
    after = dict(type(limited).__dict__), dict(limited.__dict__)
    assert before == after
    assert limited.max_retries == 0


@pytest.fixture
def plain_app() -> Iterator[Celery]:
    app = new_app(task_always_eager=False)
    install(app, kv=fake_kv())
    yield app


def test_idempotency_key_is_only_for_idempotent_tasks(plain_app: Celery) -> None:
    @plain_app.task(base=SingletonTask, shared=False, name="proj.s")
    def s(x: int) -> None: ...

    with pytest.raises(TypeError, match="idempotency_key"):
        s.apply_async((1,), idempotency_key="k")


def test_signals_are_importable_as_a_module() -> None:
    import celery_kv
    from celery_kv.signals import cache_hit, task_deduplicated

    assert cache_hit is celery_kv.signals.cache_hit
    assert task_deduplicated.name == "task_deduplicated"


def test_enqueue_dedupe_signals_and_task_scoped_keys(plain_app: Celery) -> None:
    @plain_app.task(base=SingletonTask, shared=False, name="proj.a")
    def a(x: int) -> None: ...

    @plain_app.task(base=SingletonTask, shared=False, name="proj.b", on_duplicate="raise")
    def b(x: int) -> None: ...

    seen: list[dict[str, Any]] = []

    def record(sender: Any, **named: Any) -> None:
        seen.append({"sender": sender.name, **named})

    signals.task_deduplicated.connect(record, weak=False)
    try:
        first = a.apply_async((1,))
        assert a.apply_async((1,)).id == first.id
        other = b.apply_async((1,))  # same arguments, another task: its own key
        assert other.id != first.id
        with pytest.raises(Exception, match="already queued or running") as caught:
            b.apply_async((1,))
        assert caught.value.holder == other.id  # type: ignore[attr-defined]
    finally:
        signals.task_deduplicated.disconnect(record)
    assert [(s["sender"], s["holder"], s["feature"], s["stage"]) for s in seen] == [
        ("proj.a", first.id, "singleton", "enqueue"),
        ("proj.b", other.id, "singleton", "enqueue"),
    ]


def test_a_cached_task_waits_for_its_computer_up_to_its_time_limit(app: Celery) -> None:
    @app.task(base=CachedTask, shared=False, name="proj.slow", time_limit=120)
    def slow(x: int) -> int:
        return x

    @app.task(base=CachedTask, shared=False, name="proj.quick")
    def quick(x: int) -> int:
        return x

    def lease(task: Any) -> float:
        return float(task._kv_policy.feature("cache").cache(task.kv, task.kv_namespace)
                     .lock_timeout)

    assert lease(slow) == 120.0
    assert lease(quick) == 10.0


@pytest.mark.cluster
def test_every_feature_runs_on_redis_cluster(cluster_srv: Any) -> None:
    app = new_app()
    kv = install(app, kv=KV.from_url(cluster_srv.url, prefix="ckvcluster"))
    runs: list[int] = []

    @app.task(base=KVTask, shared=False, name="proj.cluster", bind=True, singleton=True,
              idempotent=True, global_rate_limit=["100/s", "1000/m"],
              rate_limit_key="{tenant}", concurrency_limit=2, concurrency_key="{tenant}",
              cache_ttl=30)
    def everything(self: Any, tenant: str, x: int) -> int:
        runs.append(self.fence)
        return x * 2

    for tenant in ("a", "b{x}", "c:*"):
        assert everything.delay(tenant, 4).get() == 8
        assert everything.delay(tenant, 4).get() == 8
    assert len(runs) == 3
    assert describe(kv.store, ("proj.cluster", everything.kv_keys(("a", 4)).singleton)) is None
