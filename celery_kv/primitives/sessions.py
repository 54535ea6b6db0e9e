"""Sessions: JSON dicts under unguessable ids, with a sliding TTL and an absolute lifetime.

A session id is ``<family>.<secret>``: two ``secrets.token_urlsafe`` values, 128 and 256
bits. The record lives at ``prefix:sess:{(namespace, family)}`` and stores a digest of the
secret, never the secret, so a copy of Redis's data does not yield live ids. ``rotate``
keeps the family (the key, so it is one script on one key, cluster-safe) and swaps the
secret: the old id stops working in the same atomic step. Knowing an old id gives the
family of the new one, but not its 256-bit secret.

Every read slides the TTL in the same script that reads (no GET-then-EXPIRE race), and the
record's creation time (server clock) bounds its whole life when ``max_lifetime`` is set.
Ids that are unknown, expired or malformed read as absent: malformed ones never reach Redis,
and no answer says which of these it was. The secret's digest is compared inside Redis
with ``==``; comparing digests leaks nothing useful through timing.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from ..store import Store, codec
from ..store import fingerprint as digest
from ..store.keys import validate_namespace
from ._arguments import positive_seconds, to_ms

_FAMILY_BYTES = 16  # 128 bits: 22 url-safe characters
_SECRET_BYTES = 32  # 256 bits: 43 url-safe characters
_SID_RE = re.compile(r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}")
_CREATE_ATTEMPTS = 3


class Sessions:
    """Session records in one namespace: ``ttl`` slides on use, ``max_lifetime`` does not."""

    def __init__(
        self, store: Store, namespace: str, ttl: float = 3600.0, max_lifetime: float | None = None
    ) -> None:
        self.store = store
        self.namespace = validate_namespace(namespace)
        self.ttl = positive_seconds(f"sessions {namespace!r} ttl", ttl)
        self.max_lifetime = (
            None if max_lifetime is None
            else positive_seconds(f"sessions {namespace!r} max_lifetime", max_lifetime)
        )
        self._ttl_ms = to_ms(self.ttl)
        self._lifetime_ms = 0 if self.max_lifetime is None else to_ms(self.max_lifetime)

    def create(self, data: dict[str, Any]) -> str:
        """Store ``data`` under a new session id and return the id."""
        raw = self._encode(data)
        for _ in range(_CREATE_ATTEMPTS):  # a taken 128-bit family is astronomically rare
            family = secrets.token_urlsafe(_FAMILY_BYTES)
            secret = secrets.token_urlsafe(_SECRET_BYTES)
            if self.store.run(
                "sessions_create",
                [self._record(family)],
                [_hash(secret), raw, self._ttl_ms, self._lifetime_ms],
            ):
                return f"{family}.{secret}"
        raise RuntimeError("could not find a free session id; is the random source broken?")

    def get(self, sid: str) -> dict[str, Any] | None:
        """The session's data, refreshing its TTL; None when unknown, expired or malformed."""
        parts = _split(sid)
        if parts is None:
            return None
        raw = self.store.run(
            "sessions_get",
            [self._record(parts[0])],
            [_hash(parts[1]), self._ttl_ms, self._lifetime_ms],
        )
        if raw is None:
            return None
        data: dict[str, Any] = codec.loads(raw)
        return data

    def save(self, sid: str, data: dict[str, Any]) -> bool:
        """Replace the data of a live session (keeps its creation time); False otherwise."""
        raw = self._encode(data)
        parts = _split(sid)
        if parts is None:
            return False
        return bool(self.store.run(
            "sessions_save",
            [self._record(parts[0])],
            [_hash(parts[1]), raw, self._ttl_ms, self._lifetime_ms],
        ))

    def destroy(self, sid: str) -> bool:
        """Delete the session; False when there was none."""
        parts = _split(sid)
        if parts is None:
            return False
        return bool(self.store.run("sessions_destroy", [self._record(parts[0])],
                                   [_hash(parts[1])]))

    def rotate(self, sid: str) -> str | None:
        """A new id for the same session (data, creation time); the old id is dead at once.

        Returns None when ``sid`` is not a live session.
        """
        parts = _split(sid)
        if parts is None:
            return None
        family, old = parts
        new = secrets.token_urlsafe(_SECRET_BYTES)
        rotated = self.store.run(
            "sessions_rotate",
            [self._record(family)],
            [_hash(old), _hash(new), self._ttl_ms, self._lifetime_ms],
        )
        return f"{family}.{new}" if rotated else None

    def _record(self, family: str) -> str:
        return self.store.keys.key("sess", (self.namespace, family))

    def _encode(self, data: Any) -> str:
        if not isinstance(data, dict):
            raise TypeError(
                f"session data in namespace {self.namespace!r} must be a dict, "
                f"not {type(data).__name__}"
            )
        return codec.dumps(data, what=f"session data in namespace {self.namespace!r}")

    def __repr__(self) -> str:
        return (
            f"Sessions(namespace={self.namespace!r}, ttl={self.ttl!r}, "
            f"max_lifetime={self.max_lifetime!r})"
        )


def _split(sid: Any) -> tuple[str, str] | None:
    """(family, secret) of a well-formed id, else None, without touching Redis."""
    if not isinstance(sid, str) or len(sid) != 66 or not _SID_RE.fullmatch(sid):
        return None
    family, secret = sid.split(".")
    return family, secret


def _hash(secret: str) -> str:
    return digest(b"session-secret:" + secret.encode("ascii"))
