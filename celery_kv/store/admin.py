"""Operator work over a prefix's keys: list, count and purge them, read key names back.

Keys are found with SCAN MATCH (never KEYS), on every primary of a cluster, so these
need an ACL user with ``+scan`` (``acl.acl_rules(prefix, operator=True)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from .client import is_cluster
from .keys import KeyLike, KeyPart
from .store import Store

BATCH = 500


def primaries(client: Any) -> list[tuple[str, Any]]:
    """(name, client) for every primary: one for a plain server, each primary of a cluster."""
    if is_cluster(client):
        return [(n.name, client.get_redis_connection(n)) for n in client.get_primaries()]
    return [("server", client)]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def scan(node: Any, pattern: str) -> Iterator[list[str]]:
    """Batches of the key names on one node that match ``pattern``."""
    batch: list[str] = []
    for raw in node.scan_iter(match=pattern, count=1000):
        batch.append(_text(raw))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def count_keys(store: Store) -> dict[str, Any]:
    """Keys under the prefix by kind, and how many have no TTL (a leak: every key should)."""
    keyspace = store.keys
    by_kind: dict[str, int] = {}
    no_ttl: list[str] = []
    for _name, node in primaries(store.client):
        for batch in scan(node, keyspace.pattern()):
            pipe = node.pipeline(transaction=False)
            for key in batch:
                pipe.pttl(key)
            for key, ttl in zip(batch, pipe.execute(), strict=True):
                kind = key[len(keyspace.prefix) + 1 :].split(":", 1)[0]
                by_kind[kind] = by_kind.get(kind, 0) + 1
                if ttl == -1:
                    no_ttl.append(key)
    return {"total": sum(by_kind.values()), "by_kind": by_kind,
            "without_ttl": len(no_ttl), "without_ttl_sample": no_ttl[:5]}


def purge(store: Store) -> int:
    """UNLINK every key under the store's prefix, SCAN batch by SCAN batch, node by node."""
    removed = 0
    for _name, node in primaries(store.client):
        for batch in scan(node, store.keys.pattern()):
            pipe = node.pipeline(transaction=False)
            for key in batch:
                pipe.unlink(key)  # one key per UNLINK: cluster keys of a batch span slots
            removed += sum(int(n) for n in pipe.execute())
    return removed


def _decode_part(part: str) -> KeyPart:
    if part == "!":
        return ""
    if part.startswith("="):
        return int(part[1:])
    if part.startswith("~"):
        return unquote_to_bytes(part[1:])
    return unquote_to_bytes(part).decode("utf-8", "surrogatepass")


def decode_identity(encoded: str) -> str:
    """The user's key as ``keys.identity`` encoded it, for display ('#...' is hashed)."""
    try:
        if encoded == "!":
            return "''"
        if encoded.startswith("#"):
            return f"<hashed {encoded[1:13]}...>"
        if encoded == "(":
            return "()"
        if encoded.startswith("("):
            return repr(tuple(_decode_part(p) for p in encoded[1:].split(":")))
        return repr(_decode_part(encoded))
    except (ValueError, UnicodeDecodeError):
        return encoded


def name_of(key: str) -> str:
    """The user's key inside ``prefix:kind:{identity}[...]``, for display."""
    start, end = key.find("{"), key.rfind("}")
    return decode_identity(key[start + 1 : end]) if 0 <= start < end else key


def identity_of(key: str) -> KeyLike | None:
    """The user's key inside ``prefix:kind:{identity}[...]`` as it was passed (a part or a
    tuple of parts); None when it cannot be read back (a hashed identity, a foreign key)."""
    start, end = key.find("{"), key.rfind("}")
    if not 0 <= start < end:
        return None
    encoded = key[start + 1 : end]
    try:
        if encoded.startswith("#"):
            return None
        if encoded == "(":
            return ()
        if encoded.startswith("("):
            return tuple(_decode_part(p) for p in encoded[1:].split(":"))
        return _decode_part(encoded)
    except (ValueError, UnicodeDecodeError):
        return None


__all__ = ["count_keys", "decode_identity", "identity_of", "name_of", "primaries", "purge",
           "scan"]
