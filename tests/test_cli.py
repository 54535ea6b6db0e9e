"""The ``celery kv`` command, invoked as users invoke it: through Celery's own ``celery``
click group (CliRunner, in process) and once as a real ``python -m celery`` subprocess,
against the session's redis-server and a few private ones."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.bin.celery import celery
from click.testing import CliRunner, Result

from celery_kv import KV
from celery_kv.celery.cli import table
from celery_kv.store.acl import acl_rules
from celery_kv.store.admin import decode_identity
from celery_kv.store.admin import name_of as lock_name_of
from celery_kv.store.urls import mask_url
from celery_kv.testing import RedisCluster, RedisServer, free_port, redis_server
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]

APP = '''\
from celery import Celery

from celery_kv import install

app = Celery("{name}", broker={broker!r})
app.conf.kv_prefix = {prefix!r}
{extra}
{install}
'''

TASKS = '''
from celery_kv import IdempotentTask, RateLimitedTask


@app.task(base=RateLimitedTask, name="proj.push", global_rate_limit="5/m", shared=False,
          rate_limit_key="{tenant}")
def push(tenant, invoice):
    return invoice


@app.task(base=RateLimitedTask, name="proj.ping_all", global_rate_limit="10/m", shared=False)
def ping_all():
    return "pong"


@app.task(base=IdempotentTask, name="proj.charge", idempotency_key="{order_id}", shared=False)
def charge(order_id, amount):
    return {"order": order_id, "amount": amount}


@app.task(name="proj.plain", shared=False)
def plain():
    return 1
'''


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str,
             redis_url: str) -> Callable[..., str]:
    """Write an app module and return its name for ``-A`` (a fresh module per call)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(broker: str | None = None, extra: str = "", tasks: bool = False,
             installed: bool = True) -> str:
        name = "cliapp_" + uuid.uuid4().hex[:8]
        source = APP.format(name=name, broker=broker or redis_url, prefix=prefix, extra=extra,
                            install="kv = install(app)" if installed else "")
        (tmp_path / f"{name}.py").write_text(source + (TASKS if tasks else ""))
        return name

    return make


@pytest.fixture
def app_kv(redis_url: str, prefix: str) -> Iterator[KV]:
    """The KV the app module builds (same URL and prefix), for arranging and checking."""
    made = KV.from_url(redis_url, prefix=prefix)
    yield made
    for key in made.client.scan_iter(match=f"{prefix}:*"):
        made.client.unlink(key)


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(celery, list(args), input=input, catch_exceptions=False)


def out_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_clean_error(result: Result, *needles: str) -> None:
    """Exit status 1, one 'Error:' line naming the problem, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") or "\nError: " in result.output, result.output
    for needle in needles:
        assert needle in result.output, result.output


# -- doctor ---------------------------------------------------------------------------------------


def test_doctor_reports_server_mode_policy_persistence_and_keys(
    make_app: Callable[..., str], app_kv: KV
) -> None:
    app_kv.lock("invoice:42", ttl=30).acquire()
    app_kv.rate_limit("5/m").hit("tenant-7")
    app = make_app()

    result = invoke("-A", app, "kv", "doctor")
    assert result.exit_code == 0, result.output
    text = result.output
    for check in ("reachable", "server", "mode", "maxmemory-policy", "persistence",
                  "lua scripts", "keys"):
        assert f"\n{check} " in text
    assert "redis 7" in text or "redis 6" in text
    assert "standalone" in text
    assert "noeviction" in text
    # the session's server runs with --save "" --appendonly no
    assert "WARNING  none: a restart forgets" in text

    report = out_json(invoke("-A", app, "kv", "doctor", "--json"))
    assert report["prefix"] == app_kv.prefix
    assert report["server"]["mode"] == "standalone"
    assert report["keys"]["by_kind"] == {"lock": 2, "rl": 1}  # the lock, its fence, the limit
    assert report["keys"]["without_ttl"] == 0
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["reachable"] == statuses["lua scripts"] == "ok"
    assert statuses["persistence"] == "WARNING"


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl"])
def test_doctor_warns_on_every_policy_that_can_evict(policy: str, prefix: str) -> None:
    extra = ["--maxmemory", "64mb", "--maxmemory-policy", policy, "--appendonly", "yes"]
    with redis_server(extra=extra) as server:
        result = invoke("kv", "doctor", "--url", server.url, "--prefix", prefix, "--json")
        checks = {c["name"]: c for c in out_json(result)["checks"]}
        assert checks["maxmemory-policy"]["status"] == "WARNING"
        assert policy in checks["maxmemory-policy"]["detail"]
        assert "use noeviction" in checks["maxmemory-policy"]["detail"]
        assert checks["persistence"] == {"name": "persistence", "status": "ok",
                                         "detail": "AOF (appendfsync everysec)"}
        strict = invoke("kv", "doctor", "--url", server.url, "--prefix", prefix, "--strict")
        assert strict.exit_code == 2, strict.output


def test_doctor_flags_keys_without_ttl_under_the_prefix(make_app: Callable[..., str],
                                                        app_kv: KV) -> None:
    app_kv.client.set(f"{app_kv.prefix}:stray", "1")  # someone else's INCR without a TTL
    report = out_json(invoke("-A", make_app(), "kv", "doctor", "--json"))
    assert report["keys"]["without_ttl"] == 1
    assert {"name": "keys without TTL", "status": "WARNING"}.items() <= {
        **next(c for c in report["checks"] if c["name"] == "keys without TTL")}.items()


def test_group_level_url_and_prefix(redis_url: str, app_kv: KV) -> None:
    app_kv.lock("x", ttl=30).acquire()
    result = invoke("kv", "--url", redis_url, "--prefix", app_kv.prefix, "locks", "--json")
    assert [r["name"] for r in out_json(result)] == ["'x'"]


# -- expected failures: one line, exit 1, no traceback --------------------------------------------


def test_bad_url(prefix: str) -> None:
    assert_clean_error(invoke("kv", "doctor", "--url", "nonsense", "--prefix", prefix),
                       "bad Redis URL", "nonsense")
    assert_clean_error(invoke("kv", "locks", "--url", "ftp://h/0", "--prefix", prefix),
                       "not supported")


def test_unreachable_redis(prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert_clean_error(invoke("kv", "doctor", "--url", url, "--prefix", prefix),
                       "cannot reach Redis at", url)


def test_bad_prefix(redis_url: str) -> None:
    assert_clean_error(invoke("kv", "purge", "--url", redis_url, "--prefix", "a{b}", "--yes"),
                       "prefix")


def one_line_error(result: Result, *needles: str) -> None:
    """Exactly one line of output, 'Error: ...', and exit status 1."""
    assert_clean_error(result, *needles)
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_an_empty_prefix_is_refused(make_app: Callable[..., str], redis_url: str,
                                    app_kv: KV) -> None:
    app = make_app()
    for args in (["kv", "locks", "--prefix", ""], ["kv", "--prefix", "", "locks"],
                 ["kv", "doctor", "--url", redis_url, "--prefix", ""]):
        one_line_error(invoke("-A", app, *args), "--prefix", "''")


def test_a_nested_json_identity_is_one_line(make_app: Callable[..., str], app_kv: KV) -> None:
    app = make_app(tasks=True)
    for identity in ('["a",["b"]]', '{"a": 1}', "1.5", "true", "null"):
        result = invoke("-A", app, "kv", "limits", "--rate", "5/m", "--key-json", identity)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "IDENTITY" in result.output and "flat list" in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        result = invoke("-A", app, "kv", "limits", "proj.push", identity, "--key-json")
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_poisoned_records_are_one_line_or_flagged(make_app: Callable[..., str],
                                                  app_kv: KV) -> None:
    app = make_app()
    client = app_kv.client
    keys = app_kv.store.keys
    record = keys.key("idem", ("payments", "order-1"))
    client.hset(record, mapping={"s": "c", "o": "task-1", "r": "{not json"})
    client.expire(record, 60)
    one_line_error(invoke("-A", app, "kv", "idempotency", "--namespace", "payments",
                          "order-1"), "order-1", "payments")
    client.delete(record)
    client.set(record, "a string, not a hash", ex=60)
    one_line_error(invoke("-A", app, "kv", "idempotency", "--namespace", "payments",
                          "order-1"), "WRONGTYPE")

    bad_fence = keys.key("lock", "bad-fence")
    client.hset(bad_fence, mapping={"owner": "task-9", "fence": "garbage"})
    client.expire(bad_fence, 60)
    no_owner = keys.key("lock", "no-owner")
    client.hset(no_owner, mapping={"fence": "3"})
    client.expire(no_owner, 60)
    client.set(keys.key("lock", "a-string"), "x", ex=60)
    assert app_kv.lock("good", ttl=30).acquire()
    rows = {r["name"]: r for r in out_json(invoke("-A", app, "kv", "locks", "--json"))}
    assert rows["'good'"]["state"] == "queued/held"
    assert rows["'bad-fence'"]["state"].startswith("malformed: fence 'garbage'")
    assert rows["'a-string'"]["state"].startswith("malformed: WRONGTYPE")
    assert "'no-owner'" not in rows  # no owner: nobody holds it
    text = invoke("-A", app, "kv", "locks")
    assert text.exit_code == 0 and "malformed" in text.output
    released = out_json(invoke("-A", app, "kv", "unlock", "bad-fence", "--json"))
    assert released["released"] is True and released["owner"] == "task-9"
    assert not client.exists(bad_fence)


def test_an_unexpected_error_is_one_line(make_app: Callable[..., str], app_kv: KV,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_kv.celery.cli import locks as locks_cmd

    def broken(store: Any) -> Any:
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(locks_cmd, "held_locks", broken)
    one_line_error(invoke("-A", make_app(), "kv", "locks"), "unexpected RuntimeError",
                   "something broke")


@pytest.fixture
def guarded_server() -> Iterator[RedisServer]:
    """A server that wants a password (set after start: start_server probes with a bare PING),
    with a user that may only PING."""
    with redis_server() as server:
        with redis.Redis(port=server.port) as admin:
            admin.acl_setuser("pingonly", enabled=True, passwords=["+pw"], commands=["+ping"])
            admin.config_set("requirepass", "s3cret")
        yield server


def test_refused_auth_hides_the_password(guarded_server: RedisServer, prefix: str) -> None:
    port = guarded_server.port
    for url in (f"redis://127.0.0.1:{port}/0", f"redis://:wrong-pw@127.0.0.1:{port}/0",
                f"redis://nobody:wrong-pw@127.0.0.1:{port}/0"):
        result = invoke("kv", "doctor", "--url", url, "--prefix", prefix)
        assert_clean_error(result, "refused authentication")
        assert "wrong-pw" not in result.output
    ok = invoke("kv", "doctor", "--url", f"redis://:s3cret@127.0.0.1:{port}/0", "--prefix",
                prefix)
    assert ok.exit_code == 0, ok.output
    assert "s3cret" not in ok.output and ":***@" in ok.output


def test_acl_denial_is_explained(guarded_server: RedisServer, prefix: str) -> None:
    url = f"redis://pingonly:pw@127.0.0.1:{guarded_server.port}/0"
    report = invoke("kv", "doctor", "--url", url, "--prefix", prefix, "--json")
    assert report.exit_code == 1, report.output
    checks = {c["name"]: c for c in json.loads(report.stdout)["checks"]}
    assert checks["server"]["status"] == checks["lua scripts"]["status"] == "ERROR"
    assert "INFO denied" in checks["server"]["detail"]
    assert "EVALSHA denied" in checks["lua scripts"]["detail"]
    assert json.loads(report.stdout)["acl"]["rules"] == acl_rules(prefix)
    assert_clean_error(invoke("kv", "limits", "--url", url, "--prefix", prefix, "--rate",
                              "5/m", "t"), "denied a command", acl_rules(prefix))


def test_app_without_a_redis_url_says_what_to_set(make_app: Callable[..., str]) -> None:
    app = make_app(broker="amqp://guest@127.0.0.1:5672//", installed=False)
    assert_clean_error(invoke("-A", app, "kv", "locks"), "kv_redis_url", "--url")


# -- locks and unlock -----------------------------------------------------------------------------


def test_locks_lists_owner_task_id_ttl_and_fence(make_app: Callable[..., str], app_kv: KV) -> None:
    plain = app_kv.lock("invoice:42", ttl=30)
    singleton = app_kv.lock(("proj.rebuild", "acme"), ttl=20, token="task-123#run:abc")
    assert plain.acquire() and singleton.acquire()
    app = make_app()

    rows = {r["name"]: r for r in out_json(invoke("-A", app, "kv", "locks", "--json"))}
    assert set(rows) == {"'invoice:42'", "('proj.rebuild', 'acme')"}
    run = rows["('proj.rebuild', 'acme')"]
    assert run["task_id"] == "task-123" and run["owner"] == "task-123#run:abc"
    assert run["state"] == "running" and run["fence"] == singleton.fence
    assert 0 < run["ttl"] <= 20
    assert rows["'invoice:42'"]["owner"] == plain.token
    assert rows["'invoice:42'"]["key"] == plain.key

    text = invoke("-A", app, "kv", "locks").output
    assert "OWNER TASK ID" in text and "task-123" in text and str(plain.fence) in text


def test_locks_when_none_are_held(make_app: Callable[..., str], app_kv: KV) -> None:
    result = invoke("-A", make_app(), "kv", "locks")
    assert result.exit_code == 0 and "no locks held" in result.output
    assert out_json(invoke("-A", make_app(), "kv", "locks", "--json")) == []


@pytest.mark.parametrize("by", ["name", "redis key"])
def test_unlock_breaks_the_lock_and_keeps_the_fence_rising(
    by: str, make_app: Callable[..., str], app_kv: KV
) -> None:
    held = app_kv.lock("invoice:{42}", ttl=30)
    assert held.acquire()
    old_fence = held.fence
    assert old_fence is not None
    arg = "invoice:{42}" if by == "name" else held.key

    result = invoke("-A", make_app(), "kv", "unlock", arg, "--json")
    assert out_json(result) == {"key": held.key, "released": True, "owner": held.token,
                                "fence": old_fence}
    assert not held.owned()
    nxt = app_kv.lock("invoice:{42}", ttl=30)
    assert nxt.acquire() and nxt.fence is not None and nxt.fence > old_fence


def test_unlock_unknown_key(make_app: Callable[..., str], app_kv: KV) -> None:
    assert_clean_error(invoke("-A", make_app(), "kv", "unlock", "no-such-lock"),
                       "no lock 'no-such-lock' is held")


# -- limits ---------------------------------------------------------------------------------------


def test_limits_of_a_limit_built_in_code(make_app: Callable[..., str], app_kv: KV) -> None:
    limiter = app_kv.rate_limit("5/m", name="partner")  # slow refill: the state holds still
    for _ in range(3):
        assert limiter.hit("tenant-7")
    app = make_app()

    row, = out_json(invoke("-A", app, "kv", "limits", "--rate", "5/m", "--name", "partner",
                           "tenant-7", "--json"))
    assert row["limit"] == "partner" and row["identity"] == "tenant-7"
    assert row["exists"] is True and row["allowed_now"] is True
    assert row["capacity"] == 5 and row["remaining"] == 2
    assert limiter.peek("tenant-7").remaining == 2  # looking charged nothing

    text = invoke("-A", app, "kv", "limits", "--rate", "5/m", "--name", "partner",
                  "tenant-8").output
    assert "5/5" in text and "(absent)" in text

    ints = app_kv.rate_limit("5/m", name="by-int")
    ints.hit(7)
    row, = out_json(invoke("-A", app, "kv", "limits", "--rate", "5/m", "--name", "by-int",
                           "--key-json", "7", "--json"))
    assert row["remaining"] == 4 and row["exists"] is True


def test_limits_rejects_bad_options(make_app: Callable[..., str], app_kv: KV) -> None:
    app = make_app()
    bad = invoke("-A", app, "kv", "limits", "--rate", "5/s", "--algorithm", "leaky", "t")
    assert bad.exit_code == 2 and "leaky" in bad.output and "Traceback" not in bad.output
    bad = invoke("-A", app, "kv", "limits", "--rate", "-5/s", "t")
    assert bad.exit_code == 2 and "-5/s" in bad.output
    assert_clean_error(invoke("-A", app, "kv", "limits", "no.such.task", "t"),
                       "no task named 'no.such.task'")


def test_limits_of_a_task_per_identity_and_task_wide(make_app: Callable[..., str],
                                                     app_kv: KV) -> None:
    name = make_app(tasks=True)
    module = importlib.import_module(name)
    for invoice in ("inv-1", "inv-2"):
        assert module.push.apply(("acme", invoice)).get() == invoice  # charges the limit
    module.ping_all.apply().get()

    row, = out_json(invoke("-A", name, "kv", "limits", "proj.push", "acme", "--json"))
    assert row["limit"] == "per-key" and row["rate"] == "5/m" and row["algorithm"] == "gcra"
    assert row["remaining"] == 3 and row["capacity"] == 5 and row["exists"] is True
    row, = out_json(invoke("-A", name, "kv", "limits", "proj.push", "globex", "--json"))
    assert row["remaining"] == 5 and row["exists"] is False
    row, = out_json(invoke("-A", name, "kv", "limits", "proj.ping_all", "--json"))
    assert row["limit"] == "global" and row["remaining"] == 9

    text = invoke("-A", name, "kv", "limits", "proj.push", "acme").output
    assert "per-key" in text and "3/5" in text and "'acme'" in text


def test_limits_of_a_task_explains_a_wrong_argument_form(make_app: Callable[..., str],
                                                          app_kv: KV) -> None:
    name = make_app(tasks=True)
    missing = invoke("-A", name, "kv", "limits", "proj.push")
    assert missing.exit_code == 2 and "rate_limit_key='{tenant}'" in missing.output
    extra = invoke("-A", name, "kv", "limits", "proj.ping_all", "acme")
    assert extra.exit_code == 2 and "give no IDENTITY" in extra.output
    assert_clean_error(invoke("-A", name, "kv", "limits", "proj.plain"),
                       "task 'proj.plain' has no global_rate_limit")
    assert_clean_error(invoke("-A", name, "kv", "limits", "proj.nope", "x"),
                       "no task named 'proj.nope'", "proj.push")


# -- idempotency ----------------------------------------------------------------------------------


def test_idempotency_record_in_progress_then_completed(make_app: Callable[..., str],
                                                       app_kv: KV) -> None:
    idem = app_kv.idempotency("payments", lease=30)
    assert idem.begin("order-42", "task-abc", "fp1").ours
    app = make_app()

    state = out_json(invoke("-A", app, "kv", "idempotency", "--namespace", "payments",
                            "order-42", "--json"))
    assert state["status"] == "in_progress" and state["owner"] == "task-abc"
    assert 0 < state["lease_left"] <= 30

    assert idem.complete("order-42", "task-abc", {"charge": "ch_1"})
    state = out_json(invoke("-A", app, "kv", "idempotency", "--namespace", "payments",
                            "order-42", "--json"))
    assert state["status"] == "completed" and state["result"] == {"charge": "ch_1"}
    text = invoke("-A", app, "kv", "idempotency", "--namespace", "payments", "order-42").output
    assert "completed" in text and '"ch_1"' in text


def test_idempotency_record_of_a_task(make_app: Callable[..., str], app_kv: KV) -> None:
    name = make_app(tasks=True)
    module = importlib.import_module(name)
    result = module.charge.apply(("order-42", 10))
    assert result.get() == {"order": "order-42", "amount": 10}

    state = out_json(invoke("-A", name, "kv", "idempotency", "proj.charge", "order-42",
                            "--json"))
    assert state["status"] == "completed" and state["namespace"] == "proj.charge"
    assert state["result"] == {"order": "order-42", "amount": 10}
    assert state["task_id"] == result.id and state["owner"].startswith(result.id)
    assert_clean_error(invoke("-A", name, "kv", "idempotency", "proj.charge", "order-43"),
                       "no idempotency record for key 'order-43'")
    assert_clean_error(invoke("-A", name, "kv", "idempotency", "proj.plain", "k"),
                       "task 'proj.plain' has no idempotency")
    usage = invoke("-A", name, "kv", "idempotency", "proj.charge")
    assert usage.exit_code == 2 and "give TASK and KEY" in usage.output


def test_idempotency_unknown_then_forgotten(make_app: Callable[..., str], app_kv: KV) -> None:
    """A run whose lease lapsed shows as 'unknown'; --forget clears it after a look."""
    app = make_app()
    idem = app_kv.idempotency("payments", lease=0.2)
    idem.begin("order-7", "killed-run")
    wait_for(lambda: idem.state("order-7").status == "unknown", 5, "the lease to lapse")
    state = out_json(invoke("-A", app, "kv", "idempotency", "--namespace", "payments",
                            "order-7", "--json"))
    assert state["status"] == "unknown" and state["owner"] == "killed-run"
    text = invoke("-A", app, "kv", "idempotency", "--namespace", "payments", "order-7",
                  "--forget").output
    assert "unknown" in text and "forgot the record" in text
    assert idem.state("order-7").status == "absent"


def test_idempotency_unknown_key(make_app: Callable[..., str], app_kv: KV) -> None:
    assert_clean_error(
        invoke("-A", make_app(), "kv", "idempotency", "--namespace", "payments", "nope"),
        "no idempotency record for key 'nope'",
    )


# -- purge ----------------------------------------------------------------------------------------


def test_purge_removes_only_the_prefix_by_scan_and_unlink(prefix: str) -> None:
    with redis_server() as server:
        mine = KV.from_url(server.url, prefix=prefix)
        other = KV.from_url(server.url, prefix=prefix + "x")  # shares the first characters
        mine.lock("a", ttl=60).acquire()
        mine.rate_limit("5/m").hit("t")  # 12 s of state
        for i in range(1200):  # more than one SCAN batch
            mine.client.set(f"{prefix}:cache:{{n}}:{i}", "1", ex=60)
        other.lock("a", ttl=60).acquire()
        mine.client.set("celery", "broker data")  # the broker's keys in the same database
        mine.client.set(prefix, "a key named like the prefix")
        before = set(mine.client.scan_iter(match="*"))
        mine.client.config_resetstat()

        declined = invoke("kv", "purge", "--url", server.url, "--prefix", prefix, input="n\n")
        assert declined.exit_code == 1 and "Aborted" in declined.output
        assert set(mine.client.scan_iter(match="*")) == before

        done = invoke("kv", "purge", "--url", server.url, "--prefix", prefix, "--json",
                      input="y\n")
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout) == {"prefix": prefix, "removed": 1203}
        left = {k.decode() for k in mine.client.scan_iter(match="*")}
        assert left == {"celery", prefix, f"{prefix}x:lock:{{a}}", f"{prefix}x:lock:{{a}}:fence"}
        stats = mine.client.info("commandstats")
        assert "cmdstat_keys" not in stats and "cmdstat_flushdb" not in stats
        assert stats["cmdstat_unlink"]["calls"] == 1203
        assert stats["cmdstat_scan"]["calls"] >= 2

        again = invoke("kv", "purge", "--url", server.url, "--prefix", prefix, "--yes")
        assert again.exit_code == 0 and "removed 0 key(s)" in again.output


@pytest.mark.cluster
def test_cluster_doctor_locks_and_purge_cover_every_node(cluster_srv: RedisCluster,
                                                         prefix: str) -> None:
    kv = KV.from_url(cluster_srv.url, prefix=prefix)
    names = [f"lock-{i}" for i in range(30)]  # spread over the three nodes' slots
    for name in names:
        assert kv.lock(name, ttl=30).acquire()
    args = ["--url", cluster_srv.url, "--prefix", prefix]

    report = out_json(invoke("kv", "doctor", *args, "--json"))
    assert report["server"]["mode"] == "cluster (3 primaries)"
    assert report["keys"]["by_kind"] == {"lock": 60}  # the locks and their fence counters
    policies = [c for c in report["checks"] if c["name"].startswith("maxmemory-policy")]
    assert len(policies) == 3 and {c["status"] for c in policies} == {"ok"}

    held = out_json(invoke("kv", "locks", *args, "--json"))
    assert sorted(r["name"] for r in held) == sorted(repr(n) for n in names)
    assert out_json(invoke("kv", "unlock", "lock-7", *args, "--json"))["released"] is True

    done = out_json(invoke("kv", "purge", *args, "--yes", "--json"))
    assert done == {"prefix": prefix, "removed": 59}
    assert out_json(invoke("kv", "doctor", *args, "--json"))["keys"]["total"] == 0


# -- a real subprocess, as an operator runs it ----------------------------------------------------


def test_real_celery_subprocess(make_app: Callable[..., str], tmp_path: Path, app_kv: KV) -> None:
    app_kv.lock("invoice:42", ttl=30).acquire()
    app = make_app()
    env_path = f"{tmp_path}:{ROOT}"
    run = subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, "kv", "doctor"],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path},
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "reachable" in run.stdout and "lock 2" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, "kv", "unlock", "missing"],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path},
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error: no lock 'missing'") and "Traceback" not in bad.stderr
    for args in (["limits", "--rate", "5/m", "--key-json", '["a",["b"]]'],
                 ["locks", "--prefix", ""]):
        bad = subprocess.run(
            [sys.executable, "-m", "celery", "-A", app, "kv", *args],
            cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path},
            capture_output=True, text=True, timeout=60,
        )
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith("Error: ")


# -- helpers --------------------------------------------------------------------------------------


def test_mask_url() -> None:
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("redis://pw@h:6379/0") == "redis://***@h:6379/0"
    assert mask_url("redis://user:pw@h:6379/0") == "redis://user:***@h:6379/0"
    assert mask_url("rediss://h:6379/0") == "rediss://h:6379/0"
    assert mask_url("redis+sentinel://u:p@a:1,b:2/mymaster") == \
        "redis+sentinel://u:***@a:1,b:2/mymaster"


@pytest.mark.parametrize("name", ["invoice:42", "", "ünï{c}ode:*\n", 7, b"\x00raw",
                                  ("proj.task", "acme"), ("a:b", 1), ("",), ("", "")])
def test_lock_names_are_shown_as_written(name: Any) -> None:
    from celery_kv.store.keys import KeySpace

    key = KeySpace("p").key("lock", name)
    assert lock_name_of(key) == repr(name)


def test_long_lock_names_show_as_hashed() -> None:
    from celery_kv.store.keys import KeySpace

    assert lock_name_of(KeySpace("p").key("lock", "x" * 10_000)).startswith("<hashed ")
    assert decode_identity("%ZZ") == "'%ZZ'"


def test_table_aligns_columns() -> None:
    assert table(["A", "BB"], [("xyz", 1), ("", None)]) == textwrap.dedent("""\
        A    BB
        ---  --
        xyz  1
        """)
