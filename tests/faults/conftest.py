"""Fixtures of the fault suite: a never-faulted Redis for broker, results and ledger, a
coordination Redis to fault, and a ``scenario`` factory whose workers stop at teardown.

Every scenario's figures are printed (``-s``), written to ``<tmp>/fault-figures.json``
and shown together in the terminal summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_kv.testing import RedisServer, redis_server
from tests.faults.harness import Figures, Scenario, render

FIGURES = pytest.StashKey[list[Figures]]()


@pytest.fixture
def infra() -> Iterator[RedisServer]:
    """Broker (db 1), result backend (db 2) and ledger (db 4): never faulted."""
    with redis_server() as server:
        yield server


@pytest.fixture
def coordination() -> Iterator[RedisServer]:
    """The coordination Redis that the test faults."""
    with redis_server() as server:
        yield server


@pytest.fixture
def scenario(infra: RedisServer, request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Scenario]]:
    """``scenario(name, kv_url, coordination_client, conf=...)`` starts two workers; at
    teardown they stop and the figures are recorded."""
    started: list[Scenario] = []

    def make(name: str, kv_url: str, client: redis.Redis, **options: Any) -> Scenario:
        found = Scenario(name, infra.url, kv_url, client, **options)
        started.append(found)
        return found

    yield make
    figures_file = Path(tmp_path_factory.getbasetemp()) / "fault-figures.json"
    for found in started:
        found.stop()
        if found.figures.sent:
            request.config.stash.setdefault(FIGURES, []).append(found.figures)
            print("\n" + found.figures.detail())
            old = json.loads(figures_file.read_text()) if figures_file.exists() else []
            old.append({k: v for k, v in vars(found.figures).items()})
            figures_file.write_text(json.dumps(old, indent=1, default=str))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("fault suite figures")
        terminalreporter.write_line(render(figures))
