"""``celery kv dashboard`` in a real browser: headless Chromium (Debian's ``chromium``
package, /usr/bin/chromium, which scripts/bootstrap installs) driven by Playwright,
against a live workload on a redis-server of this module's own: a real ``celery worker``
holding singleton locks and running rate-limited tasks, and two dashboards started as
``celery -A ... kv dashboard`` subprocesses (one read-only, one with --allow-unlock).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_kv.celery.listing import read_lock
from celery_kv.kv import KV
from celery_kv.testing import start_server
from tests.celery.conftest import Env, Worker
from tests.conftest import wait_for

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 15_000

pytestmark = [pytest.mark.worker]

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None


def _missing() -> str | None:
    if sync_playwright is None:
        return "the Python package 'playwright' is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return (f"Debian package 'chromium' is not installed ({CHROMIUM} is missing; "
                "scripts/bootstrap installs it: apt-get install chromium)")
    return None


@dataclass
class Dash:
    url: str
    token: str | None
    process: subprocess.Popen[str]


def _launch(env: Env, *extra: str) -> subprocess.Popen[str]:
    """``celery -A tests.celery.worker_app kv dashboard --port 0 ...``."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery.worker_app", "kv", "dashboard",
         "--port", "0", *extra],
        cwd=ROOT, env={**os.environ, **env.variables("dashboard")}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _read(process: subprocess.Popen[str], unlock: bool = False) -> Dash:
    """A started dashboard: its URL (and token) from the lines it prints at start-up."""
    assert process.stdout is not None
    first = process.stdout.readline()
    if "http://" not in first:
        process.kill()
        raise AssertionError(f"the dashboard did not start: {first}{process.stdout.read()}")
    url = first.split("http://", 1)[1].split("/", 1)[0]
    token = None
    if unlock:
        token = process.stdout.readline().strip().removeprefix("unlock token: ")
    return Dash(f"http://{url}", token, process)


def _stop(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@dataclass
class Live:
    env: Env
    app: Celery
    kv: KV
    fx: redis.Redis
    readonly: Dash
    unlocking: Dash
    browser: Browser


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    server = start_server()
    base = f"redis://127.0.0.1:{server.port}"
    env = Env(broker=f"{base}/1", backend=f"{base}/2", kv=f"{base}/3", fx=f"{base}/4",
              prefix="dash" + uuid.uuid4().hex[:6])
    started: list[subprocess.Popen[str]] = []
    worker: Worker | None = None
    try:
        launched = [_launch(env), _launch(env, "--allow-unlock")]  # they start as the worker does
        started += launched
        worker = Worker(env)
        readonly, unlocking = _read(launched[0]), _read(launched[1], unlock=True)
        assert sync_playwright is not None
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            try:
                yield Live(env, env.app("ckv-dash-client"), KV.from_url(env.kv, env.prefix),
                           redis.Redis.from_url(env.fx, decode_responses=True),
                           readonly, unlocking, browser)
            finally:
                browser.close()
    finally:
        for process in started:
            _stop(process)
        if worker is not None:
            worker.stop()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def page(live: Live) -> Iterator[Page]:
    context = live.browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()


def _hold(live: Live) -> tuple[str, Any]:
    """A singleton task that holds its lock until ``fx:<tag>:go`` is set."""
    tag = "tag-" + uuid.uuid4().hex[:8]
    result = live.app.tasks["t.single_hold"].apply_async((tag, 30.0))
    wait_for(lambda: live.fx.get(f"fx:{tag}:n"), 15, "the singleton task to start")
    return tag, result


def _lock_row(task_id: str) -> str:
    return f'tr.lock[data-owner="{task_id}"]'


def test_a_held_lock_shows_owner_and_fence_then_goes(live: Live, page: Page,
                                                     tmp_path: Path) -> None:
    tag, result = _hold(live)
    page.goto(live.readonly.url)
    row = page.wait_for_selector(_lock_row(result.id))
    assert row is not None
    (held,) = [r for r in (read_lock(live.kv.store, k) for k in _keys(live)) if r
               and r["task_id"] == result.id]
    assert row.query_selector(".owner").inner_text() == result.id  # type: ignore[union-attr]
    assert row.query_selector(".fence").inner_text() == str(held["fence"])  # type: ignore[union-attr]
    assert page.locator("button.break").count() == 0  # read-only: no button at all
    page.wait_for_selector("svg.chart")
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_not_blank(shot)

    live.fx.set(f"fx:{tag}:go", 1)
    result.get(timeout=15)
    page.wait_for_selector(_lock_row(result.id), state="detached")


def test_the_rate_chart_updates(live: Live, page: Page) -> None:
    page.goto(live.readonly.url)
    chart = 'svg.chart[data-task="t.rl_global"]'
    page.wait_for_selector(chart)
    before = int(page.get_attribute(chart, "data-admitted") or 0)
    assert page.get_attribute(chart, "data-points") == str(2 * 30)
    tag = "tag-" + uuid.uuid4().hex[:8]
    for i in range(3):
        live.app.tasks["t.rl_global"].apply_async((tag, i))
    wait_for(lambda: int(live.fx.get(f"fx:{tag}:n") or 0) >= 3, 15, "three admitted runs")
    page.wait_for_function(
        "([sel, before]) => Number(document.querySelector(sel).dataset.admitted) >= before + 3",
        arg=[chart, before])


def test_unlock_needs_the_flag_and_the_token(live: Live, page: Page) -> None:
    tag, result = _hold(live)
    key = next(r["key"] for r in (read_lock(live.kv.store, k) for k in _keys(live))
               if r and r["task_id"] == result.id)
    refused = page.request.post(f"{live.readonly.url}/api/unlock", data={"key": key},
                                headers={"X-Unlock-Token": live.unlocking.token or ""})
    assert refused.status == 403
    refused = page.request.post(f"{live.unlocking.url}/api/unlock", data={"key": key},
                                headers={"X-Unlock-Token": "wrong"})
    assert refused.status == 403

    dialogs: list[str] = []

    def answer(dialog: Any) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.accept()

    page.on("dialog", answer)
    page.goto(live.unlocking.url)
    row = _lock_row(result.id)
    page.wait_for_selector(row)
    page.fill("#token", "not-the-token")
    page.dispatch_event("#token", "change")
    page.click(f"{row} button.break")
    pump_until(page, lambda: any(d.startswith("alert") for d in dialogs), "the refusal")
    assert any("token" in d for d in dialogs if d.startswith("alert")), dialogs
    assert read_lock(live.kv.store, key) is not None

    page.fill("#token", live.unlocking.token or "")
    page.dispatch_event("#token", "change")
    page.click(f"{row} button.break")
    page.wait_for_selector(row, state="detached")
    assert read_lock(live.kv.store, key) is None
    assert any(d.startswith("confirm: Break lock") for d in dialogs), dialogs
    live.fx.set(f"fx:{tag}:go", 1)
    result.get(timeout=15)


def pump_until(page: Page, condition: Any, what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition`` while Playwright runs its event handlers (a dialog is only
    answered while the sync API is called, never during a plain sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        page.wait_for_timeout(50)


def _keys(live: Live) -> list[str]:
    from celery_kv.celery.listing import lock_keys

    return lock_keys(live.kv.store)


# -- the screenshot ------------------------------------------------------------------------------


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of raw pixel bytes) of an 8-bit RGB or RGBA PNG (stdlib)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + size
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def _decoded(path: Path) -> tuple[int, int, list[bytes]]:
    """Pillow when it is installed (fast), else the stdlib decoder above."""
    try:
        from PIL import Image
    except ImportError:
        return png_pixels(path)
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        data = rgb.tobytes()
        width, height = rgb.size
    return width, height, [data[y * width * 3:(y + 1) * width * 3] for y in range(height)]


def assert_not_blank(path: Path) -> None:
    """Many distinct colours, and a good share of pixels that are not the background."""
    width, height, rows = _decoded(path)
    bpp = len(rows[0]) // width
    colours: dict[bytes, int] = {}
    for line in rows[::4]:
        for x in range(0, width, 4):
            pixel = line[x * bpp:x * bpp + 3]
            colours[pixel] = colours.get(pixel, 0) + 1
    sampled = sum(colours.values())
    background = max(colours.values())
    assert width >= 800 and height >= 400, (width, height)
    assert len(colours) > 20, f"{len(colours)} colours: a blank page?"
    assert sampled - background > sampled * 0.05, "nearly every pixel is the background"
