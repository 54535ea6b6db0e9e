"""Global rate limits: GCRA, sliding log, sliding window and fixed window.

Rate notation (``rate``), strategies (one module each over ``base.Algorithm``)
and storage (one Lua script per strategy in ``store/scripts/ratelimit_*.lua``)
are kept apart. Every decision is one script call on server time, a denied hit
consumes nothing, and several limits can be charged all-or-nothing, each its own
cost. ``reserve``/``reserve_all`` take the caller's own future slot instead of
denying it (``give_back`` returns an unused one); a ``dynamic`` limit also reads
per-identity overrides and "throttled until" keys in the same call.
"""

from .base import Algorithm
from .decision import Decision
from .limiter import ALGORITHMS, RateLimit, Reservation, give_back, hit_all, reserve_all
from .rate import Rate, parse_rate

__all__ = ["ALGORITHMS", "Algorithm", "Decision", "Rate", "RateLimit", "Reservation", "give_back",
           "hit_all", "parse_rate", "reserve_all"]
