"""Exceptions raised by celery-kv.

Every exception keeps all of its fields in ``args``, so it is rebuilt by
``cls(*args)`` after Celery's JSON round trip through a result backend and
its message still names the task, the key and the holder (lifecycle rule 8).
"""

from __future__ import annotations


class KVError(Exception):
    """Base class of every celery-kv error."""


class CoordinationUnavailable(KVError):
    """Redis could not be reached within the retry deadline."""

    def __init__(self, operation: str = "", detail: str = "") -> None:
        super().__init__(operation, detail)
        self.operation = operation
        self.detail = detail

    def __str__(self) -> str:
        return f"Redis unavailable during {self.operation!r}: {self.detail}"


class CoordinationFull(CoordinationUnavailable):
    """Redis refused a write because it is full (``maxmemory`` reached under
    ``noeviction``). Like an outage it passes once memory frees: a task that was already
    queued waits under ``kv_on_unavailable``; a new call is refused with this error."""

    def __str__(self) -> str:
        return (f"Redis is full (maxmemory reached under noeviction) during "
                f"{self.operation!r}: {self.detail}; free memory or raise maxmemory")


class CoordinationMisconfigured(KVError):
    """Redis refused this client's configuration: its credentials, its ACL or its TLS.

    Unlike ``CoordinationUnavailable`` this is never retried, and no ``kv_on_unavailable``
    policy runs a task uncoordinated because of it: waiting does not fix a wrong password.
    """

    def __init__(self, operation: str = "", detail: str = "") -> None:
        super().__init__(operation, detail)
        self.operation = operation
        self.detail = detail

    def __str__(self) -> str:
        return f"Redis refused the configuration during {self.operation!r}: {self.detail}"


class _HeldKeyError(KVError):
    """An error about a key that some owner holds: carries task, key and holder."""

    verb = "is held"

    def __init__(self, key: str = "", holder: str | None = None, task_name: str | None = None):
        super().__init__(key, holder, task_name)
        self.key = key
        self.holder = holder
        self.task_name = task_name

    def __str__(self) -> str:
        where = f"task {self.task_name!r} " if self.task_name else ""
        who = f" by {self.holder!r}" if self.holder else ""
        return f"{where}key {self.key!r} {self.verb}{who}"


class LockNotAcquired(_HeldKeyError):
    """The lock could not be had (in time)."""

    verb = "could not be locked; it is held"


class LockLost(_HeldKeyError):
    """A held lock expired or was taken before its owner finished."""

    verb = "was lost; it is now held"


class Superseded(LockLost):
    """A newer call took the key from this run (``on_duplicate="supersede"``): the run
    should stop. A ``LockLost``, so code that stops on a lost lock stops here too."""

    verb = "was superseded by a newer call; it is now held"


class DuplicateTask(_HeldKeyError):
    """A singleton task was enqueued while another instance holds its key."""

    verb = "is already queued or running as task id"

    def __str__(self) -> str:
        where = f"task {self.task_name!r} " if self.task_name else ""
        return f"{where}key {self.key!r} {self.verb} {self.holder!r}"


class IdempotencyInProgress(_HeldKeyError):
    """Another caller is running this idempotency key right now (IETF 409)."""

    verb = "is in progress"


class IdempotencyOutcomeUnknown(_HeldKeyError):
    """A run of this idempotency key started and its lease lapsed without an outcome: its
    worker was killed, or could not reach Redis as the body ended. Its effects may have
    happened, so no duplicate runs it again; ``forget`` the key once you know."""

    verb = "ran, result unknown: its run's lease lapsed without an outcome; run was"

    def __str__(self) -> str:
        return (f"{super().__str__()} (check its effects, then forget the key: "
                "`celery kv idempotency --forget`, or Idempotency.forget)")


class IdempotencyKeyReused(KVError):
    """The same idempotency key arrived with a different request (IETF 422)."""

    def __init__(self, key: str = "", task_name: str | None = None) -> None:
        super().__init__(key, task_name)
        self.key = key
        self.task_name = task_name

    def __str__(self) -> str:
        where = f"task {self.task_name!r} " if self.task_name else ""
        return (
            f"{where}idempotency key {self.key!r} was reused with a different "
            "fingerprint (arguments)"
        )


class ConcurrencyWaitersFull(KVError):
    """A concurrency key already has ``concurrency_max_waiting`` runs waiting for a slot."""

    def __init__(self, key: str = "", max_waiting: int = 0, task_name: str | None = None
                 ) -> None:
        super().__init__(key, max_waiting, task_name)
        self.key = key
        self.max_waiting = max_waiting
        self.task_name = task_name

    def __str__(self) -> str:
        where = f"task {self.task_name!r} " if self.task_name else ""
        return (f"{where}concurrency key {self.key!r} already has {self.max_waiting} runs "
                f"waiting (concurrency_max_waiting={self.max_waiting})")


class RateLimitExceeded(KVError):
    """A rate limit would delay the work past what the caller accepts."""

    def __init__(
        self,
        key: str = "",
        retry_after: float = 0.0,
        task_name: str | None = None,
        limit: str | None = None,
    ) -> None:
        super().__init__(key, retry_after, task_name, limit)
        self.key = key
        self.retry_after = retry_after
        self.task_name = task_name
        self.limit = limit

    def __str__(self) -> str:
        where = f"task {self.task_name!r} " if self.task_name else ""
        which = f" ({self.limit})" if self.limit else ""
        return (
            f"{where}rate limit{which} for key {self.key!r} exceeded; "
            f"retry after {self.retry_after:.3f}s"
        )


class Throttled(KVError):
    """Raise from a rate-limited task's body when a partner answered "429, retry after
    N seconds": the task's limit (``limit``: its name; default the first) admits nothing
    for that identity before ``retry_after`` seconds from now, on every worker, and this
    run is deferred by ``retry_after`` (counted in ``rate_limit_max_delay``, not in
    ``max_retries``). ``self.kv_throttle(retry_after)`` throttles without raising."""

    def __init__(self, retry_after: float = 0.0, limit: str | None = None) -> None:
        super().__init__(retry_after, limit)
        self.retry_after = float(retry_after)
        self.limit = limit

    def __str__(self) -> str:
        which = f" ({self.limit})" if self.limit else ""
        return f"throttled by a partner{which}: retry after {self.retry_after:.3f}s"


__all__ = [
    "ConcurrencyWaitersFull",
    "CoordinationFull",
    "CoordinationMisconfigured",
    "CoordinationUnavailable",
    "DuplicateTask",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "IdempotencyOutcomeUnknown",
    "KVError",
    "LockLost",
    "LockNotAcquired",
    "RateLimitExceeded",
    "Superseded",
    "Throttled",
]
