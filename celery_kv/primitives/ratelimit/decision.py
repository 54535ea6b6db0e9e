"""``Decision``: what a limiter answered, in the terms of the IETF RateLimit headers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    """The answer to one hit, peek or ``hit_all``; true when the request was admitted.

    ``limit`` is the most the limit admits at once (the burst, for GCRA);
    ``remaining`` what is left after this call. ``retry_after`` is 0.0 when
    allowed; when denied, the seconds until this same cost would be admitted.
    ``reset_after`` is the seconds until the limit is fully replenished.
    ``denied_by`` names the limit that denied. ``at`` is the server time (epoch
    seconds) the script decided at, for logs and for checks against other
    decisions; it takes no part in equality.
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    reset_after: float
    denied_by: str | None = None
    at: float | None = field(default=None, compare=False, repr=False)

    def __bool__(self) -> bool:
        return self.allowed
