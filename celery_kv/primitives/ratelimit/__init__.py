"""Global rate limits: GCRA, sliding log, sliding window and fixed window.

Rate notation (``rate``), strategies (one module each over ``base.Algorithm``)
and storage (one Lua script per strategy in ``store/scripts/ratelimit_*.lua``)
are kept apart. Every decision is one script call on server time, a denied hit
consumes nothing, and several limits can be charged all-or-nothing.
"""

from .base import Algorithm
from .decision import Decision
from .limiter import ALGORITHMS, RateLimit, hit_all
from .rate import Rate, parse_rate

__all__ = ["ALGORITHMS", "Algorithm", "Decision", "Rate", "RateLimit", "hit_all", "parse_rate"]
