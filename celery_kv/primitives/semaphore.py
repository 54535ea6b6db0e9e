"""A counting semaphore: up to ``limit`` holders across all processes, each on its own lease.

State: one sorted set ``<prefix>:sem:{<name>}`` whose members are owner tokens
and whose scores are lease ends in server milliseconds. Every script first
drops the leases that ended, so a crashed holder's slot comes back when its own
lease ends, not when the whole key goes quiet. The key expires with its latest
lease, so it never outlives its holders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..store import KeyLike, Store
from ._arguments import short, to_ms
from .lock import Lease


def _check_limit(limit: Any, name: KeyLike) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(
            f"semaphore {short(name)}: limit {limit!r} must be an int >= 1 (number of holders)"
        )
    return limit


class Semaphore(Lease):
    """Up to ``limit`` concurrent holders; this object holds at most one slot, as ``token``.

    ``acquire`` by a token that already holds a slot refreshes its lease (a
    Celery retry re-enters). Blocking waits sleep no longer than until the
    earliest lease may end.
    """

    kind = "semaphore"

    def __init__(
        self,
        store: Store,
        name: KeyLike,
        limit: int,
        ttl: float = 30.0,
        auto_renew: bool = False,
        *,
        token: str | None = None,
        on_lost: Callable[[Semaphore], None] | None = None,
        blocking_timeout: float | None = None,
    ) -> None:
        self.limit = _check_limit(limit, name)
        super().__init__(store, name, ttl, auto_renew, token, on_lost, blocking_timeout)
        self.key = store.keys.key("sem", name)
        self._free_in: float | None = None

    def _try_acquire(self) -> bool:
        reply = self.store.run(
            "semaphore_acquire",
            [self.key],
            [self.token, to_ms(self.ttl), self.limit, self._takeover],
        )
        ok = int(reply[0]) == 1
        self._free_in = None if ok else max(int(reply[2]), 0) / 1000.0
        return ok

    def _wait_hint(self) -> float | None:
        return self._free_in

    def _release(self) -> bool:
        return bool(self.store.run("semaphore_release", [self.key], [self.token]))

    def _extend(self, ttl: float) -> bool:
        return bool(self.store.run("semaphore_extend", [self.key], [self.token, to_ms(ttl)]))

    def owned(self) -> bool:
        """Whether this token holds a live slot now, by server time."""
        return bool(self.store.run("semaphore_owned", [self.key], [self.token]))

    def holders(self) -> int:
        """How many live holders there are now, by server time."""
        return int(self.store.run("semaphore_holders", [self.key]))

    def __enter__(self) -> Semaphore:
        super().__enter__()
        return self

    def __repr__(self) -> str:
        return (
            f"<Semaphore {short(self.name)} limit={self.limit} token={self.token!r} "
            f"ttl={self.ttl}>"
        )
