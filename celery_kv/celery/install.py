"""``install(app)``: one ``KV`` per app, the worker hooks, and definition-time checks.

Call it after the app is configured (``kv_*`` settings, broker URL), before the
tasks are defined::

    app = Celery("proj", broker="redis://127.0.0.1:6379/0")
    app.conf.kv_prefix = "proj"
    kv = install(app)

It finalizes the app, so every task defined afterwards is created, and its options
checked, right at its decorator (a bad option fails at import, not at the first
call). Calling it twice returns the same ``KV``.

Worker hooks: ``worker_process_init`` drops the connections a prefork child
inherited (no socket is shared across a fork); ``task_revoked`` (worker main
process) releases the keys of a revoked task id: its queued claims, and a run's only
when the revoke terminated it (a revoke without terminate lets the body run on, and it
releases its keys itself at its end). A worker bootstep (``maintenance``) publishes the
delay store's due messages from the worker's main process.

Two environment variables serve test harnesses (``celery_kv.testing``):
``CELERY_KV_TEST_CONF`` (JSON settings applied to each app before its settings are read:
a worker subprocess gets the test's Redis and prefix) and ``CELERY_KV_EVENTS_JOURNAL``
(a Redis list this process appends each coordination decision to, for ``KVEvents``); and
``CELERY_KV_PARENT_PID`` makes a worker that a harness started stop when the harness dies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import Any

from celery import signals as celery_signals
from celery.app import utils as app_utils

from ..kv import KV
from ..store.urls import MaskedURL
from ..testing.events import journal_from_environment
from .config import Settings

log = logging.getLogger("celery_kv.celery")

_ATTR = "_celery_kv_installed"
_lock = threading.Lock()
_apps: list[Any] = []  # installed apps, for the process-wide hooks


class Installed:
    """What celery-kv keeps per app: its settings and its KV (built on first use)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings = Settings.from_conf(app.conf)
        _mask_in_reports(app.conf)
        self._kv: KV | None = None
        self._kv_lock = threading.Lock()

    @property
    def kv(self) -> KV:
        if self._kv is None:
            with self._kv_lock:
                if self._kv is None:
                    self._kv = self._build()
        return self._kv

    def use(self, kv: KV | None) -> KV | None:
        """Use ``kv`` from now on (None: build one from the settings on next use); returns
        the one used until now, or None (a test fixture puts it back afterwards)."""
        previous, self._kv = self._kv, kv
        return previous

    def _build(self) -> KV:
        url = self.settings.coordination_url(self.app.conf.broker_url)
        return KV.from_url(url, self.settings.prefix, retry_deadline=self.settings.retry_deadline)

    def after_fork(self) -> None:
        """Drop connections inherited from the parent; the child opens its own."""
        if self._kv is not None:
            drop_connections(self._kv.client)


def _mask_in_reports(conf: Any) -> None:
    """Hide ``kv_redis_url`` wherever Celery shows its settings.

    Celery censors the settings whose names match ``celery.app.utils.HIDDEN_SETTINGS``
    (``celery report`` and ``celery inspect conf`` both go through it), and ours does not
    look secret: add it to that pattern. The value is also kept as a ``MaskedURL``, whose
    ``repr`` (logs, tracebacks) hides the password; it stays equal to the URL otherwise.
    """
    if not app_utils.HIDDEN_SETTINGS.search("kv_redis_url"):
        app_utils.HIDDEN_SETTINGS = re.compile(
            f"{app_utils.HIDDEN_SETTINGS.pattern}|KV_REDIS_URL", app_utils.HIDDEN_SETTINGS.flags)
    # with config_from_object(namespace="CELERY") the setting is CELERY_KV_REDIS_URL
    for key in [k for k in conf if str(k).lower().endswith("kv_redis_url")]:
        url = conf.get(key)
        if isinstance(url, str) and not isinstance(url, MaskedURL):
            conf[key] = MaskedURL(url)


def drop_connections(client: Any) -> None:
    """Forget (never close: the parent still uses them) every pooled connection."""
    pools = []
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pools.append(pool)
    get_nodes = getattr(client, "get_nodes", None)
    if callable(get_nodes):
        for node in get_nodes():
            node_client = getattr(node, "redis_connection", None)
            if node_client is not None:
                pools.append(node_client.connection_pool)
    for found in pools:
        reset = getattr(found, "reset", None)
        if callable(reset):
            reset()


def installed(app: Any) -> Installed:
    """The app's celery-kv state, created (and the hooks connected) on first use."""
    state = app.__dict__.get(_ATTR)
    if state is None:
        with _lock:
            state = app.__dict__.get(_ATTR)
            if state is None:
                _test_conf(app)
                state = Installed(app)
                setattr(app, _ATTR, state)
                _apps.append(app)
                _connect_hooks()
                journal_from_environment(lambda: installed(app).kv)
                _watch_parent_once()
    return state  # type: ignore[no-any-return]


_watching = False


def _watch_parent_once() -> None:
    """A worker that a test harness started stops when the harness is gone."""
    global _watching
    if not _watching:
        _watching = True
        from ..testing.workers import watch_parent_from_environment

        watch_parent_from_environment()


#: Settings a test harness hands a worker subprocess (``celery_kv.testing.workers``): JSON
#: of Celery settings applied to every app this process installs, before it is read.
TEST_CONF_ENV = "CELERY_KV_TEST_CONF"


def _test_conf(app: Any) -> None:
    raw = os.environ.get(TEST_CONF_ENV)
    if not raw:
        return
    try:
        conf = json.loads(raw)
    except ValueError:
        raise ValueError(f"${TEST_CONF_ENV} is not JSON: {raw[:200]!r}") from None
    if not isinstance(conf, dict):
        raise ValueError(f"${TEST_CONF_ENV} must be a JSON object of settings, not {raw[:200]!r}")
    app.conf.update(conf)


def install(app: Any, kv: KV | None = None) -> KV:
    """Set celery-kv up on ``app`` and return its ``KV`` (pass ``kv`` to use your own)."""
    state = installed(app)
    if state.settings.otel:
        from ..otel import instrument

        instrument()  # an ImportError naming celery-kv[otel] when OpenTelemetry is missing
    if kv is not None:
        state.use(kv)
    result = state.kv
    app.finalize()
    _register_settle(app)
    from .maintenance import add_to

    add_to(app)  # the worker's maintenance thread: due deferred messages, feature ticks
    return result


def _register_settle(app: Any) -> None:
    """The callbacks that finish a replaced task's claims with its replacement's outcome."""
    from .execution import SETTLE, SETTLE_FAILED, settle
    from .features.base import FAILED, Outcome

    if SETTLE in app.tasks:
        return

    @app.task(name=SETTLE, shared=False)  # type: ignore[untyped-decorator]
    def settle_done(result: Any, *, task: str, task_id: str, header: dict[str, Any]) -> None:
        settle(app, Outcome(True, result), task, task_id, header)

    @app.task(name=SETTLE_FAILED, shared=False)  # type: ignore[untyped-decorator]
    def settle_failed(failed_id: Any, *, task: str, task_id: str,
                      header: dict[str, Any]) -> None:
        settle(app, FAILED, task, task_id, header)


_hooks_connected = False


def _connect_hooks() -> None:
    global _hooks_connected
    if _hooks_connected:
        return
    _hooks_connected = True
    celery_signals.worker_process_init.connect(_on_worker_process_init, weak=False)
    celery_signals.task_revoked.connect(_on_task_revoked, weak=False)


def _on_worker_process_init(**_: Any) -> None:
    for app in list(_apps):
        app.__dict__[_ATTR].after_fork()


def _on_task_revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                     **_: Any) -> None:
    from .execution import release_revoked, revoked_replacement

    if sender is None or request is None:
        return
    try:
        revoked_replacement(sender.app, request)  # a replacement frees what it replaced
        if getattr(sender, "_kv_policy", None) is not None:
            release_revoked(sender, request, terminated=bool(terminated))
    except Exception:  # a hook must never break the worker
        log.exception("celery-kv: could not release the keys of revoked task %s",
                      getattr(request, "id", None))
