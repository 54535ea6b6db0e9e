"""JSON only, through kombu's encoder, so datetime, UUID and Decimal round-trip.

What is stored comes back equal. Kombu marks the types it knows as
``{"__type__": ..., "__value__": ...}``; a user dict could look the same, so user
dict keys of the family ``__type__``, ``__type__~``, ``__type__~~``, ... get one more
``~`` on the way in and lose it on the way out. A dict with a bare ``__type__`` key in
stored text is therefore always a marker we wrote; it is decoded when kombu knows it
and is well formed, else returned as it is (never an exception on read).

Plain JSON (no such key) takes the standard library's C codec both ways: the output
is checked for the text ``"__type__`` (one C substring scan) and only then walked.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kombu.utils import json as kombu_json

_PLAIN = json.JSONEncoder(allow_nan=False)  # kombu's settings, without its default()
_plain_loads = json.loads
_MARK = '"__type__'  # in the text of every dict that needs escaping or decoding
_TYPE = "__type__"
_ESCAPABLE = re.compile(r"__type__~*")  # user keys that get one more "~"
_ESCAPED = re.compile(r"__type__~+")  # stored keys that lose one


class _Encoder(kombu_json.JSONEncoder):
    """Kombu's encoder, whose ``__json__`` reducers' output is escaped like user data."""

    def default(self, o: Any) -> Any:
        reduced = super().default(o)
        return _escape(reduced) if getattr(o, "__json__", None) is not None else reduced


def dumps(value: Any, *, what: str = "value") -> str:
    """Encode ``value`` or raise a ``TypeError`` that names what was being stored."""
    try:
        try:
            text = _PLAIN.encode(value)
        except TypeError:  # a type only kombu knows (datetime, UUID, ...), or none does
            return json.dumps(_escape(value), cls=_Encoder, allow_nan=False)
        if _MARK in text:  # a "__type__..." key (or string) somewhere: escape the keys
            return _PLAIN.encode(_escape(value))
        return text
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise TypeError(
            f"{what} is not JSON-serializable ({type(value).__name__}: {exc}); "
            "celery-kv stores JSON only"
        ) from None


def loads(raw: str | bytes) -> Any:
    """Decode stored JSON: markers we wrote become their types, escaped keys come back."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if _MARK not in text:
        return _plain_loads(text)
    return _plain_loads(text, object_hook=_unescape)


def _escape(value: Any) -> Any:
    """A copy of ``value`` whose dicts' ``__type__~*`` keys carry one more ``~``."""
    if isinstance(value, dict):
        return {
            (k + "~" if isinstance(k, str) and _ESCAPABLE.fullmatch(k) else k): _escape(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_escape(v) for v in value]
    return value


def _unescape(obj: dict[str, Any]) -> Any:
    if _TYPE in obj:  # only our encoder writes a bare "__type__" key
        try:
            return kombu_json.object_hook(obj)
        except Exception:  # unknown or malformed marker: give the data back as stored
            return obj
    if any(_ESCAPED.fullmatch(k) for k in obj):
        return {(k[:-1] if _ESCAPED.fullmatch(k) else k): v for k, v in obj.items()}
    return obj
