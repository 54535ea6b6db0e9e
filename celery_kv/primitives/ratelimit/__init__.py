"""STUB: being written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    reset_after: float
    denied_by: str | None = None


class RateLimit:
    def __init__(self, store: Any, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError


def hit_all(pairs: Any, cost: int = 1) -> Decision:
    raise NotImplementedError
