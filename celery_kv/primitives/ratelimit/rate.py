"""Rates in Celery's notation: ``"10/s"``, ``"100/m"``, ``"1000/h"``, ``"5/d"``, ``"10"``.

Kept apart from the algorithms (as the ``limits`` library does) so that a rate
means the same thing to every strategy and to Celery's own ``rate_limit``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAMES = {seconds: unit for unit, seconds in UNITS.items()}
_RATE_RE = re.compile(r"^\s*(\d+)\s*(?:/\s*([smhd]))?\s*$")
MIN_PERIOD = 0.001  # TTLs are whole milliseconds
MAX_PERIOD = 366 * 86400.0
MAX_LIMIT = 10**9  # keeps every script's arithmetic exact in Lua's doubles


@dataclass(frozen=True)
class Rate:
    """``limit`` units per ``period`` seconds."""

    limit: int
    period: float

    def __post_init__(self) -> None:
        limit = self.limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"rate limit {limit!r} must be an integer from 1 to {MAX_LIMIT:.0e}")
        period = self.period
        ok = isinstance(period, (int, float)) and not isinstance(period, bool)
        if not ok or not math.isfinite(period) or not MIN_PERIOD <= period <= MAX_PERIOD:
            raise ValueError(
                f"rate period {period!r} must be a number of seconds between "
                f"{MIN_PERIOD} and {MAX_PERIOD:.0f}"
            )
        object.__setattr__(self, "period", float(period))

    @property
    def period_us(self) -> int:
        """The period in whole microseconds, the unit every script counts in."""
        return round(self.period * 1_000_000)

    def __str__(self) -> str:
        unit = _NAMES.get(self.period)
        return f"{self.limit}/{unit}" if unit else f"{self.limit}/{self.period:g}s"


def parse_rate(rate: Any) -> Rate:
    """Parse Celery's notation (``N/s``, ``N/m``, ``N/h``, ``N/d``, bare ``N`` = per second).

    ``N`` must be a positive integer: a fractional count has no meaning for
    requests. An int is read as per second, as Celery reads it; a ``Rate``
    passes through.
    """
    if isinstance(rate, Rate):
        return rate
    if isinstance(rate, int) and not isinstance(rate, bool):
        if rate < 1:
            raise ValueError(f"rate {rate!r} must be a positive number of requests per second")
        return Rate(rate, 1.0)
    if not isinstance(rate, str):
        raise TypeError(
            f"rate {rate!r} must be a string such as '100/m' (or an int, or a Rate), "
            f"not {type(rate).__name__}"
        )
    match = _RATE_RE.match(rate)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"rate {rate!r} is not a rate: write N/s, N/m, N/h or N/d "
            "with N a whole number >= 1, e.g. '100/m'"
        )
    return Rate(int(match.group(1)), UNITS[match.group(2) or "s"])
