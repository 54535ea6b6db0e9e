"""The features, in the order the lifecycle runs them.

Idempotency comes first (a completed key replays before anything is taken), then the
cache (a hit ends the run before any lock), the singleton lock or the debounced burst,
the concurrency slot,
and the rate limit last: it is the one step that charges, so it runs only when every
other feature has admitted the run, and a denied or deferred run is charged nothing.
"""

from .base import Feature
from .cache import CacheFeature
from .concurrency import Concurrency
from .debounce import Debounce
from .idempotency import Idempotency
from .rate_limit import RateLimitFeature
from .singleton import Singleton

FEATURES: tuple[type[Feature], ...] = (
    Idempotency, CacheFeature, Singleton, Debounce, Concurrency, RateLimitFeature,
)

__all__ = ["FEATURES", "Feature"]
