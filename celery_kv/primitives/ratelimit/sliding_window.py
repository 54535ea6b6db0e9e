"""Sliding window counter (Cloudflare style): two counts, weighted by overlap.

Approximate. The previous fixed window's count is weighted by the share of it
still inside the sliding period, as if its requests had been spread evenly.
Each aligned window admits at most ``limit``; a sliding period can admit up to
about twice ``limit`` when traffic bunches up at a window boundary. One small
hash per identity, whatever the limit.
"""

from __future__ import annotations

from .base import Algorithm


class SlidingWindow(Algorithm):
    name = "sliding_window"
    script = "ratelimit_sliding_window"
