"""Every example under ``examples/`` run as a user runs it (``python -m examples.<name>``),
against the session's redis-server, and checked against what its tasks recorded in Redis.

The Celery examples start their own ``celery worker`` (prefork, -c 2) and stop it; each is
its own app with its own prefix and queue, so one shared worker could not serve them all.
They run side by side (most of a run is waiting) in a database of their own (7); every
check is on what the task bodies recorded with Redis server time, so a slow machine makes
them slower, not wrong.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_kv import KV
from celery_kv.celery.config import Settings
from celery_kv.testing import RedisServer
from examples.billing import journal

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.worker


@contextlib.contextmanager
def database(server: RedisServer, db: int) -> Iterator[str]:
    """A database of the session's server that only this module uses, emptied around it."""
    url = f"redis://127.0.0.1:{server.port}/{db}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
        try:
            yield url
        finally:
            client.flushdb()


@pytest.fixture(scope="module")
def url(redis_srv: RedisServer) -> Iterator[str]:
    with database(redis_srv, 7) as url:
        yield url


def env_for(url: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT)}


def workers_started_by(pid: int) -> list[int]:
    """Live processes (worker and pool children) that example ``pid`` started."""
    marker = f"CELERY_KV_PARENT_PID={pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


class Example:
    """``python -m <module>``, started at once so that the examples run side by side."""

    def __init__(self, module: str, url: str) -> None:
        self.module = module
        self.proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT,
                                     env=env_for(url), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out: str | None = None

    def output(self) -> str:
        """Its output, once it succeeded and left no process behind."""
        if self.out is None:
            out, err = self.proc.communicate(timeout=90)
            assert self.proc.returncode == 0, out + err
            wait_until(lambda: not workers_started_by(self.proc.pid), 10,
                       f"{self.module}'s worker to stop")
            self.out = out
        return self.out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # its worker's watchdog sees the parent go and stops it
            self.proc.communicate()


MODULES = ["singleton", "idempotency", "rate_limit", "concurrency", "cache", "primitives",
           "django_settings", "web_producer"]


@pytest.fixture(scope="module")
def examples(url: str) -> Iterator[dict[str, Example]]:
    """Every example, started together: most of each run is waiting, so they overlap well."""
    started = {name: Example(f"examples.{name}", url) for name in MODULES}
    try:
        yield started
    finally:
        for example in started.values():
            example.kill()


def kv_of(url: str, prefix: str) -> KV:
    return KV.from_url(url, prefix=prefix)


def test_singleton(examples: dict[str, Example], url: str) -> None:
    out = examples["singleton"].output()
    assert "5 triggers -> 1 run" in out
    runs = sorted(journal.read(kv_of(url, "example-singleton"), "rebuild"),
                  key=lambda r: r["start"])
    assert len(runs) == 2 and "runs recorded by the worker: 2" in out
    assert runs[0]["end"] <= runs[1]["start"]  # never two at once
    assert runs[0]["fence"] < runs[1]["fence"]  # a later holder always has a higher fence
    assert f"fence {runs[0]['fence']} -> {runs[1]['fence']}" in out


def test_idempotency(examples: dict[str, Example], url: str) -> None:
    out = examples["idempotency"].output()
    assert "2 submits -> 1 task id" in out
    assert "-> the same receipt" in out
    assert "same order, other amount -> refused" in out and "'42'" in out
    charges = journal.read(kv_of(url, "example-idempotency"), "charge")
    assert [c["order_id"] for c in charges] == [42]  # 2 submits + a webhook: charged once
    assert "2 submits + 1 webhook -> 1 charge" in out


def busiest_second(times: list[float]) -> int:
    return max(sum(1 for u in times if t <= u < t + 1.0 - 1e-6) for t in times)


def test_rate_limit_global_and_per_tenant(examples: dict[str, Example], url: str) -> None:
    out = examples["rate_limit"].output()
    kv = kv_of(url, "example-rate_limit")
    for kind in ("sms", "crm-acme", "crm-globex"):
        times = [e["at"] for e in journal.read(kv, kind)]  # decision times, Redis clock
        assert len(times) == 6, kind
        assert busiest_second(times) <= 3, kind  # sliding log: never more than 3 in 1 s
        assert max(times) - min(times) >= 1.0 - 1e-6, kind  # so the 4th waited a window
    lines = [ln for ln in out.splitlines() if "runs over" in ln]
    assert len(lines) == 3 and all("at most 3 in any 1 s window" in ln for ln in lines)


def most_at_once(runs: list[dict[str, Any]]) -> int:
    return max(sum(1 for r in runs if r["start"] <= t < r["end"]) for t in
               (r["start"] for r in runs))


def test_concurrency(examples: dict[str, Example], url: str) -> None:
    out = examples["concurrency"].output()
    runs = journal.read(kv_of(url, "example-concurrency"), "export")
    for account in ("acme", "globex"):
        mine = [r for r in runs if r["account"] == account]
        assert len(mine) == 3
        assert most_at_once(mine) == 1, mine  # the limit, across both pool processes
        assert f"{account}: 3 exports, at most 1 running at once (limit 1)" in out
    assert most_at_once(runs) <= 2


def test_cache(examples: dict[str, Example], url: str) -> None:
    out = examples["cache"].output()
    assert "4 concurrent lookups of a cold key -> 1 computation, 1 distinct answer" in out
    assert "3 more lookups -> still 1 computation (hits)" in out
    assert "after clear(): 1 lookup -> 2 computations in all" in out
    assert journal.count(kv_of(url, "example-cache"), "price-team") == 2


def test_primitives(examples: dict[str, Example], url: str) -> None:
    out = examples["primitives"].output()
    fences = re.search(r"A \(fence (\d+)\) stalled .* B took over \(fence (\d+)\); "
                       r"A's late write refused", out)
    assert fences and int(fences[1]) < int(fences[2])
    assert "semaphore(limit=2): 3 acquire -> 2 granted, 2 holders" in out
    assert ("cache: 4 concurrent get_or_set -> 1 computation, 1 distinct value; "
            "cached None is a hit: True") in out
    assert re.search(r"idempotency: 4 concurrent requests -> 1 charge \(\d told 409", out)
    assert "same key, other amount: refused (422)" in out
    assert ("after rotate the old id gives None, the new one {'user': 'alice', 'cart': [7]}; "
            "destroyed: True") in out
    kv = kv_of(url, "example-primitives")
    assert not list(kv.client.scan_iter(match=kv.store.keys.pattern("sess")))
    assert not list(kv.client.scan_iter(match=kv.store.keys.pattern("sem")))


def test_django_style_settings_reach_celery_kv() -> None:
    """``CELERY_KV_X`` in a settings module, read with namespace="CELERY", is ``kv_x``."""
    from examples.django_settings import settings as module

    app = Celery("settings-only")
    app.config_from_object("examples.django_settings.settings", namespace="CELERY")
    settings = Settings.from_conf(app.conf)
    assert settings.prefix == "example-django" and settings.lock_ttl == 20.0
    assert settings.idempotency_ttl == 3600.0 and settings.on_unavailable["cache"] == "run"
    assert settings.redis_url == module.REDIS_URL
    app.conf.kv_prefix = "from-code"  # a setting made in code wins over the module's
    assert Settings.from_conf(app.conf).prefix == "from-code"
    assert app.conf.task_default_queue == "example-django"


def test_django_settings_example(examples: dict[str, Example], url: str) -> None:
    out = examples["django_settings"].output()
    assert "producer: prefix 'example-django', queue 'example-django'" in out
    worker_side = re.search(r"worker: prefix 'example-django', running lease ([\d.]+) s left",
                            out)
    assert worker_side and 10.0 < float(worker_side[1]) <= 20.0  # 20 s, not the 30 s default
    assert "2 triggers -> 1 run" in out
    client = redis.Redis.from_url(url)
    assert list(client.scan_iter(match="example-django:*"))
    assert not list(client.scan_iter(match="kv:*"))  # nothing under the default prefix


def test_web_producer(examples: dict[str, Example], url: str) -> None:
    out = examples["web_producer"].output()
    assert "POST /orders/42/charge without a session -> 401" in out
    assert "POST /orders/42/charge twice -> [202, 202], 1 task id" in out
    assert "POST /orders/43/charge -> 202, a new task" in out
    assert "POST /orders/44/charge -> 429, Retry-After: 20" in out  # 3/m: one every 20 s
    charges = journal.read(kv_of(url, "example-web_producer"), "charge")
    assert sorted(c["order_id"] for c in charges) == ["42", "43"]
    assert "3 accepted POSTs -> 2 charges" in out


def test_a_killed_example_takes_its_worker_down(redis_srv: RedisServer) -> None:
    """SIGKILL leaves no chance to clean up: the worker's watchdog must see it."""
    with database(redis_srv, 8) as url:  # not 7: the examples' own singleton run is there
        proc = subprocess.Popen([sys.executable, "-m", "examples.singleton"], cwd=ROOT,
                                env=env_for(url), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: len(workers_started_by(proc.pid)) >= 3, 30,
                       "the worker and its 2 pool processes")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not workers_started_by(proc.pid), 10,
                       "the orphaned worker to stop")
    left = workers_started_by(proc.pid)
    for pid in left:  # do not leave them to the rest of the session
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == []
