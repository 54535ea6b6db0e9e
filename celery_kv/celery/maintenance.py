"""The worker's maintenance thread: publishes due deferred messages, runs feature ticks.

``install(app)`` adds ``Maintenance`` (a worker bootstep) to the app's worker blueprint,
so ``celery worker`` and ``celery.contrib.testing.worker.start_worker`` both run it. It
starts one daemon thread in the worker's main process (never in a pool child). Each
loop it:

1. calls ``tick(kv, app)`` once on every distinct feature object with ``periodic=True``
   among the app's coordinated tasks;
2. claims due entries of the delay store, publishes each as it was deferred (its queue,
   exchange, routing key, priority...), and acks the batch;
3. sleeps until the next entry falls due, capped by ``kv_delay_poll_interval``.

A Redis outage is logged and backed off (doubling up to 5 s); it never stops the thread
or the worker. On shutdown the thread is told to stop and joined for at most
``SHUTDOWN_GRACE``: a pass stuck retrying an unreachable Redis must not hold the worker's
warm shutdown, and leaving it is safe (the thread is a daemon; an entry it claimed and
did not ack is published again after its lease, and a second copy ends unrun).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from ..store import codec
from ..store.delays import Claimed
from .delays import delay_store_for, publish_due
from .features.base import Feature
from .install import installed

log = logging.getLogger("celery_kv.celery")

#: entries claimed per round trip
BATCH = 100
#: the longest back-off after failures (seconds)
MAX_BACKOFF = 5.0
#: how long a worker's shutdown waits for the thread's current pass (seconds)
SHUTDOWN_GRACE = 2.0
#: test hooks, called after each claim, before its entries are published (a test stalls
#: here to show that a poller killed between claim and ack loses nothing)
before_publish: list[Callable[[Claimed], None]] = []


def periodic_features(app: Any) -> list[Feature]:
    """Every distinct feature object with ``periodic=True`` of the app's tasks."""
    found: dict[int, Feature] = {}
    for task in list(app.tasks.values()):
        policy = getattr(task, "_kv_policy", None)
        for feature in getattr(policy, "features", ()):
            if feature.periodic:
                found.setdefault(id(feature), feature)
    return list(found.values())


class Poller:
    """The loop of the maintenance thread (``poll_once`` is one pass, for tests too)."""

    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.name = name
        settings = installed(app).settings
        self.interval: float = settings.delay_poll_interval
        self.lease: float = settings.delay_lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0  # messages published since start

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="celery-kv-maintenance",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = SHUTDOWN_GRACE) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                wait = self.poll_once()
                if failures:
                    log.info("celery-kv maintenance: Redis answers again")
                failures = 0
            except Exception as exc:  # never let an outage end the thread or the worker
                failures += 1
                wait = min(self.interval * 2.0**failures, MAX_BACKOFF)
                if failures == 1 or failures % 20 == 0:
                    log.warning("celery-kv maintenance: %s (failure %d; next try in %.1f s)",
                                exc, failures, wait)
            self._stop.wait(wait)

    def poll_once(self) -> float:
        """One pass; returns the seconds to sleep before the next."""
        kv = installed(self.app).kv
        for feature in periodic_features(self.app):
            try:
                feature.tick(kv, self.app)
            except Exception as exc:
                log.warning("celery-kv maintenance: %s.tick failed: %s",
                            type(feature).__name__, exc)
        store = delay_store_for(self.app)
        token = f"{self.name}:{uuid.uuid4().hex[:12]}"
        claimed = store.claim(token, BATCH, self.lease)
        if claimed.entries:
            for hook in before_publish:
                hook(claimed)
            sent = [entry.entry_id for entry in claimed.entries
                    if self._publish(entry.entry_id, entry.raw, token)]
            store.ack(sent, token)
            self.published += len(sent)
        if len(claimed.entries) >= BATCH:
            return 0.0
        if claimed.next_due_in is None:
            return self.interval
        return min(claimed.next_due_in, self.interval)

    def _publish(self, entry_id: str, raw: str, token: str) -> bool:
        """Publish one entry; one that fails stays claimed and is tried again after the
        lease (a broker blip), never dropped."""
        try:
            publish_due(self.app, codec.loads(raw), token)
            return True
        except Exception as exc:
            log.warning("celery-kv maintenance: could not publish deferred entry %s: %s "
                        "(tried again in %.0f s)", entry_id, exc, self.lease)
            return False


class Maintenance(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: runs the maintenance thread (``Poller``) in the main process."""

    label = "celery-kv maintenance"
    requires = ("celery.worker.components:Pool",)  # its thread starts after the pool forks

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.poller: Poller | None = None
        self.metrics: Any = None  # (server, thread) serving kv_metrics_port

    def start(self, worker: Any) -> None:
        self.poller = Poller(worker.app, str(getattr(worker, "hostname", "") or "worker"))
        self.poller.start()
        port = installed(worker.app).settings.metrics_port
        if port is not None and self.metrics is None:
            self.metrics = serve_metrics(worker.app, port)

    def stop(self, worker: Any) -> None:
        poller, self.poller = self.poller, None
        if poller is not None:
            poller.stop()
        served, self.metrics = self.metrics, None
        if served is not None:
            served[0].shutdown()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)


def serve_metrics(app: Any, port: int) -> Any:
    """Serve the Prometheus metrics on ``port`` from the worker's main process; a port
    that cannot be had is logged, and the worker runs on without them."""
    try:
        from ..metrics import serve

        served = serve(installed(app).kv, port, addr="0.0.0.0")
    except (ImportError, OSError) as exc:
        log.error("celery-kv: kv_metrics_port=%s: metrics not served: %s", port, exc)
        return None
    log.info("celery-kv: Prometheus metrics on port %s (/metrics)", port)
    return served


def add_to(app: Any) -> None:
    """Add the bootstep to ``app``'s worker blueprint (once)."""
    app.steps["worker"].add(Maintenance)
