"""JSON only, through kombu's encoder, so datetime, UUID and Decimal round-trip."""

from __future__ import annotations

from typing import Any

from kombu.utils import json as kombu_json


def dumps(value: Any, *, what: str = "value") -> str:
    """Encode ``value`` or raise a ``TypeError`` that names what was being stored."""
    try:
        return str(kombu_json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"{what} is not JSON-serializable ({type(value).__name__}: {exc}); "
            "celery-kv stores JSON only"
        ) from None


def loads(raw: str | bytes) -> Any:
    return kombu_json.loads(raw)
