"""The demo (README's first command), run end to end as a user runs it, interrupted with
Ctrl-C, and its checks fed runs that break each invariant."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_kv import KV
from celery_kv.testing import RedisServer, fake_kv, redis_server
from examples import demo
from examples.billing import journal

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.worker


def processes_mentioning(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        if marker in cmdline and state != "Z":  # a zombie is gone, only not yet reaped
            found.append((int(entry.name), cmdline))
    return found


def all_keys(server: RedisServer) -> set[tuple[int, bytes]]:
    import redis

    found = set()
    for db in range(16):
        with redis.Redis(port=server.port, db=db) as client:
            found |= {(db, key) for key in client.scan_iter(count=1000)}
    return found


@pytest.fixture
def run_id() -> str:
    return "t" + uuid.uuid4().hex[:10]


def demo_env(run_id: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "DEMO_"))}
    env.update(REDIS_URL=redis_url, DEMO_RUN_ID=run_id, PYTHONPATH=str(ROOT))
    return env


def private_ports(out: str) -> list[int]:
    """The ports of the private servers the demo said it started."""
    return [int(p) for p in re.findall(r"on a private server: redis://127\.0\.0\.1:(\d+)", out)]


def server_gone(port: int) -> bool:
    """No redis-server titled with the port (redis rewrites its command line), none answering."""
    if processes_mentioning(f"127.0.0.1:{port}"):
        return False
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def assert_nothing_left(run_id: str, redis_srv: RedisServer, before: set[tuple[int, bytes]],
                        out: str) -> None:
    ports = private_ports(out)
    assert ports, out
    deadline = time.monotonic() + 10
    while processes_mentioning(run_id) and time.monotonic() < deadline:
        time.sleep(0.05)  # process groups are being reaped
    assert processes_mentioning(run_id) == []
    assert all(server_gone(p) for p in ports)
    left = all_keys(redis_srv) - before
    assert left == set(), f"left behind: {sorted(left)[:20]}"
    ours = f"billing-demo-{run_id}".encode()
    assert not [k for _, k in all_keys(redis_srv) if k.startswith(ours)]


@pytest.fixture(scope="module")
def demo_srv() -> Iterator[RedisServer]:
    """A server of the demo tests' own: what is left on it can only be the demo's."""
    with redis_server() as server:
        yield server


# -- end to end -----------------------------------------------------------------------------------


def test_demo_runs_end_to_end_and_every_check_passes(demo_srv: RedisServer, run_id: str,
                                                     tmp_path: Path) -> None:
    before = all_keys(demo_srv)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--out", str(tmp_path)], cwd=ROOT,
        env=demo_env(run_id, demo_srv.url), capture_output=True, text=True, timeout=120,
    )
    took = time.monotonic() - started
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert took < 60, f"the demo took {took:.1f}s"

    assert f"coordination on {demo_srv.url} (REDIS_URL), prefix 'billing-demo-{run_id}:'" in out
    ready = re.search(r"workers ready: (\d+) \(([^)]*)\), prefork", out)
    assert ready and int(ready.group(1)) == 2
    assert {h.split("@")[0] for h in ready.group(2).split(", ")} == {f"{run_id}-w1",
                                                                     f"{run_id}-w2"}
    assert "ran: charges" in out  # the progress display
    table = out[out.index("FEATURE"):out.index("all checks passed")]
    rows = {line.split("  ")[0]: line for line in table.splitlines()[2:] if line.strip()}
    for feature in ("idempotent charges", "sessions web <-> tasks", "partner API 5/s/tenant",
                    "nightly rebuild (singleton)", "price lookups (cache)",
                    "catalogue reindex (debounce)"):
        assert rows[feature].rstrip().endswith("PASS"), rows[feature]
    charges = rows["idempotent charges"].split()
    sent, ran = int(charges[2]), int(charges[3])
    assert ran == demo.CUSTOMERS_PER_TENANT * len(demo.TENANTS) and sent > ran
    assert "all checks passed" in out
    assert "removed " in out and f"demo keys under 'billing-demo-{run_id}:'" in out
    assert_nothing_left(run_id, demo_srv, before, out)
    png = tmp_path / "admissions.png"
    assert f"plot: {png} (admissions per second per tenant against 5/s)" in out
    assert_a_drawn_png(png)


def assert_a_drawn_png(path: Path) -> None:
    """A PNG that decodes, at the size drawn, with bars and lines on it (not one colour)."""
    from matplotlib import image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert pixels.shape[:2] == (450, 800)
    rgb = pixels[:, :, :3].reshape(-1, 3)
    inked = (rgb < 0.9).any(axis=1).mean()  # not near-white: axes, text, bars, lines
    assert 0.05 < inked < 0.9, f"{inked:.1%} of the pixels are drawn"
    red = ((rgb[:, 0] > 0.7) & (rgb[:, 1] < 0.3) & (rgb[:, 2] < 0.4)).sum()
    assert red > 800, "no limit line"  # crimson, the width of the axes


# -- Ctrl-C ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def started_demo(run_id: str, redis_url: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.demo"], cwd=ROOT, env=demo_env(run_id, redis_url),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid, _ in processes_mentioning(run_id):  # whatever a failed test left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    assert proc.stdout is not None
    seen = ""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and proc.poll() is None, f"no {needle!r} in:\n{seen}"
        if selector.select(timeout=left):
            seen += proc.stdout.readline()
    return seen


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_demo_leaves_no_process_and_no_key(
    how: str, demo_srv: RedisServer, run_id: str
) -> None:
    before = all_keys(demo_srv)
    with started_demo(run_id, demo_srv.url) as proc:
        head = read_until(proc, "workers ready", timeout=60)
        assert len(processes_mentioning(run_id)) == 6  # 2 workers and their 4 pool children
        assert not any(server_gone(p) for p in private_ports(head))
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to the foreground job
        else:
            proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        out = head + rest
        assert proc.returncode == 130, out
        assert "interrupted" in out and "Traceback" not in out
    assert_nothing_left(run_id, demo_srv, before, out)


# -- choosing Redis -------------------------------------------------------------------------------


def test_redis_url_coordinates_and_a_private_server_brokers(
    monkeypatch: pytest.MonkeyPatch, redis_srv: RedisServer, run_id: str
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_srv.url)
    with contextlib.ExitStack() as stack:
        servers = demo.pick_servers(run_id, stack, external=False)
        assert servers.kv_url == redis_srv.url and not servers.kv_private
        assert servers.broker_url != redis_srv.url and servers.broker_url.endswith("/1")
        assert servers.backend_url.endswith("/2")
        port = int(servers.broker_url.rsplit(":", 1)[1].split("/")[0])
        assert KV.from_url(servers.broker_url).ping()
    assert server_gone(port)


def test_without_any_redis_it_starts_one_private_server(
    monkeypatch: pytest.MonkeyPatch, run_id: str
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(demo, "_usable", lambda url: False)  # as if nothing answered on :6379
    with contextlib.ExitStack() as stack:
        servers = demo.pick_servers(run_id, stack, external=False)
        assert servers.kv_private
        base = servers.kv_url.rsplit("/", 1)[0]
        assert servers.broker_url == f"{base}/1" and servers.backend_url == f"{base}/2"
        assert KV.from_url(servers.kv_url).ping()
        port = int(base.rsplit(":", 1)[1])
    assert server_gone(port)


def test_scripts_demo_bootstraps_then_runs_the_module() -> None:
    script = ROOT / "scripts" / "demo"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[-4:] == ['cd "$ROOT"', "source scripts/bootstrap",
                          'python -c "import matplotlib" 2>/dev/null || '
                          'python -m pip install -q -e "$ROOT[plot]" >&2 || true',
                          'exec python -m examples.demo "$@"']
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


# -- the checks catch broken runs -----------------------------------------------------------------


class Done:
    """A finished AsyncResult."""

    def __init__(self, value: Any, task_id: str | None = None) -> None:
        self.id = task_id or uuid.uuid4().hex
        self.value = value

    def get(self, timeout: float = 0, propagate: bool = True) -> Any:
        return self.value


@pytest.fixture
def kv() -> KV:
    return fake_kv(prefix="demo-check")


def test_rebuild_check_fails_on_overlap_or_falling_fences(kv: KV) -> None:
    sent = demo.Sent(rebuilds=[Done({}) for _ in range(10)])
    for tenant in demo.REBUILD_TENANTS:
        journal.record(kv, "rebuild", tenant=tenant, start=1.0, end=2.0, fence=10)
        journal.record(kv, "rebuild", tenant=tenant, start=2.0, end=3.0, fence=11)
    assert demo.check_rebuilds(sent, kv).ok

    journal.record(kv, "rebuild", tenant="acme", start=2.5, end=3.5, fence=12)  # overlaps
    row = demo.check_rebuilds(sent, kv)
    assert not row.ok and row.observed.startswith("max overlap 2")
    assert row.problems == ["2 runs of one tenant at once"]

    other = fake_kv(prefix="demo-check2")
    for tenant in demo.REBUILD_TENANTS:
        journal.record(other, "rebuild", tenant=tenant, start=1.0, end=2.0, fence=11)
        journal.record(other, "rebuild", tenant=tenant, start=2.0, end=3.0, fence=10)
    row = demo.check_rebuilds(sent, other)
    assert not row.ok and "fences DO NOT RISE run after run: [10, 11]" not in row.problems[0]
    assert row.problems[0] == "acme: fences DO NOT RISE run after run: [11, 10]"


def test_partner_check_fails_when_the_limit_is_exceeded(kv: KV) -> None:
    sent = demo.Sent(invoices=[Done("ok") for _ in range(3 * 10)])
    for tenant in demo.TENANTS:
        for n in range(10):  # 5 at once, then one every 0.2 s: exactly 5/s with burst 5
            journal.record(kv, "partner", tenant=tenant, admitted_at=100.0 + max(0, n - 4) * 0.2)
    assert demo.check_partner(sent, kv).ok

    journal.record(kv, "partner", tenant="acme", admitted_at=100.1)  # one more, too soon
    sent.invoices.append(Done("ok"))
    row = demo.check_partner(sent, kv)
    assert row.problems == ["acme: 1 admitted OVER the limit"]


def test_charge_check_fails_on_a_double_charge_and_shows_task_errors(kv: KV) -> None:
    sessions = kv.sessions("web")
    sent = demo.Sent()
    for i in range(3):
        sid = sessions.create({"user": "u", "tenant": "acme", "receipts": [f"ch_{i}"]})
        sent.orders[f"ord-{i}"] = (sid, "acme", 100)
        sent.sessions[sid] = f"ord-{i}"
        journal.record(kv, "charge", order_id=f"ord-{i}", tenant="acme")
        sent.charges += [Done({"order_id": f"ord-{i}", "charge_id": f"ch_{i}"}, f"id{i}")] * 3

    import examples.billing.web as web

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(web, "receipts", lambda sid: sessions.get(sid)["receipts"])
        charges, shared = demo.check_charges(sent, kv)
        assert charges.ok and shared.ok and charges.absorbed == 6

        journal.record(kv, "charge", order_id="ord-1", tenant="acme")  # charged twice
        sent.charges.append(Done(RuntimeError("card declined")))
        charges, _ = demo.check_charges(sent, kv)
        assert not charges.ok
        assert charges.problems == ["1 tasks failed, e.g. RuntimeError: card declined",
                                    "charged TWICE: ord-1"]


def reindexed(kv: KV, late: float = 0.0) -> demo.Sent:
    """Per tenant, saves v1-v10 answered by a run of v10, then v11-v20 by a run of v20
    (``late``: how much later than its saves allow the second run starts)."""
    sent = demo.Sent()
    for tenant in demo.REINDEX_TENANTS:
        for run, first, start in (("a", 1, 10.0), ("b", 11, 11.0 + late)):
            last = first + 9
            journal.record(kv, "reindex", tenant=tenant, version=last, start=start,
                           end=start + 0.2, triggers=10, task_id=f"{run}-{tenant}")
            for version in range(first, last + 1):
                sent.saves.append(demo.Save(tenant, version, 9.0 + 0.09 * version,
                                            Done(last, f"{run}-{tenant}")))
    return sent


def test_reindex_check_passes_a_debounced_run_and_fails_each_broken_invariant(kv: KV) -> None:
    from examples.billing import tasks

    sent = reindexed(kv)
    row = demo.check_reindex(sent, kv)
    assert row.ok, row.problems
    assert (row.sent, row.ran, row.absorbed) == (60, 6, 54)
    assert row.observed == "max overlap 1, waits <= 1.0s"

    sent.saves[14].result = Done(10, "b-acme")  # v15 handed v10: an older run's version
    assert demo.check_reindex(sent, kv).problems == [
        "1 saves handed an OLDER version: acme v15 got 10"]

    sent = reindexed(kv := fake_kv(prefix="demo-check-lost"))
    sent.saves[19].result = Done(20, "never-ran")  # acme v20 answered by no journalled run
    assert demo.check_reindex(sent, kv).problems == [
        "1 saves answered by no run, e.g. acme v20",
        "kv_triggers differ from the saves answered: acme v20: 10 != 9"]

    sent = reindexed(kv := fake_kv(prefix="demo-check-early"))
    sent.saves[0].sent_at = 10.5  # acme v1 sent after the run that answered it started
    assert demo.check_reindex(sent, kv).problems == [
        "1 saves answered by a run that started BEFORE them: acme v1"]

    sent = reindexed(kv := fake_kv(prefix="demo-check-overlap"))
    journal.record(kv, "reindex", tenant="acme", version=10, start=10.1, end=10.3,
                   triggers=0, task_id="c-acme")  # a second run while the first one goes
    row = demo.check_reindex(sent, kv)
    assert row.problems == ["2 runs of one tenant at once"]
    assert row.observed.startswith("max overlap 2")

    sent = reindexed(kv := fake_kv(prefix="demo-check-last"))
    sent.saves.append(demo.Save("acme", 21, 11.5, Done(21, "d-acme")))
    journal.record(kv, "reindex", tenant="acme", version=21, start=11.6, end=11.8,
                   triggers=1, task_id="d-acme")
    assert demo.check_reindex(sent, kv).ok
    journal.record(kv, "reindex", tenant="acme", version=19, start=12.0, end=12.2,
                   triggers=0, task_id="e-acme")  # a run of an older version comes last
    assert demo.check_reindex(sent, kv).problems == [
        "acme: the last run indexed v19, the last save was v21"]

    sent = reindexed(kv := fake_kv(prefix="demo-check-miscount"))
    journal.record(kv, "reindex", tenant="globex", version=20, start=12.0, end=12.2,
                   triggers=1, task_id="f-globex")  # covers a trigger no one sent
    assert demo.check_reindex(sent, kv).problems == [
        "kv_triggers differ from the saves answered: globex v20: 1 != 0",
        "the runs cover 61 triggers, 60 were sent"]

    late = tasks.REINDEX_MAX_WAIT + demo.REINDEX_SLACK  # the second runs start 4.01 s late
    sent = reindexed(kv := fake_kv(prefix="demo-check-late"), late=late)
    assert demo.check_reindex(sent, kv).problems == [
        f"a burst started 4.01s after its first save (max wait {tasks.REINDEX_MAX_WAIT}s "
        f"+ {demo.REINDEX_SLACK}s slack)"]

    sent, kv = reindexed(fake_kv(prefix="demo-check-unused")), fake_kv(prefix="demo-check-few")
    for save in sent.saves:  # every save ran on its own: nothing absorbed
        run = f"own-{save.tenant}-{save.version}"
        journal.record(kv, "reindex", tenant=save.tenant, version=save.version,
                       start=save.sent_at + 0.01, end=save.sent_at + 0.02, triggers=1,
                       task_id=run)
        save.result = Done(save.version, run)
    assert demo.check_reindex(sent, kv).problems == ["60 runs for 60 saves: too few absorbed"]


def test_a_failed_check_shows_in_the_table() -> None:
    rows = [demo.Row("a", 1, 1, 0, "holds", "fine"),
            demo.Row("b", 2, 2, 0, "holds", "broken", ["it broke"])]
    lines = demo.report(rows).splitlines()
    assert lines[2].endswith("PASS") and lines[3].endswith("FAIL")
    assert lines[-2:] == ["what failed:", "  b: it broke"]


# -- the admissions plot --------------------------------------------------------------------------


def gcra_admissions(kv: KV, tenant: str, count: int, at: float) -> None:
    """Journal ``count`` admissions as GCRA 5/s (burst 5) makes them: 5 at once, then one
    every 0.2 s."""
    for n in range(count):
        journal.record(kv, "partner", tenant=tenant, admitted_at=at + max(0, n - 4) * 0.2)


def test_the_plotted_series_counts_each_second_and_stays_within_the_limit(kv: KV) -> None:
    from examples import plot

    gcra_admissions(kv, "acme", 15, at=100.0)
    gcra_admissions(kv, "globex", 7, at=100.9)
    data = plot.admissions(journal.read(kv, "partner"), "billing.push_invoice", "5/s",
                           key="tenant")
    # acme: 5 at once and 4 more in its first second, then 5 a second; globex starts later
    assert data.per_key == {"acme": [9, 5, 1], "globex": [5, 2, 0]}
    assert (data.rate, data.burst, data.by) == (5.0, 5, "tenant")
    assert all(n <= data.rate for s in data.per_key.values() for n in s[1:])
    assert data.exceeding() == []

    for at in (101.1, 101.5):  # two more in its second second: over burst + 5/s x 2 s
        journal.record(kv, "partner", tenant="acme", admitted_at=at)
    data = plot.admissions(journal.read(kv, "partner"), "billing.push_invoice", "5/s",
                           key="tenant")
    assert data.per_key["acme"] == [9, 7, 1]
    assert data.exceeding() == ["acme: 16 admitted in the first 2 s"]


def test_without_matplotlib_the_demo_says_one_line_and_writes_nothing(
    kv: KV, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples import plot

    gcra_admissions(kv, "acme", 6, at=10.0)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # not importable
    assert demo.plot_partner(kv, tmp_path) == plot.SKIPPED
    assert plot.SKIPPED == "plot skipped: pip install celery-kv[plot]"
    assert list(tmp_path.iterdir()) == []
