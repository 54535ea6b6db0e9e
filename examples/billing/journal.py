"""What the demo measures: one event per task body, stamped with Redis server time.

Server time, because the workers' clocks are not the ones the limits and leases
run on. Events live under the app's prefix (``<prefix>:demo:<kind>``, with a
TTL like every celery-kv key), so the demo's cleanup and ``celery kv purge``
remove them.
"""

from __future__ import annotations

import json
from typing import Any

from celery_kv import KV

TTL = 3600


def server_time(kv: KV) -> float:
    """Redis's clock, in seconds."""
    seconds, micros = kv.client.time()
    return float(seconds) + float(micros) / 1e6


def _key(kv: KV, kind: str) -> str:
    return f"{kv.prefix}:demo:{kind}"


def record(kv: KV, kind: str, **fields: Any) -> None:
    """Append one event (``fields`` plus ``at``, the server time) to the ``kind`` journal."""
    event = {**fields, "at": fields.get("at", server_time(kv))}
    pipe = kv.client.pipeline(transaction=False)
    pipe.rpush(_key(kv, kind), json.dumps(event))
    pipe.expire(_key(kv, kind), TTL)
    pipe.execute()


def read(kv: KV, kind: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in kv.client.lrange(_key(kv, kind), 0, -1)]


def count(kv: KV, kind: str) -> int:
    return int(kv.client.llen(_key(kv, kind)))
