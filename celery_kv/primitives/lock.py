"""Owner-token lock with a fencing counter, a lease and an optional heartbeat.

State, all in one hash tag so it works on Redis Cluster:

- ``<prefix>:lock:{<name>}``: a hash ``{owner, fence}`` whose TTL is the lease;
- ``<prefix>:lock:{<name>}:fence``: the fence counter.

Only the owner token releases or extends (one script each); a token that
already holds the lock re-enters it, keeping its fence, which is how a Celery
retry (same task id) comes back to its own lock.

Fencing bound. The counter is kept ``fence_ttl`` seconds (30 days by default)
after the last acquire, so idle lock names do not pile up forever. When the
counter is missing (first use, expired, deleted) it starts again from the
server time in microseconds (``TIME``) and is then incremented. A counter that
started at time ``S`` and was used ``N`` times handed out fences no higher than
``S + N``; a counter started later at ``S'`` hands out fences above ``S'``.
So fences keep strictly increasing, across holders and counter lifetimes, as
long as the lock name was acquired less than once per microsecond on average
since ``S`` (a single Redis runs far slower than that per key) and the server
clock does not step back (a failover to a replica whose clock lags, at the very
moment the counter is missing, is the one way to break it). Fences are about
1.7e15 today and stay below 2**53, exact in Lua's doubles, until about 2255.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..errors import LockNotAcquired
from ..store import KeyLike, Store
from ._arguments import MAX_SECONDS, positive_seconds, short, text, to_ms
from .heartbeat import Heartbeat

DEFAULT_FENCE_TTL = 30 * 86400.0
_FIRST_PAUSE = 0.005
_MAX_PAUSE = 0.25
_MIN_PAUSE = 0.001


def check_seconds(value: Any, what: str, owner: str) -> float:
    """A finite number of seconds > 0 (at most MAX_SECONDS), or a ValueError naming both."""
    return positive_seconds(f"{owner}: {what}", value, MAX_SECONDS)


def check_timeout(value: Any, owner: str) -> float | None:
    """None (wait forever) or a finite number of seconds >= 0."""
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{owner}: blocking timeout {value!r} must be None or a finite number of seconds >= 0"
        )
    return float(value)


def _check_token(token: Any, owner: str) -> str:
    if token is None:
        return secrets.token_hex(16)
    if not isinstance(token, str) or not token:
        raise ValueError(f"{owner}: owner token {token!r} must be a non-empty string")
    return token


def pause(attempt: int, hint: float | None, remaining: float | None) -> float:
    """How long a blocking acquire sleeps before its next attempt.

    Exponential backoff with jitter, so waiters spread out instead of polling
    in step; no longer than until the holder's lease may end (``hint``), nor
    past the caller's deadline; never zero, so it never spins.
    """
    ceiling = min(_MAX_PAUSE, _FIRST_PAUSE * 2**attempt)
    chosen = random.uniform(ceiling / 2, ceiling)
    if hint is not None:
        chosen = min(chosen, max(hint, _MIN_PAUSE))
    if remaining is not None:
        chosen = min(chosen, remaining)
    return max(chosen, _MIN_PAUSE)


class Lease:
    """What a lock and a semaphore share: an owner token on a lease in Redis.

    Subclasses supply the scripts (``_try_acquire``, ``_release``, ``_extend``,
    ``owned``); this class adds blocking waits, renewal by a heartbeat, loss
    detection and the context manager.
    """

    kind = "lease"

    def __init__(
        self,
        store: Store,
        name: KeyLike,
        ttl: float,
        auto_renew: bool,
        token: str | None,
        on_lost: Callable[[Any], None] | None,
        blocking_timeout: float | None,
    ) -> None:
        self.store = store
        self.name = name
        self.ttl = check_seconds(ttl, "ttl", self.who)
        self.auto_renew = bool(auto_renew)
        self.token = _check_token(token, self.who)
        self.on_lost = on_lost
        self.blocking_timeout = check_timeout(blocking_timeout, self.who)
        self.lost = False
        self._heartbeat: Heartbeat | None = None
        self._takeover = ""

    @property
    def who(self) -> str:
        """This lease as error messages name it: kind and (shortened) name."""
        return f"{self.kind} {short(self.name)}"

    # -- what subclasses provide -------------------------------------------------

    def _try_acquire(self) -> bool:
        raise NotImplementedError

    def _wait_hint(self) -> float | None:
        """Seconds until a slot may free up by expiry, as the last failed attempt said."""
        return None

    def _release(self) -> bool:
        raise NotImplementedError

    def _extend(self, ttl: float) -> bool:
        raise NotImplementedError

    def owned(self) -> bool:
        raise NotImplementedError

    # -- the shared behaviour ----------------------------------------------------

    def acquire(
        self, blocking: bool = False, timeout: float | None = None, *, takeover: str | None = None
    ) -> bool:
        """Take it (or re-enter it); when ``blocking``, wait up to ``timeout`` s (None: forever).

        ``takeover``: also take it over, in the same script, when exactly that
        token holds it (a Celery task's queued claim handed to its running run).
        """
        timeout = check_timeout(timeout, self.who)
        self._takeover = takeover or ""
        if not blocking:
            if timeout is not None:
                raise ValueError(f"{self.who}: a timeout needs blocking=True")
            return self._acquired(self._try_acquire())
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while not self._try_acquire():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return self._acquired(False)
            time.sleep(pause(attempt, self._wait_hint(), remaining))
            attempt += 1
        return self._acquired(True)

    def _acquired(self, ok: bool) -> bool:
        if ok:
            self.lost = False
            if self.auto_renew:
                self.start_renewal()
        return ok

    def release(self) -> bool:
        """Give it back; False when it was no longer ours (expired, taken). Stops renewal."""
        self.stop_renewal()
        return self._release()

    def extend(self, ttl: float | None = None) -> bool:
        """Set the remaining lease to ``ttl`` seconds (default: the ttl); owner-checked."""
        seconds = self.ttl if ttl is None else check_seconds(ttl, "ttl", self.who)
        return self._extend(seconds)

    def start_renewal(self) -> None:
        """Renew the lease every ttl/3 from a daemon thread until release or loss."""
        if self._heartbeat is not None and not self._heartbeat.lost:
            return
        self._heartbeat = Heartbeat(
            f"{self.kind}:{short(self.name)}", self.ttl, lambda: self._extend(self.ttl),
            self._on_heartbeat_lost,
        ).start()

    def stop_renewal(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()

    def _on_heartbeat_lost(self) -> None:
        self.lost = True
        if self.on_lost is not None:
            self.on_lost(self)

    def _holder(self) -> str | None:
        """Who holds it, as the last failed attempt said (for LockNotAcquired)."""
        return None

    def __enter__(self) -> Lease:
        if not self.acquire(blocking=True, timeout=self.blocking_timeout):
            key = self.name if isinstance(self.name, str) else str(self.name)
            raise LockNotAcquired(key=key, holder=self._holder())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {short(self.name)} token={self.token!r}>"


class Lock(Lease):
    """A lock one owner token holds at a time, with a fence that only goes up.

    ``holder`` and ``holder_ttl`` tell, after an acquire, who holds the lock
    and for how many more seconds (this token after a success), with no second
    round trip; ``reentered`` tells that this token already held it. ``fence``
    is the fencing token of the current holding: hand it to the resource you
    protect so it can refuse writes from an older holder.
    """

    kind = "lock"

    def __init__(
        self,
        store: Store,
        name: KeyLike,
        ttl: float = 30.0,
        auto_renew: bool = False,
        *,
        token: str | None = None,
        on_lost: Callable[[Lock], None] | None = None,
        fence_ttl: float = DEFAULT_FENCE_TTL,
        blocking_timeout: float | None = None,
    ) -> None:
        super().__init__(store, name, ttl, auto_renew, token, on_lost, blocking_timeout)
        self.fence_ttl = check_seconds(fence_ttl, "fence_ttl", f"lock {short(name)}")
        self.key = store.keys.key("lock", name)
        self.fence_key = store.keys.key("lock", name, "fence")
        self.holder: str | None = None
        self.holder_ttl: float | None = None
        self.reentered = False  # the last successful acquire found the lock already ours
        self._fence: int | None = None

    @property
    def fence(self) -> int | None:
        """The fencing token of this holding; None when not acquired (or after release)."""
        return self._fence

    def _try_acquire(self) -> bool:
        reply = self.store.run(
            "lock_acquire", [self.key, self.fence_key],
            [self.token, to_ms(self.ttl), to_ms(self.fence_ttl), self._takeover],
        )
        status = int(reply[0])
        if status:
            self._fence = int(reply[1])
            self.holder, self.holder_ttl = self.token, self.ttl
            self.reentered = status == 2
            return True
        pttl = int(reply[2])
        self._fence = None
        self.holder = text(reply[1])
        self.holder_ttl = pttl / 1000.0 if pttl >= 0 else None
        return False

    def _wait_hint(self) -> float | None:
        return self.holder_ttl

    def _release(self) -> bool:
        self._fence = None
        return bool(self.store.run("lock_release", [self.key], [self.token]))

    def _extend(self, ttl: float) -> bool:
        return bool(self.store.run("lock_extend", [self.key], [self.token, to_ms(ttl)]))

    def owned(self) -> bool:
        """Whether this token holds the lock now, as Redis says (not a local flag)."""
        return bool(self.store.run("lock_owned", [self.key], [self.token]))

    def _holder(self) -> str | None:
        return self.holder

    def __enter__(self) -> Lock:
        super().__enter__()
        return self


@dataclass(frozen=True)
class LockInfo:
    """A held lock, for operators: the Redis key, who holds it, for how long, its fence."""

    key: str
    owner: str
    ttl: float | None  # seconds left on the lease; None if the key has no TTL
    fence: int | None
    name: KeyLike | None = None  # the lock name, when known (describe); None from iter_locks


def _info(store: Store, key: str, name: KeyLike | None) -> LockInfo | None:
    reply = store.run("lock_info", [key])
    if not reply:
        return None
    fence, pttl = text(reply[1]), int(reply[2])
    return LockInfo(
        key=key,
        owner=text(reply[0]),
        ttl=pttl / 1000.0 if pttl >= 0 else None,
        fence=int(fence) if fence else None,
        name=name,
    )


def describe(store: Store, name: KeyLike) -> LockInfo | None:
    """Who holds lock ``name``, for how long and with which fence; None when it is free."""
    return _info(store, store.keys.key("lock", name), name)


def iter_locks(store: Store) -> Iterator[LockInfo]:
    """Every held lock under the prefix, found by SCAN (never KEYS), on every cluster node."""
    pattern = store.keys.pattern("lock")
    found = store.command(
        "lock_scan",
        lambda client: [text(k) for k in client.scan_iter(match=pattern, count=1000)],
        retry_safe=True,
    )
    for key in sorted(found):
        if not key.endswith("}"):  # a fence counter (":fence" after the tag), not a lock
            continue
        info = _info(store, key, None)
        if info is not None:  # it may have been released since the SCAN
            yield info


def break_lock(store: Store, name: KeyLike) -> bool:
    """Remove lock ``name`` whoever holds it (operators: ``celery kv unlock``).

    The fence counter stays, so the next holder still gets a higher fence.
    """
    key = store.keys.key("lock", name)
    return bool(store.command("lock_break", lambda client: client.delete(key), retry_safe=True))
