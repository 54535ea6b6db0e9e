"""GCRA: the generic cell rate algorithm (the default).

One key per identity holds its theoretical arrival time (TAT), a short integer
string that expires when the TAT is reached: the smallest state of any
algorithm here and no memory at all for an idle identity. It admits ``burst``
at once and then one unit per ``period / limit``; over any interval of length
``I`` it admits at most ``burst + I * limit / period``.

The script counts in whole microseconds, so the emission interval is rounded
up to the next microsecond: the effective rate never exceeds the nominal one
(it is 1,000,000/s at most).

``burst`` is an integer from 1 to ``MAX_TAU_US // interval_us``, so that a
full burst refills (``burst * interval_us``, the script's tau) within 2**51 us,
about 71 years. The script's largest intermediate, ``tat + cost * interval``
(at most ``now + 2 * tau``), then stays below 2**53 us, where Lua's doubles
are exact, until ``now`` passes 2**52 us (in 2112). For "10/s" that allows a
burst of up to 22,517,998,136; a larger one would make ``remaining`` and
``retry_after`` wrong, or overflow.
"""

from __future__ import annotations

from .base import Algorithm
from .rate import Rate

MAX_TAU_US = 2**51  # a full burst refills within this: keeps the script exact in doubles


class GCRA(Algorithm):
    name = "gcra"
    script = "ratelimit_gcra"

    def __init__(self, rate: Rate, burst: int | None = None) -> None:
        self.rate = rate
        if burst is None:
            burst = rate.limit
        most = MAX_TAU_US // self.interval_us
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= most:
            raise ValueError(
                f"burst {burst!r} of rate limit {str(rate)!r} must be an integer from 1 to "
                f"{most} (or None for the limit): a full burst must refill within 2**51 us "
                "(about 71 years) for the script's arithmetic to stay exact"
            )
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
