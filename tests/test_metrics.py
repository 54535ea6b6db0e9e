"""Decision counters: counted by the phase's own script (no extra round trip), per server
minute, with a TTL; a denied phase counts only its denier; identities only when listed;
the collector's counters never go down; ``celery kv metrics`` and its bad input."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from celery import Celery
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from celery_kv import KV, install
from celery_kv.celery import KVTask
from celery_kv.celery.cli import kv as kv_group
from celery_kv.metrics import KVCollector
from celery_kv.store import Step, metrics
from celery_kv.store.metrics import Count, read_counts, totals
from tests.conftest import count_commands
from tests.test_phases import claims, text

TTL = 600.0


def tallied(kv: KV, task_id: str, record: str) -> list[Step]:
    """The two claims of test_phases, each counting as a feature would."""
    lock, idem = claims(kv, task_id, record)
    return [
        Step(lock.script, lock.keys, lock.args,
             metrics.tally("t.job", "singleton", "ok>admitted;deny>deduplicated", record)),
        Step(idem.script, idem.keys, idem.args,
             metrics.tally("t.job", "idempotency", "ok>admitted;deny:2=in_progress>"
                           "deduplicated,contended;deny>denied")),
    ]


def summed(kv: KV) -> dict[tuple[str, str, str, str | None], int]:
    return totals(read_counts(kv.store, 5)[1])


def test_a_phase_counts_in_its_own_round_trip(kv: KV, backend_name: str) -> None:
    kv.store.run_phase("warm up", claims(kv, "warm", "warm"))
    with count_commands(kv) as sent:
        answer = kv.store.run_phase("enqueue claim", tallied(kv, "id-1", "r1"), TTL)
    assert [text(reply[0]) for reply in answer.replies] == ["ok", "ok"]
    expected = 2 if backend_name == "cluster" else 1  # one call per slot on a Cluster
    assert [c[0] for c in sent] == ["EVALSHA"] * expected
    assert summed(kv) == {("t.job", "singleton", "admitted", None): 1,
                          ("t.job", "singleton", "admitted", "r1"): 1,
                          ("t.job", "idempotency", "admitted", None): 1}


def test_every_minute_of_counters_expires(kv: KV) -> None:
    kv.store.run_phase("enqueue claim", tallied(kv, "id-1", "r1"), TTL)
    keys = [k for k in kv.client.scan_iter(match=kv.store.keys.pattern("metrics"))]
    assert keys
    for key in keys:
        assert 0 < kv.client.pttl(key) <= TTL * 1000
    now, counts = read_counts(kv.store, 1)
    assert {c.minute for c in counts} == {int(now // 60)}, "counted in the server's minute"


def test_a_denied_phase_counts_only_the_step_that_denied(kv: KV) -> None:
    record = kv.store.keys.key("idem", ("ns", "r2"))
    kv.client.hset(record, mapping={"s": "p", "o": "someone-else", "f": "fp"})
    kv.client.pexpire(record, 60_000)
    answer = kv.store.run_phase("enqueue claim", tallied(kv, "id-2", "r2"), TTL)
    assert [text(reply[0]) for reply in answer.replies] == ["ok", "deny"]
    # the lock claim was undone: it never happened, and is not counted
    assert summed(kv) == {("t.job", "idempotency", "deduplicated", None): 1,
                          ("t.job", "idempotency", "contended", None): 1}


def test_without_counters_ttl_nothing_is_counted(kv: KV) -> None:
    kv.store.run_phase("enqueue claim", tallied(kv, "id-3", "r3"))
    assert summed(kv) == {}
    assert not list(kv.client.scan_iter(match=kv.store.keys.pattern("metrics")))


@pytest.fixture
def app(kv: KV) -> Celery:
    app = Celery("metrics-eager", set_as_current=False)
    app.conf.task_always_eager = True
    app.conf.kv_metrics_identities = ["vip"]
    install(app, kv)
    return app


def test_only_listed_identities_get_series_of_their_own(app: Celery, kv: KV) -> None:
    @app.task(base=KVTask, shared=False, name="t.call", global_rate_limit="100/s",
              rate_limit_key="{tenant}")
    def call(tenant: str) -> str:
        return tenant

    for tenant in ["vip", "vip", "a", "b", "c"]:
        assert call.delay(tenant).get() == tenant
    assert summed(kv) == {("t.call", "rate_limit", "admitted", None): 5,
                          ("t.call", "rate_limit", "admitted", "vip"): 2}


def test_hostile_task_names_and_identities_stay_one_field(kv: KV) -> None:
    step = Step("task_done_check", (kv.store.keys.key("done", "x"),), (),
                metrics.tally("t.a|b\tc", "idempotency", "ok>admitted", "x|y\nz"))
    kv.store.run_phase("start", [step], TTL)
    assert summed(kv) == {("t.a_b_c", "idempotency", "admitted", None): 1,
                          ("t.a_b_c", "idempotency", "admitted", "x_y_z"): 1}


def test_the_collector_never_counts_down() -> None:
    """A minute that expired in Redis, or left the window, keeps its last value."""
    collector = KVCollector.__new__(KVCollector)
    collector.window = 3
    collector._seen, collector._gone = {}, {}
    series = ("t.a", "cache", "cache_hit", None)

    def fold(oldest: int, values: dict[int, int]) -> int:
        counts = [Count(m, *series, value=v) for m, v in values.items()]
        return collector._fold(oldest, counts).get(series, 0)

    assert fold(100, {100: 2, 101: 3}) == 5
    assert fold(100, {101: 4}) == 6, "minute 100 expired early: its 2 stay"
    assert fold(102, {102: 1}) == 7, "minutes 100 and 101 left the window"
    assert fold(103, {103: 0}) == 7


def samples(text_out: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text_out):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_celery_kv_metrics_once_prints_a_scrape(redis_url: str, prefix: str) -> None:
    kv = KV.from_url(redis_url, prefix=prefix)
    kv.store.run_phase("enqueue claim", tallied(kv, "id-1", "r1"), TTL)
    lock = kv.lock("held-one", ttl=30)
    assert lock.acquire()
    try:
        result = CliRunner().invoke(kv_group, ["--url", redis_url, "--prefix", prefix,
                                               "metrics", "--once"], catch_exceptions=False)
    finally:
        lock.release()
    assert result.exit_code == 0, result.output
    found = samples(result.output)
    labels = (("event", "admitted"), ("feature", "singleton"), ("task", "t.job"))
    assert found[("celery_kv_decisions_total", labels)] == 1
    assert found[("celery_kv_identity_decisions_total",
                  (*labels[:2], ("identity", "r1"), labels[2]))] == 1
    assert found[("celery_kv_locks_held", (("state", "held"),))] == 2  # the claim, held-one
    assert 0 <= found[("celery_kv_lock_oldest_age_seconds", ())] < 30


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "kv", *args], capture_output=True,
                          text=True, timeout=60)


def test_a_port_already_taken_is_one_line(redis_url: str, prefix: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--url", redis_url, "--prefix", prefix, "metrics", "--port", str(port))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"]


def test_redis_down_is_one_line() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = run_cli("--url", f"redis://:hunter2@127.0.0.1:{port}/0", "--prefix", "p",
                   "metrics", "--once")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr and "hunter2" not in done.stderr
    assert str(port) in lines[0]
