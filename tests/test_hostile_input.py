"""Hostile input (issue 9): colliding keys (F6), type markers in values (F7), unbounded TTLs
(F8) and attribute access in templates (F10), tried on fakeredis, a real redis-server, and
real Celery tasks run eagerly against that server.
"""

from __future__ import annotations

import inspect
import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from celery import Celery

from celery_kv import KV, CachedTask, IdempotentTask, KVError, KVTask, SingletonTask, install
from celery_kv.celery.install import installed
from celery_kv.celery.keys import Call, KeySpec, encode_value, short_key
from celery_kv.store import codec
from celery_kv.testing import RedisServer

from .conftest import keys_under

POISON: list[Any] = [
    {"__type__": "bytes", "__value__": "hello"},
    {"__type__": "uuid", "__value__": {"bad": 1}},
    {"__type__~": "x", "__type__": "nope", "list": [{"__type__": "base64", "__value__": "!"}]},
]
HUGE = 1e17  # past what Redis takes as milliseconds: a raw ResponseError before the fix


@pytest.fixture(params=["fakeredis", "redis"])
def kv(request: pytest.FixtureRequest) -> KV:
    prefix = "h" + uuid.uuid4().hex[:10]
    if request.param == "fakeredis":
        return KV(client=fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix=prefix)
    server: RedisServer = request.getfixturevalue("redis_srv")
    return KV.from_url(server.url, prefix=prefix)


# -- F7: values shaped like kombu type markers --------------------------------------------------


@pytest.mark.parametrize("value", POISON)
def test_cache_values_with_markers_come_back_equal(kv: KV, value: Any) -> None:
    cache = kv.cache("reports")
    cache.set("k", value)
    assert cache.get("k") == value
    assert cache.get_or_set("other", lambda: value) == value
    assert cache.get_or_set("other", lambda: pytest.fail("recomputed")) == value


@pytest.mark.parametrize("value", POISON)
def test_idempotency_results_with_markers_replay_equal(kv: KV, value: Any) -> None:
    idem = kv.idempotency("payments")
    runs: list[int] = []

    def charge() -> Any:
        runs.append(1)
        return value

    assert idem.run("order-1", charge) == value
    assert idem.run("order-1", charge) == value
    assert idem.state("order-1").result == value
    assert runs == [1]


@pytest.mark.parametrize("value", POISON)
def test_sessions_with_markers_read_back_equal(kv: KV, value: Any) -> None:
    sessions = kv.sessions("web")
    sid = sessions.create({"payload": value})
    assert sessions.get(sid) == {"payload": value}
    assert sessions.save(sid, {"again": [value]})
    assert sessions.get(sid) == {"again": [value]}


def test_a_malformed_marker_already_stored_never_raises_on_read(kv: KV) -> None:
    """Records written before the fix (or by hand) are read as plain data."""
    raw = '{"__type__": "uuid", "__value__": {"bad": 1}}'
    sessions = kv.sessions("web")
    sid = sessions.create({})
    kv.store.client.hset(kv.store.keys.key("sess", ("web", sid.split(".")[0])), "d", raw)
    assert sessions.get(sid) == {"__type__": "uuid", "__value__": {"bad": 1}}
    assert sessions.get(sid) is not None  # every read, not only the first

    idem = kv.idempotency("payments")
    assert idem.begin("poisoned", "owner-1").status == "acquired"
    assert idem.complete_raw("poisoned", "owner-1", raw)
    assert idem.run("poisoned", lambda: pytest.fail("ran again")) == codec.loads(raw)
    assert idem.state("poisoned").result == {"__type__": "uuid", "__value__": {"bad": 1}}


# -- F8: TTLs are bounded, checked before Redis, nothing left behind ---------------------------


def _raises_naming(*words: str) -> Any:
    return pytest.raises(ValueError, match=".*".join(words))


def test_cache_ttl_is_bounded(kv: KV) -> None:
    with _raises_naming("cache 'reports'", "ttl", "1e\\+17", "at most"):
        kv.cache("reports", ttl=HUGE)
    cache = kv.cache("reports")
    computed: list[int] = []
    with _raises_naming("cache 'reports'", "'k1'", "ttl 1e\\+17"):
        cache.set("k1", 1, ttl=HUGE)
    with _raises_naming("cache 'reports'", "'k2'", "ttl 1e\\+17"):
        cache.get_or_set("k2", lambda: computed.append(1), ttl=HUGE)
    assert computed == [] and keys_under(kv) == []
    cache.set("k1", 1, ttl=1e9)  # the bound itself is accepted, and Redis takes it
    assert cache.get("k1") == 1


def test_idempotency_ttl_and_lease_are_bounded(kv: KV) -> None:
    with _raises_naming("idempotency 'payments'", "ttl 1e\\+17"):
        kv.idempotency("payments", ttl=HUGE)
    with _raises_naming("idempotency 'payments'", "lease 1e\\+17"):
        kv.idempotency("payments", lease=HUGE)
    idem = kv.idempotency("payments")
    with _raises_naming("idempotency 'payments'", "'order-1'", "lease 1e\\+17"):
        idem.begin("order-1", "owner", lease=HUGE)
    with _raises_naming("idempotency 'payments'", "'order-1'", "lease 1e\\+17"):
        idem.renew("order-1", "owner", lease=HUGE)
    assert keys_under(kv) == []
    longest = kv.idempotency("payments", ttl=1e9, lease=1e9)
    assert longest.run("order-2", lambda: 5) == 5
    assert longest.state("order-2").ttl_left is not None


def test_session_ttl_and_lifetime_are_bounded(kv: KV) -> None:
    with _raises_naming("sessions 'web'", "ttl 1e\\+17"):
        kv.sessions("web", ttl=HUGE)
    with _raises_naming("sessions 'web'", "max_lifetime 1e\\+17"):
        kv.sessions("web", max_lifetime=HUGE)
    assert keys_under(kv) == []
    sid = kv.sessions("web", ttl=1e9, max_lifetime=1e9).create({"u": 1})
    record = kv.store.keys.key("sess", ("web", sid.split(".")[0]))
    assert kv.store.client.pttl(record) > 0


@pytest.mark.parametrize("ttl, lifetime", [(10**17, 0), (1000, 10**17), (0, 0), (-5, 0),
                                           ("nan", 0), ("inf", 0), (1000, -1)])
def test_session_scripts_refuse_a_bad_ttl_before_writing(kv: KV, ttl: Any, lifetime: Any) -> None:
    """The scripts check too: a caller that skips Python leaves no record without a TTL."""
    record = kv.store.keys.key("sess", ("web", "f" * 22))
    scripts: list[tuple[str, list[Any]]] = [
        ("sessions_create", ["h", "{}", ttl, lifetime]),
        ("sessions_save", ["h", "{}", ttl, lifetime]),
        ("sessions_rotate", ["h", "h2", ttl, lifetime]),
        ("sessions_get", ["h", ttl, lifetime]),
    ]
    for name, args in scripts:
        with pytest.raises((KVError, redis.ResponseError), match="out of range"):
            kv.store.run(name, [record], args)
    assert keys_under(kv) == []


def test_other_ttls_are_bounded(kv: KV) -> None:
    from celery_kv.primitives.ratelimit.rate import Rate

    with _raises_naming("lock", "ttl 1e\\+17"):
        kv.lock("x", ttl=HUGE)
    with _raises_naming("ttl 1e\\+17"):
        kv.semaphore("x", limit=2, ttl=HUGE)
    with _raises_naming("cache 'reports'", "lock_timeout 1e\\+17"):
        kv.cache("reports", lock_timeout=HUGE)
    with _raises_naming("rate period"):
        Rate(1, HUGE)
    assert keys_under(kv) == []


# -- F6: keys never collide ---------------------------------------------------------------------


def test_primitive_keys_keep_parts_apart(kv: KV) -> None:
    cache = kv.cache("c")
    cache.set("a:b", "joined")
    cache.set(("a", "b"), "parts")
    cache.set(1, "int")
    cache.set("1", "str")
    assert [cache.get(k) for k in ("a:b", ("a", "b"), 1, "1")] == ["joined", "parts", "int", "str"]


VALUES: list[Any] = [
    "", "a", "A", "1", 1, -1, "-1", "%31", "%2D1", "01", 1.0, 1.5, "a:b", "a%3Ab", "%j1", "%h",
    True, False, None, "null", "%jnull", "eu-west-1", "v1.2_x", "-", "--1", "1-",
    "#x", "##x", "é", "\n", "{", "}", "*", ":", "-", ".", [1], ["1"], [True], {"a": 1},
    {"__type__": "bytes", "__value__": "x"}, "x" * 300, "x" * 301, 2**600, 2**600 + 1,
    "\ud800",
]


def test_value_encoding_is_injective_and_stays_in_its_alphabet() -> None:
    seen: dict[str, Any] = {}
    for value in VALUES:
        encoded = encode_value(value, "test")
        assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                   "0123456789-_.%"), encoded
        assert len(encoded) <= 255
        other = seen.setdefault(encoded, value)
        assert other is value or (other == value and type(other) is type(value)), (value, other)


def _sig(*names: str) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(n, kind) for n in names])


SMALL_VALUES: list[Any] = [
    "".join(chars) for size in range(3) for chars in itertools.product("a1-:%/ é", repeat=size)
] + [0, 1, -1, 11, None, True, False, 1.0, -1.5, [], [1], ["1"], {"a": 1}]


@pytest.mark.parametrize("template", ["{a}:{b}", "{a}/{b}", "{a} {b}", "x{a}:{b}y", "{a}é{b}",
                                      "{a}:-{b}", "{a}-:{b}", "#{a}:{b}"])
def test_rendering_is_injective(template: str) -> None:
    """Every pair from a small universe, shifted across the separator in every way."""
    sig = _sig("a", "b")
    spec = KeySpec("t", "singleton_key", template, sig)
    seen: dict[str, str] = {}
    for values in itertools.product(SMALL_VALUES, repeat=2):
        key = spec.render(Call("t", sig, values, {}))
        # one key, one call (as the worker receives it: JSON)
        assert seen.setdefault(key, json.dumps(values)) == json.dumps(values), (key, values)
    assert len(seen) == len(SMALL_VALUES) ** 2


def test_digests_live_where_no_given_key_reaches() -> None:
    long_key = "k" * 300
    digest = short_key(long_key)
    assert digest.startswith("#blake2b:") and len(digest) <= 255
    assert short_key(str(digest)) != digest  # typed by a user: escaped, not the record
    assert short_key("#blake2b:x") == "##blake2b:x"
    assert short_key(short_key("#x")) == "##x"  # already made keys are kept as they are
    assert short_key("order-1") == "order-1"


# -- the same through real Celery tasks, run eagerly on the real server ------------------------


@pytest.fixture
def app(redis_srv: RedisServer) -> Iterator[Celery]:
    app = Celery("hostile", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.task_always_eager = True
    kv = KV.from_url(redis_srv.url, prefix="h" + uuid.uuid4().hex[:10])
    install(app, kv=kv)
    yield app
    for key in keys_under(kv):
        kv.store.client.delete(key)


_names = itertools.count()


def _task(app: Celery, base: type[Any], body: Callable[..., Any], **options: Any) -> Any:
    return app.task(base=base, shared=False, name=f"hostile.t{next(_names)}", **options)(body)


COLLIDING = [(("acme", "q3:summary"), ("acme:q3", "summary")),
             (("a:b", ""), ("a", "b:")),
             ((1, "x"), ("1", "x")),
             (("acme", "eu/west"), ("acme/eu", "west")),
             ((None, "x"), ("null", "x"))]


def _recorder(runs: list[tuple[Any, Any]]) -> Callable[..., list[Any]]:
    def report(tenant: Any, doc: Any) -> list[Any]:
        runs.append((tenant, doc))
        return [tenant, doc]

    return report


@pytest.mark.parametrize(("first", "second"), COLLIDING)
def test_templated_idempotent_and_cached_tasks_keep_tenants_apart(
    app: Celery, first: tuple[Any, Any], second: tuple[Any, Any]
) -> None:
    for base, option in ((IdempotentTask, "idempotency_key"), (CachedTask, "cache_key")):
        for template in ("{tenant}:{doc}", "{tenant}/{doc}", "{tenant} @ {doc}"):
            runs: list[tuple[Any, Any]] = []
            task = _task(app, base, _recorder(runs), **{option: template})
            assert task.delay(*first).get() == list(first)
            assert task.delay(*second).get() == list(second), (base, template)
            assert task.delay(*first).get() == list(first)  # replayed / cached, not run
            assert runs == [first, second]


@pytest.mark.parametrize(("first", "second"), COLLIDING)
def test_a_templated_singleton_is_not_held_by_another_tenant(
    app: Celery, first: tuple[Any, Any], second: tuple[Any, Any]
) -> None:
    runs: list[tuple[Any, Any]] = []

    def sync(tenant: Any, doc: Any, nested: bool = True) -> None:
        runs.append((tenant, doc))
        if nested:  # the first tenant's lock is held while the second one is sent
            task.apply_async(second, {"nested": False}).get(disable_sync_subtasks=False)

    task = _task(app, SingletonTask, sync, singleton_key="{tenant}:{doc}",
                 on_duplicate="raise", on_locked="raise")
    task.delay(*first).get()
    assert runs == [first, second]


def test_default_keys_keep_joined_and_split_arguments_apart(app: Celery) -> None:
    runs: list[tuple[Any, ...]] = []

    def parts(*args: Any) -> int:
        runs.append(args)
        return len(runs)

    task = _task(app, CachedTask, parts)
    assert [task.delay(*a).get() for a in (("a:b",), ("a", "b"), (1,), ("1",))] == [1, 2, 3, 4]
    assert task.delay("a:b").get() == 1


def test_a_ten_megabyte_argument_is_digested(app: Celery) -> None:
    payload = "x" * 10_000_000
    runs: list[int] = []

    def ingest(tenant: str, payload: str) -> int:
        runs.append(len(payload))
        return len(payload)

    task = _task(app, IdempotentTask, ingest, idempotency_key="{tenant}:{payload}")
    keys = task.kv_keys(("acme", payload))
    assert keys.idempotency is not None and len(keys.idempotency) < 100
    assert keys.idempotency.startswith("acme:%h")
    assert task.delay("acme", payload).get() == 10_000_000
    assert task.delay("acme", payload).get() == 10_000_000  # replayed
    assert task.delay("acme", payload + "y").get() == 10_000_001  # another key
    assert runs == [10_000_000, 10_000_001]
    kv = installed(app).kv
    stored = keys_under(kv)
    assert stored and all(len(key) < 300 for key in stored)
    client: Any = kv.store.client
    assert sum(int(client.memory_usage(key) or 0) for key in stored) < 1_000_000


def test_a_callable_key_is_encoded_like_a_template(app: Celery) -> None:
    runs: list[Any] = []

    def body(x: Any) -> Any:
        runs.append(x)
        return x

    task = _task(app, IdempotentTask, body, idempotency_key=lambda x: x)
    for value in (1, "1", None, "null", [1], "#blake2b:" + "0" * 128, "k" * 300):
        assert task.delay(value).get() == value
    assert len(runs) == 7
    assert task.kv_keys((1,)).idempotency == "1"
    assert task.kv_keys(("1",)).idempotency == "%31"
    assert task.kv_keys(("eu-west-1",)).idempotency == "eu-west-1"  # plain ids stay readable
    assert task.kv_keys(("#blake2b:" + "0" * 128,)).idempotency.startswith("%23blake2b")

    refused = _task(app, IdempotentTask, body, idempotency_key=lambda x: object())
    with pytest.raises(TypeError, match=r"hostile\.t\d+.*idempotency_key.*returned"):
        refused.kv_keys((1,))


@pytest.mark.parametrize("template", ["{tenant}-{doc}", "{tenant}.{doc}", "{tenant}_{doc}",
                                      "{tenant}{doc}", "{tenant}x{doc}", "{tenant}%{doc}"])
def test_templates_whose_fields_could_run_together_are_refused(app: Celery, template: str) -> None:
    """With "-" kept in values, ("a-b", "c") and ("a", "b-c") would meet under "{a}-{b}"."""
    with pytest.raises(ValueError, match=r"rate_limit_key.*\{tenant\} and \{doc\}"):
        _task(app, KVTask, _recorder([]), global_rate_limit="10/s", rate_limit_key=template)


def test_a_non_json_template_value_is_refused_by_name(app: Celery) -> None:
    def sync(tenant: Any) -> None: ...

    task = _task(app, SingletonTask, sync, singleton_key="{tenant}")
    with pytest.raises(TypeError, match=r"hostile\.t\d+.*singleton_key.*tenant=<object"):
        task.kv_keys((object(),))


def test_a_huge_ttl_option_is_refused_at_definition(app: Celery) -> None:
    for base, option in ((CachedTask, "cache_ttl"), (IdempotentTask, "idempotency_ttl"),
                         (IdempotentTask, "idempotency_lease"), (SingletonTask, "lock_ttl"),
                         (SingletonTask, "queued_ttl")):
        with pytest.raises(ValueError, match=rf"{option}=1e\+17.*at most"):
            _task(app, base, _recorder([]), **{option: HUGE})
