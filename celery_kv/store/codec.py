"""JSON only, through kombu's encoder, so datetime, UUID and Decimal round-trip.

Plain JSON (dicts, lists, strings, numbers) takes the standard library's C codec
directly; it gives byte for byte what kombu gives, whose encoder only adds a
``default`` for other types and whose decoder only rewrites ``__type__`` objects.
"""

from __future__ import annotations

import json
from typing import Any

from kombu.utils import json as kombu_json

_PLAIN = json.JSONEncoder(allow_nan=False)  # kombu's settings, without its default()
_plain_loads = json.loads


def dumps(value: Any, *, what: str = "value") -> str:
    """Encode ``value`` or raise a ``TypeError`` that names what was being stored."""
    try:
        try:
            return _PLAIN.encode(value)
        except TypeError:  # a type only kombu knows (datetime, UUID, ...), or none does
            return str(kombu_json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"{what} is not JSON-serializable ({type(value).__name__}: {exc}); "
            "celery-kv stores JSON only"
        ) from None


def loads(raw: str | bytes) -> Any:
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if isinstance(text, str) and "__type__" not in text and "\\u" not in text:
        return _plain_loads(text)  # no object kombu would rewrite (nor an escaped one)
    return kombu_json.loads(raw)
