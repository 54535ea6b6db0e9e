"""celery-kv: Redis coordination for Celery workers, correct under concurrency and crashes."""

from .errors import (
    CoordinationUnavailable,
    DuplicateTask,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    KVError,
    LockLost,
    LockNotAcquired,
    RateLimitExceeded,
)
from .kv import KV
from .primitives.ratelimit import Decision

__version__ = "0.1.0"

__all__ = [
    "KV",
    "CoordinationUnavailable",
    "Decision",
    "DuplicateTask",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "KVError",
    "LockLost",
    "LockNotAcquired",
    "RateLimitExceeded",
]
