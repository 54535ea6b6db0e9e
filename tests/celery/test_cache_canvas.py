"""Cached tasks and canvas (chain, group, chord) on real workers: no callback is dropped."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery, chain, chord, group

from celery_kv.celery.install import installed
from tests.celery.conftest import Worker, count, events
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def cache_keys(app: Celery, task_name: str) -> list[str]:
    kv = installed(app).kv
    pattern = f"{kv.prefix}:cache:{{{app.tasks[task_name].kv_namespace}}}*"
    return sorted(k.decode() for k in kv.client.scan_iter(match=pattern, count=1000))


def test_a_hit_does_not_run_the_body(worker: Worker, client_app: Celery, fx: Any,
                                     tag: str) -> None:
    task = client_app.tasks["t.cached"]
    first = task.delay(tag, 1).get(timeout=20)
    second = task.delay(tag, 1).get(timeout=20)
    assert first == second == {"x": 1, "n": 1}
    assert count(fx, tag) == 1
    assert task.delay(tag, 2).get(timeout=20) == {"x": 2, "n": 2}  # another key: a miss


def test_concurrent_cold_executions_run_the_body_once(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    task = client_app.tasks["t.cached"]
    results = [task.apply_async((tag, 3, 1.0)) for _ in range(6)]
    values = [r.get(timeout=30) for r in results]
    assert values == [{"x": 3, "n": 1}] * 6
    assert count(fx, tag) == 1


def test_non_json_result_fails_clearly_and_leaves_no_claim(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    result = client_app.tasks["t.cache_bad"].delay(tag)
    with pytest.raises(TypeError) as caught:
        result.get(timeout=20)
    message = str(caught.value)
    assert "t.cache_bad" in message and "cache key" in message and "JSON" in message
    leftovers = [k for k in cache_keys(client_app, "t.cache_bad") if not k.endswith(":ver")]
    assert leftovers == []


def test_chain_with_a_cached_head_runs_its_callback_with_the_cached_value(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    head, collect = client_app.tasks["t.cached"], client_app.tasks["t.collect"]
    for _ in range(2):
        assert chain(head.s(tag, 5), collect.s(tag)).apply_async().get(timeout=30) == {
            "x": 5, "n": 1}
    assert count(fx, tag) == 1, "the second head was a cache hit"
    assert events(fx, tag, "collected") == [{"x": 5, "n": 1}] * 2


def test_chain_with_a_duplicate_singleton_head_waits_its_turn(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    head, collect = client_app.tasks["t.single"], client_app.tasks["t.collect"]
    first = chain(head.s(tag, 9, 0.5), collect.s(tag)).apply_async()
    second = chain(head.s(tag, 9, 0.5), collect.s(tag)).apply_async()
    assert first.get(timeout=30) == 9 and second.get(timeout=30) == 9
    assert events(fx, tag, "collected") == [9, 9]
    assert count(fx, tag) == 2


def test_group_and_chord_with_duplicates_complete(
    worker: Worker, client_app: Celery, fx: Any, tag: str
) -> None:
    single, cached = client_app.tasks["t.single"], client_app.tasks["t.cached"]
    total = client_app.tasks["t.total"]
    members = [single.s(tag, 4, 0.2), single.s(tag, 4, 0.2), single.s(tag, 5, 0.1)]
    assert chord(members, total.s(tag)).apply_async().get(timeout=60) == 13
    assert events(fx, tag, "collected") == [[4, 4, 5]]
    other = tag + "-g"
    values = group(cached.s(other, 1) for _ in range(4)).apply_async().get(timeout=60)
    assert values == [{"x": 1, "n": 1}] * 4
    wait_for(lambda: count(fx, other) == 1, 5, "exactly one body run")
