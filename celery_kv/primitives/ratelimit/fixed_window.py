"""Fixed window counter: up to ``limit`` per window aligned on server time.

The cheapest and the coarsest: a burst at the end of one window and the start
of the next can admit twice ``limit`` within one period, and a denied caller
waits for the next window. One small hash per identity that expires at the
window's end.
"""

from __future__ import annotations

from .base import Algorithm


class FixedWindow(Algorithm):
    name = "fixed_window"
    script = "ratelimit_fixed_window"
