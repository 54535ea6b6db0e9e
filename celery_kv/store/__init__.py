"""The coordination layer: client, keys, codec and scripts. Imports nothing above it."""

from .client import AnyRedis, connect, is_cluster
from .keys import KeyLike, KeySpace, fingerprint, identity
from .retry import RetryPolicy
from .store import PhaseReply, Step, Store

__all__ = [
    "AnyRedis",
    "KeyLike",
    "KeySpace",
    "PhaseReply",
    "RetryPolicy",
    "Step",
    "Store",
    "connect",
    "fingerprint",
    "identity",
    "is_cluster",
]
