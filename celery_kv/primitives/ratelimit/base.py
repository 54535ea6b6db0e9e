"""``Algorithm``: what one rate-limit strategy contributes to a shared script call.

A strategy names its script and the per-key arguments the script reads; the
store runs it. Every script takes N keys and charges them all-or-nothing, so a
single hit is the N = 1 case of ``hit_all`` and both share one code path.
"""

from __future__ import annotations

from typing import ClassVar

from .rate import Rate


class Algorithm:
    """One strategy bound to one rate. Subclasses set ``name`` and ``script``."""

    name: ClassVar[str]
    script: ClassVar[str]

    def __init__(self, rate: Rate, burst: int | None = None) -> None:
        if burst is not None:
            raise ValueError(
                f"burst {burst!r} of rate limit {str(rate)!r} is only for algorithm 'gcra', "
                f"not {self.name!r}: a window admits its whole limit at once already"
            )
        self.rate = rate

    @property
    def capacity(self) -> int:
        """The largest cost that can ever be admitted."""
        return self.rate.limit

    @property
    def label(self) -> str:
        """The default name of a limit using this strategy, e.g. ``"sliding_log:100/m"``."""
        return f"{self.name}:{self.rate}"

    def arguments(self) -> tuple[int, ...]:
        """The script's ARGV for one key of this limit."""
        return (self.rate.limit, self.rate.period_us)
