"""Errors survive the JSON result backend; prefork children never share a socket."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

import celery_kv
from tests.celery.conftest import Worker, events

pytestmark = [pytest.mark.worker, pytest.mark.slow]

EXPECTED = {
    "DuplicateTask": ("k1", "holder-1"),
    "LockNotAcquired": ("k2", "holder-2"),
    "LockLost": ("k3", "holder-3"),
    "IdempotencyInProgress": ("k4", "holder-4"),
    "IdempotencyKeyReused": ("k5", None),
    "RateLimitExceeded": ("k6", None),
}


@pytest.mark.parametrize("kind", [*EXPECTED, "CoordinationUnavailable"])
def test_every_error_survives_the_json_result_backend(
    worker: Worker, client_app: Celery, kind: str
) -> None:
    result = client_app.tasks["t.raise_kv"].delay(kind)
    error = result.get(timeout=20, propagate=False)
    assert type(error) is getattr(celery_kv, kind)
    assert isinstance(error, celery_kv.KVError)
    assert result.result is not None and type(result.result) is type(error)
    text = str(error)
    if kind == "CoordinationUnavailable":
        assert "lock_acquire" in text and "refused" in text
        return
    key, holder = EXPECTED[kind]
    assert "t.raise_kv" in text and key in text
    assert error.task_name == "t.raise_kv"
    if holder is not None:
        assert holder in text and error.holder == holder


def test_prefork_children_do_not_share_a_socket_with_the_parent(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    parent = fx.get(f"parent_client:{worker.node}")
    assert parent is not None, "the main process used Redis before forking"
    results = [client_app.tasks["t.client_id"].delay(tag) for _ in range(8)]
    seen = [tuple(r.get(timeout=30)) for r in results]
    by_pid: dict[int, set[int]] = {}
    for pid, client in seen:
        by_pid.setdefault(pid, set()).add(client)
    assert len(by_pid) >= 2, f"both children should have run: {seen}"
    clients = [c for found in by_pid.values() for c in found]
    assert int(parent) not in clients, "a child used the parent's connection"
    owners = {c: pid for pid, found in by_pid.items() for c in found}
    assert len(owners) == len(clients), "two children shared a connection"
    assert len(events(fx, tag)) == 8
