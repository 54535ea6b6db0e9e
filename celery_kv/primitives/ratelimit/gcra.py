"""GCRA: the generic cell rate algorithm (the default).

One key per identity holds its theoretical arrival time (TAT), a short integer
string that expires when the TAT is reached: the smallest state of any
algorithm here and no memory at all for an idle identity. It admits ``burst``
at once and then one unit per ``period / limit``; over any interval of length
``I`` it admits at most ``burst + I * limit / period``.

The script counts in whole microseconds, so the emission interval is rounded
up to the next microsecond: the effective rate never exceeds the nominal one
(it is 1,000,000/s at most).
"""

from __future__ import annotations

from .base import Algorithm
from .rate import Rate


class GCRA(Algorithm):
    name = "gcra"
    script = "ratelimit_gcra"

    def __init__(self, rate: Rate, burst: int | None = None) -> None:
        if burst is None:
            burst = rate.limit
        elif isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst {burst!r} must be an integer >= 1 (or None for the limit)")
        self.rate = rate
        self.burst = burst

    @property
    def capacity(self) -> int:
        return self.burst

    @property
    def label(self) -> str:
        extra = "" if self.burst == self.rate.limit else f"+{self.burst}"
        return f"{self.name}:{self.rate}{extra}"

    @property
    def interval_us(self) -> int:
        """Microseconds per unit, rounded up so the rate is never exceeded."""
        return max(-(-self.rate.period_us // self.rate.limit), 1)

    def arguments(self) -> tuple[int, ...]:
        return (self.interval_us, self.burst)
