"""The retry policy for Redis calls: tenacity, bounded in time, connection failures only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.exceptions as rexc
from tenacity import (
    RetryCallState,
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from ..errors import CoordinationUnavailable

log = logging.getLogger("celery_kv.store")
T = TypeVar("T")

_TRANSIENT = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, rexc.TryAgainError)


def failed_before_send(exc: BaseException) -> bool:
    """True when redis-py failed while connecting, so the command never reached Redis."""
    if isinstance(exc, rexc.BusyLoadingError | rexc.TryAgainError):
        return True  # the server refused to run it
    text = str(exc)
    return "connecting to" in text or "Timeout connecting" in text


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for at most ``deadline`` seconds in all."""

    deadline: float = 5.0
    initial: float = 0.05
    max_wait: float = 1.0

    def __post_init__(self) -> None:
        if not self.deadline >= 0:
            raise ValueError(f"retry deadline {self.deadline!r} must be >= 0 seconds")

    def call(self, operation: str, fn: Callable[[], T], *, retry_safe: bool) -> T:
        def transient(exc: BaseException) -> bool:
            if not isinstance(exc, _TRANSIENT):
                return False
            return retry_safe or failed_before_send(exc)

        # The fast path: a healthy call pays nothing for the retry machinery.
        try:
            return fn()
        except _TRANSIENT as exc:
            if not transient(exc):
                raise CoordinationUnavailable(operation, f"{type(exc).__name__}: {exc}") from exc
            log.warning("Redis call %s failed, retrying with backoff: %s", operation, exc)

        def give_up(state: RetryCallState) -> Any:
            exc = state.outcome.exception() if state.outcome else None
            raise CoordinationUnavailable(
                operation, f"{type(exc).__name__}: {exc} (after {state.attempt_number} attempts)"
            ) from exc

        retrying = Retrying(
            retry=retry_if_exception(transient),
            stop=stop_after_delay(self.deadline),
            wait=wait_random_exponential(multiplier=self.initial, max=self.max_wait),
            before_sleep=before_sleep_log(log, logging.WARNING),
            retry_error_callback=give_up,
            reraise=False,
        )
        try:
            return retrying(fn)
        except _TRANSIENT as exc:  # not retryable (an unsafe script lost its reply)
            raise CoordinationUnavailable(operation, f"{type(exc).__name__}: {exc}") from exc
