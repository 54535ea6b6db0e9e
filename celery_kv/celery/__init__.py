"""The Celery face of celery-kv: ``install(app)`` and the task bases."""

from .install import install
from .task import CachedTask, IdempotentTask, KVTask, RateLimitedTask, SingletonTask

__all__ = [
    "CachedTask",
    "IdempotentTask",
    "KVTask",
    "RateLimitedTask",
    "SingletonTask",
    "install",
]
