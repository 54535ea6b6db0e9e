"""celery-kv: Redis coordination for Celery workers, correct under concurrency and crashes."""

from . import signals
from .celery import (
    CachedTask,
    IdempotentTask,
    KVTask,
    RateLimitedTask,
    SingletonTask,
    install,
)
from .errors import (
    ConcurrencyWaitersFull,
    CoordinationFull,
    CoordinationMisconfigured,
    CoordinationUnavailable,
    DuplicateTask,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    IdempotencyOutcomeUnknown,
    KVError,
    LockLost,
    LockNotAcquired,
    RateLimitExceeded,
    Superseded,
    Throttled,
)
from .kv import KV
from .primitives.ratelimit import Decision

__version__ = "0.1.0"


__all__ = [
    "KV",
    "CachedTask",
    "ConcurrencyWaitersFull",
    "CoordinationFull",
    "CoordinationMisconfigured",
    "CoordinationUnavailable",
    "Decision",
    "DuplicateTask",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "IdempotencyOutcomeUnknown",
    "IdempotentTask",
    "KVError",
    "KVTask",
    "LockLost",
    "LockNotAcquired",
    "RateLimitExceeded",
    "RateLimitedTask",
    "SingletonTask",
    "Superseded",
    "Throttled",
    "install",
    "signals",
]
