"""A daemon thread that renews a lease until stopped, and reports when it cannot.

Used by locks, semaphores and idempotency claims. It renews every ``interval``
seconds; a renewal that answers "not yours any more" ends it at once, and
renewals that keep failing to reach Redis end it once the lease has surely run
out (``ttl`` seconds after the last success).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..errors import KVError

log = logging.getLogger("celery_kv.heartbeat")


class Heartbeat:
    def __init__(
        self,
        name: str,
        ttl: float,
        renew: Callable[[], bool],
        on_lost: Callable[[], None],
        interval: float | None = None,
    ) -> None:
        self.ttl = ttl
        self.interval = interval if interval is not None else max(ttl / 3.0, 0.01)
        self._renew = renew
        self._on_lost = on_lost
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=f"celery-kv-heartbeat:{name}",
                                        daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(self.interval, 1.0))

    def _run(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                still_ours = self._renew()
            except KVError as exc:
                if time.monotonic() - last_ok < self.ttl:
                    log.warning("lease renewal failed, will retry: %s", exc)
                    continue
                still_ours = False
            except Exception:  # a bug in a renew callback must not kill silently
                log.exception("lease renewal raised")
                still_ours = False
            if still_ours:
                last_ok = time.monotonic()
                continue
            if not self._stop.is_set():
                self.lost = True
                try:
                    self._on_lost()
                except Exception:
                    log.exception("lease-lost callback raised")
            return
