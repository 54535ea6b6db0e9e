"""The retry policy for Redis calls: tenacity, bounded in time, connection failures only.

A refused password, an ACL denial or a failed TLS handshake is not an outage: it is
raised at once as ``CoordinationMisconfigured``, never retried, so no on-unavailable
policy runs a task uncoordinated because of it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.exceptions as rexc
from tenacity import (
    RetryCallState,
    Retrying,
    before_sleep_log,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from ..errors import CoordinationFull, CoordinationMisconfigured, CoordinationUnavailable, KVError

log = logging.getLogger("celery_kv.store")
T = TypeVar("T")

_TRANSIENT = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, rexc.TryAgainError)


_AUTH_HINT = "check the user name and password of the Redis URL (kv_redis_url / --url)"
_TLS_HINT = (
    "check the TLS settings: the server's certificate must verify against ssl_ca_certs "
    "(KV.from_url(url, ssl_ca_certs=...) or ?ssl_ca_certs=...) and name the host you connect to"
)


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def acl_denial(exc: BaseException) -> BaseException | None:
    """The ACL refusal behind ``exc``, if that is what it is: NOPERM for a command, or the
    ResponseError a script gets when it calls a command or key its user may not use."""
    for cause in causes(exc):
        text = str(cause)
        if (isinstance(cause, rexc.NoPermissionError) or text.startswith("NOPERM")
                or "The user executing the script can't" in text):
            return cause
    return None


def misconfiguration(exc: BaseException) -> str | None:
    """What is wrong with the client's configuration, when ``exc`` says so; else None.

    redis-py raises ``AuthenticationError`` (a ``ConnectionError``) for WRONGPASS, NOAUTH and
    AUTH without a configured password, ``AuthenticationWrongNumberOfArgsError`` for a user
    name sent to a server without ACLs, ``NoPermissionError`` for NOPERM, and wraps
    ``ssl.SSLCertVerificationError`` (or another ``ssl.SSLError``) in a ``ConnectionError``.
    """
    denial = acl_denial(exc)
    if denial is not None:
        return (f"the ACL user may not do this ({denial}); give it the rules that "
                "celery_kv.store.acl.acl_rules(prefix) prints (celery kv doctor shows them)")
    for cause in causes(exc):
        text = str(cause)
        if isinstance(cause, rexc.AuthenticationError | rexc.AuthenticationWrongNumberOfArgsError
                      ) or text.startswith(("WRONGPASS", "NOAUTH")):
            return f"authentication refused ({text}); {_AUTH_HINT}"
        if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
            return f"TLS certificate verification failed ({text}); {_TLS_HINT}"
        if type(cause) is ssl.SSLError:  # not SSLEOFError & co: a connection cut mid-handshake
            return f"TLS handshake failed ({text}); {_TLS_HINT}"
    return None


def as_kv_error(operation: str, exc: BaseException) -> KVError:
    """``exc`` as celery-kv reports it: misconfigured, or else unavailable."""
    wrong = misconfiguration(exc)
    if wrong is not None:
        return CoordinationMisconfigured(operation, wrong)
    return CoordinationUnavailable(operation, f"{type(exc).__name__}: {exc}")


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
            if not isinstance(exc, _TRANSIENT) or misconfiguration(exc) is not None:
                return False
            return retry_safe or failed_before_send(exc)

        # The fast path: a healthy call pays nothing for the retry machinery.
        try:
            return fn()
        except _TRANSIENT as exc:
            if not transient(exc):
                raise as_kv_error(operation, exc) from exc
            log.warning("Redis call %s failed, retrying with backoff: %s", operation, exc)
        except rexc.ResponseError as exc:
            _refused(operation, exc)
            raise

        def give_up(state: RetryCallState) -> Any:
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None and misconfiguration(exc) is not None:
                raise as_kv_error(operation, exc) from exc
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
        except _TRANSIENT as exc:  # refused, or an unsafe script lost its reply
            raise as_kv_error(operation, exc) from exc
        except rexc.ResponseError as exc:
            _refused(operation, exc)
            raise


def _refused(operation: str, exc: rexc.ResponseError) -> None:
    """Raise ``CoordinationMisconfigured`` when a ResponseError is the server refusing this
    client (ACL, AUTH), ``CoordinationFull`` when it is out of memory; any other
    ResponseError is the caller's own and goes on as it is."""
    if misconfiguration(exc) is not None:
        raise as_kv_error(operation, exc) from exc
    if isinstance(exc, rexc.OutOfMemoryError) or str(exc).startswith("OOM "):
        raise CoordinationFull(operation, str(exc)) from exc


def keep_trying(fn: Callable[[], T], deadline: float, what: str) -> T:
    """Call ``fn`` until Redis answers (an outage, or a full Redis, passes), for up to
    ``deadline`` seconds; then raise the last ``CoordinationUnavailable``.

    For what must not be lost to a short outage (a body's outcome), where the ordinary
    ``kv_retry_deadline`` of a decision is too short.
    """
    retrying = Retrying(
        retry=retry_if_exception_type(CoordinationUnavailable),  # CoordinationFull too
        stop=stop_after_delay(deadline),
        wait=wait_random_exponential(multiplier=0.25, max=5.0),
        before_sleep=lambda state: log.warning(
            "%s: not stored yet (%s); retrying for up to %ss", what,
            state.outcome.exception() if state.outcome else "?", deadline),
        reraise=True,
    )
    return retrying(fn)
