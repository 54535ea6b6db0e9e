"""The coordination layer: client, keys, codec and scripts. Imports nothing above it."""

from .client import AnyRedis, connect, is_cluster
from .keys import KeyLike, KeySpace, fingerprint, identity
from .retry import RetryPolicy
from .store import Store

__all__ = [
    "AnyRedis",
    "KeyLike",
    "KeySpace",
    "RetryPolicy",
    "Store",
    "connect",
    "fingerprint",
    "identity",
    "is_cluster",
]
