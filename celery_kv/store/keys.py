"""Key layout: every key under the prefix, one ``{hash tag}`` per logical key.

Layout: ``<prefix>:<kind>:{<identity>}[:<suffix>]``. ``identity`` is built from
user-supplied parts that are percent-encoded, so ``:``, ``{``, ``}``, ``*`` and
newlines never reach the key unescaped; ``"a:b"`` and ``("a", "b")`` encode
differently. Long identities are replaced by a blake2b digest marked with ``#``,
a character the encoding never emits, so a digest cannot meet a plain part.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sized
from typing import TypeAlias, cast

KeyPart: TypeAlias = str | int | bytes
KeyLike: TypeAlias = KeyPart | tuple[KeyPart, ...]

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_MAX_IDENTITY = 120
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_MEMO_MAX = 4096  # identities remembered; the memo is emptied when full, so it stays bounded
_MEMO_PART = 128  # longer parts are not remembered: a 10 KB key must not pin 10 KB
_MEMO_INT = 2**64
# Keyed by exact types only (see _memoizable): True == 1 and 1.0 == 1 must not share an entry.
_memo: dict[KeyLike, str] = {}


def encode_part(part: KeyPart) -> str:
    """Percent-encode one user-supplied part (injective)."""
    if isinstance(part, bool) or not isinstance(part, (str, int, bytes)):
        raise TypeError(
            f"key part {part!r} must be str, int or bytes, not {type(part).__name__}"
        )
    if isinstance(part, int):
        # ints get their own marker so that 1 and "1" are distinct keys.
        return "=" + str(part)
    if isinstance(part, bytes):
        return "~" + "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in part)
    if not part:
        # "!" is never emitted otherwise; it keeps ("",) apart from (), and Redis
        # Cluster would ignore an empty {} hash tag.
        return "!"
    raw = part.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)


def identity(key: KeyLike) -> str:
    """Encode a key or a tuple of parts into one tag-safe identity string.

    Short keys of exactly str, int or bytes (or tuples of them) are remembered
    in a bounded memo: hot identities (a tenant, a lock name) skip re-encoding.
    """
    kind = type(key)
    if kind is tuple:
        memoizable = all(map(_memoizable, cast(tuple[object, ...], key)))
    else:
        memoizable = _memoizable(key)
    if memoizable:
        found = _memo.get(key)
        if found is not None:
            return found
    encoded = _identity(key)
    if memoizable:
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        _memo[key] = encoded
    return encoded


def _memoizable(part: object) -> bool:
    kind = type(part)
    if kind is int:
        return -_MEMO_INT < cast(int, part) < _MEMO_INT
    if kind is str or kind is bytes:
        return len(cast(Sized, part)) <= _MEMO_PART
    return False


def _identity(key: KeyLike) -> str:
    parts: Iterable[KeyPart] = key if isinstance(key, tuple) else (key,)
    encoded = ":".join(encode_part(p) for p in parts)
    if isinstance(key, tuple):
        encoded = "(" + encoded  # a 1-tuple never meets the bare part
    if len(encoded) > _MAX_IDENTITY:
        digest = hashlib.blake2b(encoded.encode("ascii"), digest_size=20).hexdigest()
        return "#" + digest
    return encoded


def _plain_name(value: str, what: str, why: str = "") -> str:
    if not isinstance(value, str) or not _PREFIX_RE.match(value) or len(value) > 64:
        raise ValueError(
            f"{what} {value!r} must be 1-64 characters of letters, digits, "
            f"'_', '-', '.', '/'{why}"
        )
    return value


def validate_prefix(prefix: str) -> str:
    return _plain_name(prefix, "prefix", " (braces would break the cluster hash tag)")


def validate_namespace(namespace: str) -> str:
    """Namespaces are chosen by the programmer, not by end users: keep them plain."""
    return _plain_name(namespace, "namespace")


class KeySpace:
    """Builds keys under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self._kinds: set[str] = set()  # kinds already checked

    def tag(self, kind: str, key: KeyLike) -> str:
        """The base key of one logical key: ``prefix:kind:{identity}``."""
        if kind not in self._kinds:
            if not isinstance(kind, str) or not _KIND_RE.match(kind):
                raise ValueError(f"internal key kind {kind!r} is malformed")
            self._kinds.add(kind)
        return f"{self.prefix}:{kind}:{{{identity(key)}}}"

    def head(self, kind: str, key: KeyLike, *suffix: str) -> str:
        """``key(kind, key, *suffix) + ":"``: built once, so a hot path only appends."""
        return self.key(kind, key, *suffix) + ":"

    def key(self, kind: str, key: KeyLike, *suffix: str) -> str:
        """A key in the same slot as ``tag(kind, key)``, with fixed suffixes."""
        base = self.tag(kind, key)
        return ":".join((base, *suffix)) if suffix else base

    def pattern(self, kind: str | None = None) -> str:
        """A SCAN MATCH pattern for every key of one kind (or all) under the prefix."""
        escaped = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix)
        return f"{escaped}:{kind}:*" if kind else f"{escaped}:*"


def fingerprint(payload: bytes) -> str:
    """A short stable digest of an already-encoded payload (arguments, requests)."""
    return hashlib.blake2b(payload, digest_size=16).hexdigest()
