"""Lease renewal: every ``interval`` seconds until stopped, reporting when it cannot.

Used by locks, semaphores and idempotency claims. A renewal that answers "not
yours any more" ends it at once; renewals that keep failing to reach Redis end
it once the lease has surely run out (``ttl`` seconds after the last success).

All heartbeats of a process share one daemon thread and a timetable, so a
short task pays for no thread of its own (starting one costs ~0.3 ms here,
more than the Redis round trips of its whole lifecycle). Renewals run one after
another on that thread; each is one script call under the store's bounded
retry policy. After a fork, the child starts with an empty timetable (prefork
children must not inherit the parent's leases) and its own thread on first use.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
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
        self.name = name
        self.ttl = ttl
        self.interval = interval if interval is not None else max(ttl / 3.0, 0.01)
        self._renew = renew
        self._on_lost = on_lost
        self.stopped = False
        self.lost = False
        self._last_ok = time.monotonic()

    def start(self) -> Heartbeat:
        self._last_ok = time.monotonic()
        _timetable.add(self, self._last_ok + self.interval)
        return self

    def stop(self) -> None:
        """No renewal starts after this returns (one already running may finish)."""
        self.stopped = True

    def beat(self) -> float | None:
        """Renew once; the next due time, or None when this heartbeat is over."""
        if self.stopped:
            return None
        try:
            still_ours = self._renew()
        except KVError as exc:
            if time.monotonic() - self._last_ok < self.ttl:
                log.warning("lease renewal of %s failed, will retry: %s", self.name, exc)
                return time.monotonic() + min(self.interval, 1.0)
            still_ours = False
        except Exception:  # a bug in a renew callback must not pass silently
            log.exception("lease renewal of %s raised", self.name)
            still_ours = False
        if still_ours:
            self._last_ok = time.monotonic()
            return self._last_ok + self.interval
        if not self.stopped:
            self.lost = True
            try:
                self._on_lost()
            except Exception:
                log.exception("lease-lost callback of %s raised", self.name)
        return None


class _Timetable:
    """The process's due heartbeats, and the one thread that beats them."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._due: list[tuple[float, int, Heartbeat]] = []
        self._order = itertools.count()
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def add(self, heartbeat: Heartbeat, due: float) -> None:
        with self._wake:
            heapq.heappush(self._due, (due, next(self._order), heartbeat))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celery-kv-heartbeat", daemon=True
                )
                self._thread.start()
            elif self._due[0][2] is heartbeat:
                self._wake.notify()

    def _next(self) -> Heartbeat:
        """Wait for the earliest heartbeat that is due and not stopped."""
        with self._wake:
            while True:
                while self._due and self._due[0][2].stopped:
                    heapq.heappop(self._due)
                if not self._due:
                    self._wake.wait()
                    continue
                due, _, heartbeat = self._due[0]
                wait = due - time.monotonic()
                if wait <= 0:
                    heapq.heappop(self._due)
                    return heartbeat
                self._wake.wait(wait)

    def _run(self) -> None:
        while True:
            heartbeat = self._next()
            due = heartbeat.beat()
            if due is not None:
                with self._wake:
                    heapq.heappush(self._due, (due, next(self._order), heartbeat))


_timetable = _Timetable()
os.register_at_fork(after_in_child=_timetable._reset)
