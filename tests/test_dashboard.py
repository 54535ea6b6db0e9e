"""The dashboard's JSON API and rules (``celery_kv.dashboard``), served by its real
``wsgiref`` server on a free port, against the session's redis-server; and the
``celery kv dashboard`` command's one-line failures. The page itself, in a browser, is
tests/test_dashboard_browser.py."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.bin.celery import celery
from click.testing import CliRunner, Result

from celery_kv import KV, IdempotentTask, RateLimitedTask, install
from celery_kv.dashboard import Dashboard, serve
from celery_kv.store.metrics import read_counts
from celery_kv.testing import RedisServer, free_port

TOKEN = "s3cret-token"


@contextlib.contextmanager
def served(dashboard: Dashboard) -> Iterator[str]:
    """The dashboard on a free port of 127.0.0.1, in a thread; yields its base URL."""
    server = serve(dashboard, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def call(url: str, body: Any = None, token: str | None = None,
         method: str | None = None) -> tuple[int, Any]:
    """(HTTP status, decoded JSON) of one request."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Unlock-Token"] = token
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def kv(redis_srv: RedisServer, prefix: str) -> Iterator[KV]:
    made = KV.from_url(redis_srv.url, prefix=prefix)
    yield made
    keys = list(made.client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        made.client.unlink(*keys[start:start + 1000])


@pytest.fixture
def app(redis_srv: RedisServer, prefix: str) -> Celery:
    """An app with a per-tenant rate-limited task and an idempotent one (run in process)."""
    made = Celery("dash-" + uuid.uuid4().hex[:6], broker=redis_srv.url, set_as_current=False)
    made.conf.update(kv_redis_url=redis_srv.url, kv_prefix=prefix, task_always_eager=False)

    @made.task(base=RateLimitedTask, name="dash.push", global_rate_limit="2/m",
               rate_limit_key="{tenant}", shared=False, max_retries=0)
    def push(tenant: str) -> str:
        return tenant

    @made.task(base=IdempotentTask, name="dash.charge", idempotency_key="{order}",
               shared=False)
    def charge(order: str) -> dict[str, str]:
        return {"charged": order}

    install(made)
    return made


def _locks(kv: KV, count: int, ttl_ms: int = 60_000) -> list[str]:
    """``count`` held lock records as ``lock_acquire`` writes them (owner, fence, at)."""
    keys = [kv.store.keys.key("lock", f"res-{i:05d}") for i in range(count)]
    pipe = kv.client.pipeline(transaction=False)
    for i, key in enumerate(keys):
        pipe.hset(key, mapping={"owner": f"task-{i}", "fence": i + 1, "at": 0})
        pipe.pexpire(key, ttl_ms)
    pipe.execute()
    return keys


def test_ten_thousand_locks_come_in_pages_with_a_total(kv: KV) -> None:
    keys = _locks(kv, 10_000)
    with served(Dashboard(kv, where="test")) as base:
        status, first = call(f"{base}/api/locks?offset=0&limit=50")
        assert status == 200
        assert first["total"] == 10_000 and len(first["rows"]) == 50
        assert [r["key"] for r in first["rows"]] == sorted(keys)[:50]
        row = first["rows"][0]
        assert row["task_id"] == "task-0" and row["fence"] == 1 and 0 < row["ttl"] <= 60
        status, last = call(f"{base}/api/locks?offset=9990&limit=50")
        assert status == 200 and len(last["rows"]) == 10
        assert [r["key"] for r in last["rows"]] == sorted(keys)[-10:]
        for bad in ("offset=-1", "limit=0", "limit=501", "limit=ten"):
            status, body = call(f"{base}/api/locks?{bad}")
            assert status == 400 and bad.split("=")[0] in body["error"]


def test_a_held_lock_and_semaphore_show_owner_ttl_and_fence(kv: KV) -> None:
    lock = kv.lock("report", ttl=20)
    assert lock.acquire()
    sem = kv.semaphore("gpu", limit=2, ttl=15)
    assert sem.acquire()
    with served(Dashboard(kv, where="test")) as base:
        _, page = call(f"{base}/api/locks")
        (row,) = page["rows"]
        assert row["name"] == "'report'" and row["owner"] == lock.token
        assert row["fence"] == lock.fence and 0 < row["ttl"] <= 20
        (held,) = page["semaphores"]
        assert held["name"] == "'gpu'" and [h["owner"] for h in held["holders"]] == [sem.token]
        assert 0 < held["holders"][0]["ttl"] <= 15
        lock.release()
        sem.release()
        _, page = call(f"{base}/api/locks")
        assert page["total"] == 0 and page["rows"] == [] and page["semaphores"] == []


def test_unlock_is_refused_unless_allowed_and_tokened(kv: KV) -> None:
    (key,) = _locks(kv, 1)
    with served(Dashboard(kv, where="test")) as base:
        status, body = call(f"{base}/api/unlock", {"key": key}, token=TOKEN)
        assert status == 403 and "read-only" in body["error"]
        assert call(f"{base}/api/config")[1]["allow_unlock"] is False
    assert kv.client.exists(key)
    with served(Dashboard(kv, where="test", allow_unlock=True, token=TOKEN)) as base:
        for token in (None, "", "wrong", TOKEN + "x"):
            status, body = call(f"{base}/api/unlock", {"key": key}, token=token)
            assert status == 403 and "token" in body["error"], token
        assert kv.client.exists(key)
        assert call(f"{base}/api/unlock", method="GET")[0] == 405
        status, body = call(f"{base}/api/unlock", {"key": "other:lock:{x}"}, token=TOKEN)
        assert status == 400 and "not a lock key" in body["error"]
        status, body = call(f"{base}/api/unlock", {"key": key}, token=TOKEN)
        assert status == 200 and body == {"key": key, "released": True, "owner": "task-0",
                                          "fence": 1}
        assert not kv.client.exists(key)
        assert call(f"{base}/api/unlock", {"key": key}, token=TOKEN)[0] == 404
    with pytest.raises(ValueError, match="token"):
        Dashboard(kv, where="test", allow_unlock=True)


def test_rate_chart_counts_admitted_and_denied_per_minute(kv: KV, app: Celery) -> None:
    push = app.tasks["dash.push"]
    for _ in range(3):  # a limit of 2/m for tenant acme: two admitted, then denied
        push.apply(("acme",))
    _now, counts = read_counts(kv.store, 30)
    counted = {(c.event, c.value) for c in counts if c.minute == int(_now // 60)
               and c.task == "dash.push" and c.feature == "rate_limit" and c.identity is None}
    with served(Dashboard(kv, app, where="test")) as base:
        status, rates = call(f"{base}/api/rates")
    assert status == 200 and rates["minutes"] == 30
    (series,) = [s for s in rates["tasks"] if s["task"] == "dash.push"]
    assert len(series["admitted"]) == len(series["denied"]) == 30
    expected = dict(counted)
    assert series["admitted"][-1] == expected.get("admitted", 0)
    assert series["denied"][-1] == expected.get("denied", 0)
    assert (sum(series["admitted"]), sum(series["denied"])) == (2, 1), series


def test_limit_state_and_idempotency_lookup(kv: KV, app: Celery) -> None:
    app.tasks["dash.push"].apply(("acme",))
    result = app.tasks["dash.charge"].apply(("order-7",))
    with served(Dashboard(kv, app, where="test")) as base:
        _, config = call(f"{base}/api/config")
        assert config["tasks"]["rate_limit"] == ["dash.push"]
        assert config["tasks"]["idempotency"] == ["dash.charge"]
        status, (state,) = call(f"{base}/api/limit?task=dash.push&identity=acme")
        assert status == 200 and state["identity"] == "acme" and state["exists"]
        assert (state["capacity"], state["remaining"]) == (2, 1)
        _, (fresh,) = call(f"{base}/api/limit?task=dash.push&identity=other")
        assert fresh["remaining"] == 2 and not fresh["exists"]
        status, record = call(f"{base}/api/idempotency?task=dash.charge&key=order-7")
        assert status == 200 and record["status"] == "completed"
        assert record["result"] == {"charged": "order-7"} and record["task_id"] == result.id
        status, body = call(f"{base}/api/idempotency?task=dash.charge&key=order-8")
        assert status == 404 and "no idempotency record for key 'order-8'" in body["error"]
        status, body = call(f"{base}/api/limit?task=dash.nope&identity=x")
        assert status == 404 and "dash.nope" in body["error"]
        assert call(f"{base}/api/idempotency?task=dash.charge")[0] == 400


def test_doctor_findings_and_waiting(kv: KV, app: Celery) -> None:
    kv.client.set(f"{kv.prefix}:stray", "no ttl")
    with served(Dashboard(kv, app, where="test")) as base:
        status, findings = call(f"{base}/api/doctor")
        assert status == 200
        assert {"level": "warning", "message": next(f["message"] for f in findings
                if f["message"].startswith("keys without TTL"))} in findings
        status, waiting = call(f"{base}/api/waiting")
        assert status == 200
        assert waiting == {"deferred": {"total": 0, "entries": []}, "concurrency": [],
                           "bursts": []}


def test_redis_down_is_a_503_without_the_password(prefix: str) -> None:
    url = f"redis://ops:hunter2@127.0.0.1:{free_port()}/0"
    down = KV.from_url(url, prefix=prefix, retry_deadline=0.2)
    with served(Dashboard(down, where="redis://ops:***@host", secrets_=[url])) as base:
        status, body = call(f"{base}/api/locks")
        assert status == 503 and "hunter2" not in body["error"]
        with urllib.request.urlopen(f"{base}/", timeout=5) as page:
            html = page.read().decode()
        assert "hunter2" not in html and "redis://ops:***@host" in html


def test_the_page_inlines_its_config_without_closing_the_script(kv: KV) -> None:
    hostile = "</script><script>alert(1)</script>"
    page = Dashboard(kv, where=hostile).page()
    assert hostile not in page and "\\u003c/script>" in page
    assert "__CONFIG__" not in page


# -- the command -------------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(celery, list(args), catch_exceptions=False)


def one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_command_port_taken_redis_down_and_bad_bind(redis_srv: RedisServer,
                                                    prefix: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    try:
        one_line_error(invoke("kv", "dashboard", "--url", redis_srv.url, "--prefix", prefix,
                              "--port", port), f"cannot listen on 127.0.0.1:{port}", "in use")
    finally:
        taken.close()
    down = f"redis://ops:hunter2@127.0.0.1:{free_port()}/0"
    result = invoke("kv", "dashboard", "--url", down, "--prefix", prefix)
    one_line_error(result, "cannot reach Redis")
    assert "hunter2" not in result.output
    one_line_error(invoke("kv", "dashboard", "--url", redis_srv.url, "--prefix", prefix,
                          "--bind", "256.1.1.1", "--port", "0"), "cannot listen on 256.1.1.1")
    usage = invoke("kv", "dashboard", "--port", "70000")
    assert usage.exit_code == 2 and "70000" in usage.output

