"""STUB: being written."""

from __future__ import annotations

from typing import Any


class Lock:
    def __init__(self, store: Any, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError
