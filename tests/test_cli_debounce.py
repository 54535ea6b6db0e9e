"""``celery kv debounce TASK [KEY]`` and the bursts in ``celery kv locks``.

Callers trigger a debounced task (and a keep-latest one) with ``apply_async`` and no worker,
so every burst stays pending; the command must show what those callers were given (the
burst's task id), how many triggers it absorbed, when it is due and with which arguments.
A private redis-server is the broker too: the messages published here reach no worker.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery.bin.celery import celery
from click.testing import CliRunner, Result

from celery_kv.store.admin import purge
from celery_kv.store.bursts import burst_key, list_bursts, parse_burst, read_burst
from celery_kv.testing import RedisCluster, RedisServer, start_server

ROOT = Path(__file__).resolve().parents[1]

APP = '''\
from celery import Celery

from celery_kv import KVTask, SingletonTask, install

app = Celery("{name}", broker={broker!r})
app.conf.kv_prefix = {prefix!r}
{extra}
kv = install(app)


look = None  # a test sets it: the body of an eager run calls it while its burst runs


@app.task(base=KVTask, name="proj.notify", shared=False, debounce=5, debounce_key="{{user}}")
def notify(user, n, note=None):
    if look is not None:
        return look(user)
    return n


@app.task(base=KVTask, name="proj.digest", shared=False, debounce=5, debounce_max_wait=30)
def digest(user):
    return user


@app.task(base=SingletonTask, name="proj.rebuild", shared=False, singleton_mode="latest",
          singleton_key="{{site}}")
def rebuild(site, version):
    return version


@app.task(base=SingletonTask, name="proj.once", shared=False, singleton_key="{{site}}")
def once(site):
    return site


@app.task(name="proj.plain", shared=False)
def plain():
    return 1
'''


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """Broker and coordination Redis for this module alone (its messages find no worker)."""
    started = start_server()
    try:
        yield started
    finally:
        started.stop()


def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str, broker: str,
              extra: str = "") -> ModuleType:
    """A fresh app module (importable by ``-A`` in process and in a subprocess)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "debounceapp_" + uuid.uuid4().hex[:8]
    (tmp_path / f"{name}.py").write_text(APP.format(name=name, broker=broker, prefix=prefix,
                                                    extra=extra))
    return importlib.import_module(name)


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str,
         server: RedisServer) -> Iterator[ModuleType]:
    module = write_app(tmp_path, monkeypatch, prefix, server.url)
    yield module
    purge(module.kv.store)
    assert not list(module.kv.client.scan_iter(match=f"{prefix}:*"))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(celery, list(args), catch_exceptions=False)


def out_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in result.output, result.output


def detail_fields(output: str) -> dict[str, str]:
    """The one-key view (a FIELD / VALUE table) as a dict."""
    pairs = (re.split(r"\s{2,}", line, maxsplit=1) for line in output.splitlines()[2:])
    return {pair[0]: pair[1] for pair in pairs}


def trigger(task: Any, calls: list[tuple[Any, ...]]) -> list[str]:
    """``apply_async`` each call; the task ids the callers got back."""
    return [task.apply_async(args).id for args in calls]


# -- the library --------------------------------------------------------------------------------


def test_read_burst_of_a_debounced_key(proj: ModuleType) -> None:
    ids = trigger(proj.notify, [("alice", 1), ("alice", 2), ("alice", 3)])
    assert len(set(ids)) == 1, ids  # one burst: every caller got its task id
    store = proj.kv.store

    burst = read_burst(store, "proj.notify", "alice")
    assert burst is not None and burst.state == "pending" and burst.running is None
    assert burst.redis_key == burst_key(store, "proj.notify", "alice")
    assert (burst.task_name, burst.key) == ("proj.notify", "alice")
    pending = burst.pending
    assert pending is not None
    assert pending.task_id == ids[0] and pending.triggers == 3
    assert 0 < pending.due_in <= 5 and pending.max_wait_in is None
    assert 0 <= pending.first_trigger_ago < 5
    assert pending.arguments.args == ["alice", 3] and pending.arguments.kwargs == {}
    assert read_burst(store, "proj.notify", "bob") is None


def test_parse_burst_flags_a_malformed_record() -> None:
    bad = parse_burst("p:burst:{x}", {"pid": "t1", "pdue": "soon", "pn": "1"}, 1000)
    assert bad.state == "malformed" and bad.problem is not None and "soon" in bad.problem
    odd = parse_burst("p:burst:{x}", {"pid": "t1", "pdue": "900", "pn": "2", "pfirst": "0",
                                      "pmax": "0", "pargs": "{not json"}, 1000)
    assert odd.pending is not None and odd.pending.due_in == -0.1
    assert odd.pending.arguments.args is None and odd.pending.arguments.problem


# -- celery kv debounce --------------------------------------------------------------------------


def test_debounce_lists_the_pending_bursts_of_a_task(proj: ModuleType) -> None:
    alice = trigger(proj.notify, [("alice", 1), ("alice", 2)])
    bob = trigger(proj.notify, [("bob", 7)])
    proj.notify.apply_async(("bob", 8), {"note": "last"})
    app = proj.__name__

    rows = {r["key"]: r for r in out_json(invoke("-A", app, "kv", "debounce", "proj.notify",
                                                 "--json"))}
    assert set(rows) == {"alice", "bob"}
    assert rows["alice"]["state"] == "pending" and rows["alice"]["running"] is None
    assert rows["alice"]["pending"]["task_id"] == alice[0] == alice[1]
    assert rows["alice"]["pending"]["triggers"] == 2
    assert rows["bob"]["pending"]["task_id"] == bob[0]
    assert rows["bob"]["pending"]["triggers"] == 2
    assert rows["bob"]["pending"]["arguments"] == {"args": ["bob", 8],
                                                   "kwargs": {"note": "last"}, "problem": None}
    assert 0 < rows["bob"]["pending"]["due_in"] <= 5
    assert rows["alice"]["name"] == "('proj.notify', 'alice')"

    text = invoke("-A", app, "kv", "debounce", "proj.notify")
    assert text.exit_code == 0, text.output
    header, _rule, *lines = text.output.splitlines()
    for column in ("KEY", "STATE", "PENDING TASK ID", "DUE IN", "MAX-WAIT IN", "TRIGGERS",
                   "RUNNING TASK ID", "LEASE LEFT"):
        assert column in header
    line = next(x for x in lines if x.startswith("bob "))
    assert bob[0] in line and "pending" in line and '"bob", 8, note="last"' in line


def test_debounce_of_one_key(proj: ModuleType) -> None:
    ids = trigger(proj.notify, [("alice", 1), ("alice", 2), ("alice", 3)])
    app = proj.__name__

    row, = out_json(invoke("-A", app, "kv", "debounce", "proj.notify", "alice", "--json"))
    assert row["key"] == "alice" and row["pending"]["task_id"] == ids[0]
    assert row["pending"]["triggers"] == 3
    assert 0 < row["pending"]["due_in"] <= 5

    text = invoke("-A", app, "kv", "debounce", "proj.notify", "alice")
    assert text.exit_code == 0, text.output
    fields = detail_fields(text.output)
    assert fields["state"] == "pending" and fields["key"] == "alice"
    assert fields["pending task id"] == ids[0]
    assert fields["triggers"] == "3"
    assert fields["latest args"] == '"alice", 3'
    assert 0 < float(fields["due in"].rstrip("s")) <= 5

    none = invoke("-A", app, "kv", "debounce", "proj.notify", "carol")
    assert none.exit_code == 0 and none.output.startswith("no pending burst"), none.output
    assert "'carol'" in none.output
    assert out_json(invoke("-A", app, "kv", "debounce", "proj.notify", "carol", "--json")) == []


def test_a_running_burst_beside_a_pending_one(proj: ModuleType,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An eager run (apply()) fires at once: while its body runs, the key has a running
    burst (its id, lease, fence) and the callers' pending one."""
    pending = trigger(proj.notify, [("alice", 1), ("alice", 2)])
    app = proj.__name__
    monkeypatch.setattr(proj, "look", lambda user: (
        invoke("-A", app, "kv", "debounce", "proj.notify", user),
        invoke("-A", app, "kv", "debounce", "proj.notify", "--json"),
        invoke("-A", app, "kv", "locks", "--json")))
    run = proj.notify.apply(("alice", 9))
    detail, listing, locks = run.get()

    row, = out_json(listing)
    assert row["state"] == "both"
    assert row["pending"]["task_id"] == pending[0] and row["pending"]["triggers"] == 2
    running = row["running"]
    assert running["task_id"] == run.id != pending[0]
    assert running["status"] == "running" and running["fence"] > 0
    assert 0 < running["lease_left"] <= 30 and running["arguments"]["args"] == ["alice", 9]
    assert detail.exit_code == 0, detail.output
    fields = detail_fields(detail.output)
    assert fields["state"] == "both" and fields["run status"] == "running"
    assert fields["running task id"] == run.id and fields["pending task id"] == pending[0]
    assert fields["run args"] == '"alice", 9' and fields["latest args"] == '"alice", 2'
    assert fields["fence"] == str(running["fence"])
    kinds = {(r["state"], r["task_id"]) for r in out_json(locks) if r["kind"] == "burst"}
    assert kinds == {("pending", pending[0]), ("running", run.id)}

    monkeypatch.setattr(proj, "look", None)
    after, = out_json(invoke("-A", app, "kv", "debounce", "proj.notify", "--json"))
    assert after["state"] == "pending" and after["running"] is None  # the run is over


def test_debounce_of_a_default_key_with_a_maximum_wait(proj: ModuleType) -> None:
    """No debounce_key: the key is the arguments' digest; the maximum wait is shown."""
    ids = trigger(proj.digest, [("alice",), ("alice",)])
    row, = out_json(invoke("-A", proj.__name__, "kv", "debounce", "proj.digest", "--json"))
    assert row["pending"]["task_id"] == ids[0] == ids[1]
    assert row["pending"]["triggers"] == 2
    assert 25 < row["pending"]["max_wait_in"] <= 30
    again, = out_json(invoke("-A", proj.__name__, "kv", "debounce", "proj.digest", row["key"],
                             "--json"))
    assert again["pending"]["task_id"] == ids[0]


def test_debounce_of_a_keep_latest_task(proj: ModuleType) -> None:
    ids = trigger(proj.rebuild, [("docs", 1), ("docs", 2), ("docs", 3), ("docs", 4)])
    assert len(set(ids)) == 1, ids
    row, = out_json(invoke("-A", proj.__name__, "kv", "debounce", "proj.rebuild", "docs",
                           "--json"))
    pending = row["pending"]
    assert pending["task_id"] == ids[0] and pending["triggers"] == 4
    assert pending["due_in"] <= 0  # due at once: only a worker is missing
    assert pending["max_wait_in"] is None
    assert pending["arguments"]["args"] == ["docs", 4]
    text = invoke("-A", proj.__name__, "kv", "debounce", "proj.rebuild").output
    assert "docs" in text and ids[0] in text and "overdue" in text


def test_a_long_key_is_found_by_its_arguments(proj: ModuleType) -> None:
    """A key past 120 characters is stored hashed; the listing still names it."""
    user = "u" * 150
    ids = trigger(proj.notify, [(user, 1)])
    trigger(proj.rebuild, [(user, 1)])  # another task's hashed burst: not listed
    rows = out_json(invoke("-A", proj.__name__, "kv", "debounce", "proj.notify", "--json"))
    assert [(r["key"], r["pending"]["task_id"]) for r in rows] == [(user, ids[0])]
    unfiltered = list_bursts(proj.kv.store)
    assert len(unfiltered) == 2 and {b.task_name for b in unfiltered} == {None}


def test_debounce_errors_name_the_task(proj: ModuleType) -> None:
    app = proj.__name__
    for name in ("proj.plain", "proj.once"):
        one_line_error(invoke("-A", app, "kv", "debounce", name),
                       f"task {name!r} has no debounce")
    one_line_error(invoke("-A", app, "kv", "debounce", "proj.nope"),
                   "no task named 'proj.nope'", "proj.notify")
    none = invoke("-A", app, "kv", "debounce", "proj.notify")
    assert none.exit_code == 0, none.output
    assert none.output.strip() == f"no pending burst for task 'proj.notify' under " \
                                  f"'{proj.kv.prefix}:'"


def test_a_record_of_another_type_is_listed_as_malformed(proj: ModuleType) -> None:
    store = proj.kv.store
    store.client.set(burst_key(store, "proj.notify", "mallory"), "not a hash", ex=60)
    ids = trigger(proj.notify, [("alice", 1)])
    rows = {r["key"]: r for r in out_json(invoke("-A", proj.__name__, "kv", "debounce",
                                                 "proj.notify", "--json"))}
    assert rows["mallory"]["state"] == "malformed" and "WRONGTYPE" in rows["mallory"]["problem"]
    assert rows["alice"]["pending"]["task_id"] == ids[0]


@pytest.mark.cluster
def test_bursts_on_every_node_of_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           prefix: str, server: RedisServer,
                                           cluster_srv: RedisCluster) -> None:
    proj = write_app(tmp_path, monkeypatch, prefix, server.url,
                     extra=f"app.conf.kv_redis_url = {cluster_srv.url!r}")
    try:
        users = [f"user-{i}" for i in range(12)]  # spread over the three nodes' slots
        ids = {user: trigger(proj.notify, [(user, 1), (user, 2)])[0] for user in users}
        client = proj.kv.client
        nodes = {client.get_node_from_key(burst_key(proj.kv.store, "proj.notify", u)).name
                 for u in users}
        assert len(nodes) == 3, nodes
        rows = out_json(invoke("-A", proj.__name__, "kv", "debounce", "proj.notify", "--json"))
        assert {r["key"]: r["pending"]["task_id"] for r in rows} == ids
        assert all(r["pending"]["triggers"] == 2 for r in rows)
        row, = out_json(invoke("-A", proj.__name__, "kv", "debounce", "proj.notify", "user-7",
                               "--json"))
        assert row["pending"]["task_id"] == ids["user-7"]
        assert 0 < row["pending"]["due_in"] <= 5
    finally:
        purge(proj.kv.store)


# -- celery kv locks -----------------------------------------------------------------------------


def test_locks_lists_pending_bursts_beside_the_locks(proj: ModuleType) -> None:
    held = proj.kv.lock("invoice:42", ttl=30)
    assert held.acquire()
    notify = trigger(proj.notify, [("alice", 1), ("alice", 2)])
    rebuild = trigger(proj.rebuild, [("docs", 1)])
    app = proj.__name__

    rows = out_json(invoke("-A", app, "kv", "locks", "--json"))
    by_name = {r["name"]: r for r in rows}
    assert by_name["'invoice:42'"]["kind"] == "lock"
    burst = by_name["('proj.notify', 'alice')"]
    assert burst["kind"] == "burst" and burst["state"] == "pending"
    assert burst["task_id"] == notify[0] and burst["triggers"] == 2
    assert 0 < burst["ttl"] <= 5 and burst["fence"] is None
    assert by_name["('proj.rebuild', 'docs')"]["task_id"] == rebuild[0]
    assert len(rows) == 3

    text = invoke("-A", app, "kv", "locks")
    assert text.exit_code == 0, text.output
    assert text.output.splitlines()[0].startswith("KIND ")
    line = next(x for x in text.output.splitlines() if notify[0] in x)
    assert line.startswith("burst ") and "pending (2 triggers)" in line and "due in " in line


def test_locks_with_nothing_held(proj: ModuleType) -> None:
    result = invoke("-A", proj.__name__, "kv", "locks")
    assert result.exit_code == 0 and "no locks held" in result.output, result.output


# -- a real subprocess, as an operator runs it ----------------------------------------------------


def test_real_celery_subprocess(proj: ModuleType, tmp_path: Path) -> None:
    ids = trigger(proj.notify, [("alice", 1), ("alice", 2)])

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", proj.__name__, "kv", *args],
            cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}"},
            capture_output=True, text=True, timeout=60,
        )

    done = run("debounce", "proj.notify", "alice", "--json")
    assert done.returncode == 0, done.stderr
    row, = json.loads(done.stdout)
    assert row["pending"]["task_id"] == ids[0] and row["pending"]["triggers"] == 2
    bad = run("debounce", "proj.plain")
    assert bad.returncode == 1 and bad.stdout == "", bad.stderr
    assert bad.stderr.startswith("Error: task 'proj.plain' has no debounce")
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

