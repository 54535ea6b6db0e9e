"""The delay store: deferred messages kept in Redis until they fall due, then published.

Why: a broker countdown is an ETA message held in a worker's memory; on the Redis and
SQS brokers one longer than ``visibility_timeout`` is delivered again. Here a deferred
message waits in Redis instead, and a poller publishes it when it falls due.

Layout, all under one hash tag (``<prefix>:delay:{<namespace>}``), so one script sees it
all (on Redis Cluster one node carries a namespace's store). The Celery face uses one
namespace per broker, so a poller only publishes messages into the broker they were
deferred from:

- ``:due``, a ZSET of entry id -> due time (server ms), or the end of a poller's claim;
- ``:bodies``, a HASH of entry id -> the message as JSON (``codec``);
- ``:claims``, a HASH of entry id -> the token of the poller that claimed it;
- ``:sent:<id>`` (published, not yet run) and ``:used:<id>`` (run by one delivery)
  markers, each a string with a TTL (``marker_ttl``).

The three collections live until the latest due entry (or claim) plus ``grace``: an
entry that no poller publishes within ``grace`` of the last due time is lost with them.

Publishing is two-phase: ``claim`` re-scores due entries to now + lease and records the
claimer; ``ack`` after the broker publish removes them and leaves the sent marker. A
poller that dies between the two loses nothing: its lease runs out and another poller
claims and publishes the entries. A crash after the publish and before the ack publishes
an entry twice; ``consume`` at execution lets exactly one of the copies run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import codec
from .keys import identity
from .store import Store

#: how long the store outlives its latest due entry, when no poller runs (seconds)
DEFAULT_GRACE = 7 * 86400.0
#: how long a sent or used marker lives (seconds): a published copy that runs after its
#: markers are gone is not recognised as a duplicate
DEFAULT_MARKER_TTL = 86400.0


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DueEntry:
    """An entry a poller claimed: its id and its message as stored (JSON text)."""

    entry_id: str
    raw: str

    @property
    def body(self) -> Any:
        return codec.loads(self.raw)


@dataclass(frozen=True)
class Claimed:
    """What ``claim`` took, and seconds until the next entry falls due (None: none left)."""

    entries: list[DueEntry]
    next_due_in: float | None


@dataclass(frozen=True)
class PendingEntry:
    """One waiting entry, for operators: ``due_in`` is negative when overdue."""

    entry_id: str
    due_in: float
    claimed_by: str | None  # the poller publishing it now (the lease end is ``due_in``)
    raw: str | None


class DelayStore:
    """Deferred messages in one Redis, published by pollers when they fall due."""

    def __init__(self, store: Store, namespace: str = "delay", *, grace: float = DEFAULT_GRACE,
                 marker_ttl: float = DEFAULT_MARKER_TTL) -> None:
        if not grace > 0 or not marker_ttl > 0:
            raise ValueError(f"grace={grace!r} and marker_ttl={marker_ttl!r} must be > 0")
        self.store = store
        self.grace_ms = _ms(grace)
        self.marker_ms = _ms(marker_ttl)
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"delay store namespace {namespace!r} must be a non-empty string")
        base = store.keys.key("delay", namespace)
        self.due_key, self.bodies_key, self.claims_key = (
            f"{base}:due", f"{base}:bodies", f"{base}:claims")
        self._base = base

    @property
    def _keys(self) -> tuple[str, str, str]:
        return self.due_key, self.bodies_key, self.claims_key

    def sent_key(self, entry_id: str) -> str:
        return f"{self._base}:sent:{identity(entry_id)}"

    def used_key(self, entry_id: str) -> str:
        return f"{self._base}:used:{identity(entry_id)}"

    def add(self, entry_id: str, delay: float, body: Any, *, what: str = "message") -> bool:
        """Keep ``body`` until ``delay`` seconds from now (server time). False when the
        entry id is known already (waiting, published or run): nothing changes."""
        _check_id(entry_id)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0:
            raise ValueError(f"delay {delay!r} of entry {entry_id!r} must be seconds >= 0")
        raw = codec.dumps(body, what=f"{what} (delay store entry {entry_id!r})")
        reply = self.store.run(
            "delay_add", (*self._keys, self.sent_key(entry_id), self.used_key(entry_id)),
            (entry_id, _ms(delay), raw, self.grace_ms))
        return _text(reply[0]) == "ok"

    def claim(self, worker_token: str, max_n: int, lease: float) -> Claimed:
        """Claim up to ``max_n`` due entries for ``lease`` seconds (publish, then ``ack``)."""
        if max_n < 1 or not lease > 0:
            raise ValueError(f"claim of {max_n!r} entries for {lease!r} s: need >= 1 and > 0")
        reply = self.store.run("delay_claim", self._keys,
                               (worker_token, max_n, _ms(lease), self.grace_ms))
        wait = int(reply[0])
        entries = [DueEntry(_text(reply[i]), _text(reply[i + 1]))
                   for i in range(1, len(reply), 2)]
        return Claimed(entries, None if wait < 0 else wait / 1000.0)

    def ack(self, entry_ids: Iterable[str], worker_token: str) -> int:
        """The broker took these entries' messages: they leave the store (a sent marker
        stays). Entries this token no longer holds are left alone. Returns how many left."""
        ids = list(entry_ids)
        if not ids:
            return 0
        markers = [self.sent_key(i) for i in ids]
        return int(self.store.run("delay_ack", (*self._keys, *markers),
                                  (worker_token, self.marker_ms, *ids)))

    def consume(self, entry_id: str, run_token: str) -> str:
        """At execution: ``"ok"`` (this delivery runs it), ``"duplicate"`` (another copy
        ran it: do not run), or ``"unknown"`` (its markers are gone: run it, not lose it)."""
        _check_id(entry_id)
        reply = self.store.run(
            "delay_consume", (*self._keys, self.sent_key(entry_id), self.used_key(entry_id)),
            (entry_id, run_token, self.marker_ms))
        return _text(reply)

    def remove(self, entry_id: str) -> bool:
        """Take a waiting (or claimed) entry out before it is published."""
        _check_id(entry_id)
        return bool(self.store.run("delay_remove", self._keys, (entry_id,)))

    def count(self) -> int:
        """Entries waiting or being published."""
        due = self.due_key
        return int(self.store.command("delay_count", lambda c: c.zcard(due), retry_safe=True))

    def pending(self, limit: int = 100) -> tuple[int, list[PendingEntry]]:
        """(entries in all, the first ``limit`` by due time)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit={limit!r} must be an int >= 1")
        reply = self.store.run("delay_pending", self._keys, (limit,))
        total, now = int(reply[0]), int(reply[1])
        found = []
        for i in range(2, len(reply), 4):
            claimer, raw = _text(reply[i + 2]), _text(reply[i + 3])
            found.append(PendingEntry(_text(reply[i]), (int(float(reply[i + 1])) - now) / 1000.0,
                                      claimer or None, raw or None))
        return total, found


def _check_id(entry_id: Any) -> None:
    if not isinstance(entry_id, str) or not entry_id or len(entry_id) > 200:
        raise ValueError(f"delay store entry id {entry_id!r} must be a non-empty string "
                         "of at most 200 characters")


__all__ = ["DEFAULT_GRACE", "DEFAULT_MARKER_TTL", "Claimed", "DelayStore", "DueEntry",
           "PendingEntry"]
