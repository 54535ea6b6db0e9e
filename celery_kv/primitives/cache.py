"""A JSON cache with a versioned namespace, single-flight fills and XFetch early recompute.

Layout: every key of one namespace shares the hash tag ``{namespace}``, so one slot (one
cluster node) holds a namespace. A script may only touch keys of one slot, and that is what
lets ``clear()`` be O(1) and immediate: each value records the namespace version it was
written under, and the script that reads it compares that with the namespace's version key
in the same atomic step. A namespace is therefore a unit of placement too: spread very hot
data over several namespaces. ``clear()`` moves the version to max(old + 1, server time in
microseconds); a missing version key starts from server time too, so versions only grow
and a lost version key never makes old values readable again. Cleared values stay in
Redis, unreadable, until their own TTL ends. The version key lives at least 30 days (and
twice the longest value TTL), refreshed on every write.

``get_or_set`` runs ``compute`` once for a crowd of concurrent misses (single flight): the
caller whose miss comes first takes a compute lease of ``lock_timeout`` seconds; the others
wait on a Redis list (BLPOP, no spinning) until the value is filled, the computer gives up,
or the lease runs out, and then look again. The lease is deliberately not renewed, so a
hung computer holds the others up for at most ``lock_timeout``: a computer that dies, hangs
or runs past it loses the lease and one waiter takes over. Set ``lock_timeout`` above your
slowest compute: a value is stored only by the caller still holding the lease, so one
computed past it is returned to its caller but not cached. ``set()`` and ``delete()`` drop
the key's lease, so a value computed before them never overwrites them (invalidation wins
over an in-flight fill), as ``clear()`` does through the version. Before a value expires,
one caller recomputes it early with the XFetch probability (Vattani et al., 2015) while
everyone else keeps reading the old value; if that early compute raises, the exception
propagates like any other compute error.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import KVError
from ..store import KeyLike, Store, codec, identity
from ..store.keys import validate_namespace
from ._arguments import positive_seconds, short, text, to_ms

log = logging.getLogger("celery_kv.cache")

DEFAULT_LOCK_TIMEOUT = 10.0
_VERSION_TTL_MIN_MS = 30 * 24 * 3600 * 1000  # the namespace version outlives every value
_MAX_WAIT_SLICE = 1.0  # stay under the client's socket timeout while blocked in BLPOP
_FETCH_STATUS = {"r": "refresh", "c": "compute", "w": "wait"}


@dataclass(frozen=True)
class _Keys:
    version: str
    value: str
    lease: str
    waiters: str
    notify: str


class Cache:
    """A cache namespace: ``get``/``set``/``delete``, ``get_or_set`` and O(1) ``clear``.

    ``ttl`` is the default lifetime of a value in seconds. ``beta`` scales XFetch's early
    recompute (0 turns it off; above 1 recomputes earlier). ``lock_timeout`` (default 10 s)
    is the single-flight compute lease: how long other callers wait for one computer before
    one of them takes over.
    """

    def __init__(
        self,
        store: Store,
        namespace: str,
        ttl: float = 300.0,
        *,
        beta: float = 1.0,
        lock_timeout: float | None = None,
    ) -> None:
        self.store = store
        self.namespace = validate_namespace(namespace)
        self.ttl = positive_seconds(f"cache {namespace!r} ttl", ttl)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (
            math.isfinite(beta) and beta >= 0
        ):
            raise ValueError(f"cache {namespace!r} beta {beta!r} must be a finite number >= 0")
        self.beta = float(beta)
        self.lock_timeout = positive_seconds(
            f"cache {namespace!r} lock_timeout",
            DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout,
        )
        self._version_key = store.keys.key("cache", namespace, "ver")
        self._head = store.keys.head("cache", namespace)  # + "<role>:<identity>"
        self._random: Callable[[], float] = random.random  # tests pin it

    # -- plain operations: one script each -------------------------------------------------

    def get(self, key: KeyLike, default: Any = None) -> Any:
        """The cached value, or ``default`` on a miss. A cached ``None``/``0``/``""`` is a hit."""
        value_key = self._head + "v:" + identity(key)
        raw = self.store.run("cache_get", (self._version_key, value_key))
        return default if raw is None else codec.loads(raw)

    def set(self, key: KeyLike, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` (JSON) for ``ttl`` seconds (default: the cache's ttl)."""
        seconds = self._ttl(ttl, key)
        raw = self._encode(key, value)
        args = (raw, to_ms(seconds), self._version_ms(seconds))
        ident = identity(key)  # the lease goes too: this write wins over an in-flight fill
        keys = (self._version_key, self._head + "v:" + ident, self._head + "lease:" + ident)
        self.store.run("cache_set", keys, args)

    def delete(self, key: KeyLike) -> bool:
        """Remove one value; True when a live value was there."""
        keys = self._keys(key)
        return bool(self.store.run("cache_delete", [keys.version, keys.value, keys.lease]))

    def clear(self) -> None:
        """Invalidate every value of the namespace at once (one O(1) script)."""
        self.store.run("cache_clear", [self._version_key], [self._version_ms(self.ttl)])

    # -- single flight -----------------------------------------------------------------------

    def get_or_set(self, key: KeyLike, compute: Callable[[], Any], ttl: float | None = None) -> Any:
        """The cached value, or ``compute()`` run by one caller for all concurrent misses.

        Every caller gets the value as it round-trips through JSON, so the computer and the
        waiters see the same thing. If ``compute`` raises, the lease is released, a waiter
        takes over, and the exception propagates to this caller.
        """
        seconds = self._ttl(ttl, key)
        keys = self._keys(key)
        token = secrets.token_hex(16)
        while True:
            status, raw, ms, version = self._fetch(keys, token)
            if status == "hit":
                return codec.loads(raw)
            if status == "wait":
                self._wait(keys, ms / 1000.0)
                continue
            return self._compute(key, keys, token, version, compute, seconds)

    def _fetch(self, keys: _Keys, token: str) -> tuple[str, str, int, str]:
        # XFetch: recompute early when now - delta*beta*log(rand) >= expiry, rand in (0, 1].
        # The client draws the random factor; the script compares it on server time.
        factor = -self.beta * math.log(1.0 - self._random()) if self.beta else 0.0
        reply = text(self.store.run(
            "cache_fetch",
            (keys.version, keys.value, keys.lease, keys.waiters, keys.notify),
            (token, to_ms(self.lock_timeout), repr(factor), self._version_ms(self.ttl)),
        ))
        # One string (see the script): "h<value>" on a plain hit, else
        # "<status letter><ms> <version>[ <value>]".
        if reply[0] == "h":
            return "hit", reply[1:], 0, ""
        head, version, *value = reply[1:].split(" ", 2)
        return _FETCH_STATUS[reply[0]], value[0] if value else "", int(head), version

    def _wait(self, keys: _Keys, lease_left: float) -> None:
        """Block until a fill or abandon wakes us, or the computer's lease should be over."""
        timeout = min(max(lease_left + 0.05, 0.01), _MAX_WAIT_SLICE)
        # A failed wait is harmless: the next fetch decides, and raises if Redis is gone.
        with contextlib.suppress(KVError):
            self.store.command(
                "cache_wait", lambda c: c.blpop([keys.notify], timeout=timeout), retry_safe=False
            )

    def _compute(
        self,
        key: KeyLike,
        keys: _Keys,
        token: str,
        version: str,
        compute: Callable[[], Any],
        seconds: float,
    ) -> Any:
        started = time.perf_counter()
        try:
            raw = self._encode(key, compute())
        except BaseException:
            self._abandon(keys, token)
            raise
        delta_ms = (time.perf_counter() - started) * 1000.0
        stored = self.store.run(
            "cache_fill",
            [keys.version, keys.value, keys.lease, keys.waiters, keys.notify],
            [token, raw, to_ms(seconds), f"{delta_ms:.3f}", version,
             self._version_ms(seconds), to_ms(self.lock_timeout)],
        )
        if not stored and delta_ms > self.lock_timeout * 1000.0:  # else: invalidated meanwhile
            log.warning(
                "compute of %s in cache %r took %.1f s, past its lock_timeout of %.1f s: "
                "the value was returned but not cached",
                short(key), self.namespace, delta_ms / 1000.0, self.lock_timeout,
            )
        return codec.loads(raw)

    def _abandon(self, keys: _Keys, token: str) -> None:
        try:
            self.store.run(
                "cache_abandon",
                [keys.lease, keys.waiters, keys.notify],
                [token, to_ms(self.lock_timeout)],
            )
        except KVError as exc:  # the lease runs out by itself; keep the caller's exception
            log.warning("could not release the compute lease of %s: %s", keys.lease, exc)

    # -- helpers -------------------------------------------------------------------------------

    def _keys(self, key: KeyLike) -> _Keys:
        ident, head = identity(key), self._head
        return _Keys(
            version=self._version_key,
            value=head + "v:" + ident,
            lease=head + "lease:" + ident,
            waiters=head + "waiters:" + ident,
            notify=head + "notify:" + ident,
        )

    def _ttl(self, ttl: float | None, key: KeyLike) -> float:
        if ttl is None:
            return self.ttl
        return positive_seconds(f"cache {self.namespace!r} key {short(key)}: ttl", ttl)

    def _version_ms(self, seconds: float) -> int:
        return max(_VERSION_TTL_MIN_MS, 2 * to_ms(seconds))

    def _encode(self, key: KeyLike, value: Any) -> str:
        return codec.dumps(
            value, what=f"cache value for key {short(key)} in namespace {self.namespace!r}"
        )

    def __repr__(self) -> str:
        return f"Cache(namespace={self.namespace!r}, ttl={self.ttl!r})"
