"""Sliding log: exact; never more than ``limit`` in any window of ``period``.

One sorted set per identity with one entry per admitted unit, scored by
server time. The price of exactness is memory: up to ``limit`` entries per
busy identity (about 50-70 bytes each), so prefer GCRA for large limits.
"""

from __future__ import annotations

from .base import Algorithm


class SlidingLog(Algorithm):
    name = "sliding_log"
    script = "ratelimit_sliding_log"
