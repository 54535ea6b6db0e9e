"""A Redis ACL user confined to ``~<prefix>:*`` by ``acl_rules(prefix)`` runs every feature,
the Celery face and the CLI, and is denied everything that reaches past its prefix
(README: Operating it). Checked on the installed redis-server (Redis 7)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.bin.celery import celery
from click.testing import CliRunner, Result

from celery_kv import KV, CoordinationMisconfigured, KVTask, install
from celery_kv.store.acl import acl_rules
from celery_kv.store.retry import acl_denial
from celery_kv.testing import RedisServer

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass
class AclUser:
    prefix: str
    url: str  # the confined user
    operator_url: str  # the same rules plus +scan
    admin: redis.Redis
    port: int

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture
def acl_user(redis_srv: RedisServer) -> Iterator[AclUser]:
    prefix = "acl" + uuid.uuid4().hex[:8]
    admin = redis.Redis(port=redis_srv.port)
    users = {f"u{prefix}": acl_rules(prefix), f"o{prefix}": acl_rules(prefix, operator=True)}
    for user, rules in users.items():
        admin.execute_command("ACL", "SETUSER", user, "reset", "on", ">pw-" + user,
                              *rules.split())
    port = redis_srv.port
    yield AclUser(prefix, f"redis://u{prefix}:pw-u{prefix}@127.0.0.1:{port}/0",
                  f"redis://o{prefix}:pw-o{prefix}@127.0.0.1:{port}/0", admin, port)
    for user in users:
        admin.execute_command("ACL", "DELUSER", user)
    for key in admin.scan_iter(match=f"{prefix}:*"):
        admin.unlink(key)
    admin.close()


def test_the_rules_are_one_function_of_the_prefix() -> None:
    rules = acl_rules("proj")
    assert rules.startswith("~proj:* ")
    for needed in ("+@read", "+@write", "+@scripting", "+ping", "+time", "-@dangerous",
                   "-@admin", "-function", "-script|flush", "-script|kill", "-scan",
                   "-randomkey", "-dbsize", "+info"):
        assert needed in rules.split()
    assert acl_rules("proj", operator=True) == rules + " +scan"
    with pytest.raises(ValueError, match="prefix"):
        acl_rules("a b")


def test_readme_shows_the_rules() -> None:
    text = README.read_text("utf-8")
    assert acl_rules("proj") in text
    assert "+scan" in text and "6.2" in text


def test_every_feature_runs_under_the_confined_user(acl_user: AclUser) -> None:
    kv = KV.from_url(acl_user.url, prefix=acl_user.prefix)
    assert kv.ping()
    with kv.lock("job", ttl=5, auto_renew=True) as lock:
        assert lock.fence and lock.extend(5) and lock.owned()
    assert kv.lock("job", ttl=5).acquire()
    # the heartbeat renews a short lease for longer than the lease itself
    with kv.lock("beat", ttl=0.3, auto_renew=True) as beating:
        time.sleep(0.9)  # three leases: without renewals the lock would be gone
        assert beating.owned()
    sem = kv.semaphore("api", limit=2, ttl=5)
    assert sem.acquire() and sem.holders() == 1
    sem.release()
    with kv.semaphore("api", limit=2, ttl=0.3, auto_renew=True):
        pass
    for algorithm in ("gcra", "sliding_log", "sliding_window", "fixed_window"):
        limiter = kv.rate_limit("2/m", algorithm=algorithm, name=algorithm)
        assert limiter.hit("t").allowed and limiter.hit("t").allowed
        assert not limiter.hit("t").allowed
        assert limiter.peek("t").remaining == 0
        limiter.reset("t")
        assert limiter.peek("t").remaining == 2
    a = kv.rate_limit("5/m", name="a", scope="api")
    b = kv.rate_limit("5/m", name="b", scope="api")
    assert kv.hit_all([(a, "x"), (b, "y")]).allowed
    cache = kv.cache("c", ttl=5)
    assert cache.get_or_set("k", lambda: [1]) == [1]
    cache.set("none", None)
    assert cache.get("none", default="miss") is None and cache.delete("none")
    cache.clear()
    assert cache.get("k") is None
    idem = kv.idempotency("i", ttl=5, lease=1)
    assert idem.run("order", lambda: {"ok": 1}) == {"ok": 1}
    assert idem.run("order", lambda: {"ok": 2}) == {"ok": 1}
    assert idem.state("order").status == "completed" and idem.forget("order")
    sessions = kv.sessions("s", ttl=5, max_lifetime=60)
    sid = sessions.create({"u": 1})
    assert sessions.get(sid) == {"u": 1} and sessions.save(sid, {"u": 2})
    new = sessions.rotate(sid)
    assert sessions.get(sid) is None and sessions.destroy(new)


def test_a_celery_task_with_every_feature_runs_under_the_confined_user(
    acl_user: AclUser,
) -> None:
    app = Celery("acl_" + acl_user.prefix, broker="memory://", backend="cache+memory://")
    app.conf.kv_redis_url = acl_user.url
    app.conf.kv_prefix = acl_user.prefix
    install(app)
    runs: list[int] = []

    @app.task(base=KVTask, name="acl.everything", shared=False, singleton=True, idempotent=True,
              global_rate_limit="100/m", rate_limit_key="{n}", concurrency_limit=2,
              cache_ttl=60)
    def everything(n: int) -> int:
        runs.append(n)
        return n * 2

    assert everything.apply((21,)).get() == 42
    assert everything.apply((21,)).get() == 42  # replayed (idempotency, cache)
    assert runs == [21]
    keys = {k.decode() for k in acl_user.admin.scan_iter(match=f"{acl_user.prefix}:*")}
    assert keys and all(k.startswith(acl_user.prefix + ":") for k in keys)


DENIED: list[tuple[str, ...]] = [
    ("FLUSHALL",), ("FLUSHDB",), ("SWAPDB", "0", "1"), ("FUNCTION", "FLUSH"),
    ("SCRIPT", "FLUSH"), ("SCRIPT", "KILL"), ("KEYS", "*"), ("SCAN", "0"), ("RANDOMKEY",),
    ("DBSIZE",), ("CONFIG", "SET", "maxmemory", "1"), ("ACL", "LIST"),
    ("SET", "elsewhere", "x"), ("GET", "elsewhere"),
    ("EVAL", "return redis.call('GET', KEYS[1])", "1", "elsewhere"),
    ("EVAL", "return redis.call('FLUSHALL')", "0"),
]


@pytest.mark.parametrize("command", DENIED, ids=lambda c: " ".join(c[:2]))
def test_the_confined_user_is_denied(acl_user: AclUser, command: tuple[str, ...]) -> None:
    acl_user.admin.set("elsewhere", "kept")
    client = acl_user.client()
    with pytest.raises(redis.exceptions.ResponseError) as caught:
        client.execute_command(*command)
    assert acl_denial(caught.value) is not None, caught.value
    assert acl_user.admin.get("elsewhere") == b"kept"


def test_a_denied_command_is_a_misconfiguration_not_an_outage(acl_user: AclUser) -> None:
    outside = KV.from_url(acl_user.url, prefix="other")  # a prefix the ACL does not cover
    started = time.monotonic()
    with pytest.raises(CoordinationMisconfigured, match="ACL") as caught:
        outside.lock("x", ttl=5).acquire()
    assert time.monotonic() - started < 1.0  # not retried
    assert "pw-" not in str(caught.value)


# -- the CLI as the confined user ----------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(celery, list(args), catch_exceptions=False)


def one_error_line(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_cli_under_the_confined_user(acl_user: AclUser) -> None:
    kv = KV.from_url(acl_user.url, prefix=acl_user.prefix)
    assert kv.lock("invoice", ttl=30).acquire()
    kv.rate_limit("5/m", name="partner").hit("t")
    idem = kv.idempotency("pay", lease=30)
    idem.run("order-1", lambda: {"paid": True})
    args = ["--url", acl_user.url, "--prefix", acl_user.prefix]

    doctor = invoke("kv", "doctor", *args, "--json")
    assert doctor.exit_code == 0, doctor.output
    report = json.loads(doctor.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["lua scripts"]["status"] == "ok" and checks["server"]["status"] == "ok"
    assert checks["keys"]["status"] == "info" and "SCAN" in checks["keys"]["detail"]
    assert report["acl"] == {"rules": acl_rules(acl_user.prefix),
                             "operator_rules": acl_rules(acl_user.prefix, operator=True)}
    text = invoke("kv", "doctor", *args).output
    assert acl_rules(acl_user.prefix) in text and "pw-" not in text

    row, = json.loads(invoke("kv", "limits", *args, "--rate", "5/m", "--name", "partner",
                             "t", "--json").stdout)
    assert row["remaining"] == 4
    state = json.loads(invoke("kv", "idempotency", *args, "--namespace", "pay", "order-1",
                              "--json").stdout)
    assert state["result"] == {"paid": True}
    for listing in (["locks"], ["purge", "--yes"]):
        one_error_line(invoke("kv", *listing, *args), "denied SCAN",
                       acl_rules(acl_user.prefix, operator=True))
    assert out_of(invoke("kv", "unlock", "invoice", *args, "--json"))["released"] is True

    operator = ["--url", acl_user.operator_url, "--prefix", acl_user.prefix]
    assert invoke("kv", "locks", *operator, "--json").exit_code == 0
    assert out_of(invoke("kv", "doctor", *operator, "--json"))["keys"]["total"] > 0
    assert out_of(invoke("kv", "purge", *operator, "--yes", "--json"))["removed"] > 0


def out_of(result: Result) -> dict[str, object]:
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data

