"""Argument checks and unit conversions shared by every primitive (and the Celery options).

Each primitive validates its options when it is built, so a bad TTL fails at once with a
message that names it, and nothing reaches Redis.
"""

from __future__ import annotations

import math
from typing import Any

MAX_SECONDS = 1e9  # about 31 years: beyond this a TTL is a mistake (Redis refuses ~9.2e15 s)


def is_seconds(value: Any, maximum: float = math.inf) -> bool:
    """True for a real number of seconds, finite, > 0 and at most ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and 0 < value <= maximum


def positive_seconds(what: str, value: Any, maximum: float = MAX_SECONDS) -> float:
    """``value`` as finite seconds > 0 (at most ``maximum``), or a ValueError naming ``what``.

    Every TTL a primitive takes goes through here, so none reaches Redis as a number
    it refuses (PEXPIRE past 2**63 ms) or one that would never expire in practice.
    """
    if is_seconds(value, maximum):
        return float(value)
    bound = f" (at most {maximum:.0e})" if math.isfinite(maximum) else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} {value!r} must be a number of seconds > 0{bound}")
    raise ValueError(f"{what} {value!r} must be a finite number of seconds > 0{bound}")


def to_ms(seconds: float) -> int:
    """Whole milliseconds for Redis, never 0 (PEXPIRE 0 would delete at once)."""
    return max(1, round(seconds * 1000))


def text(raw: Any) -> str:
    """A reply as ``str``, whether the client decodes responses or not."""
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)


def short(key: Any, limit: int = 80) -> str:
    """``repr(key)`` cut to ``limit`` characters, for error messages about 10 KB keys."""
    shown = repr(key)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
