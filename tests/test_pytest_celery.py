"""pytest-celery's ``celery_setup`` with celery-kv's coordination container
(``celery_kv.testing.containers``), as a user's project loads it.

It needs a Docker engine; none runs on this machine, so here it is skipped with the
reason (``tests/conftest.py``), and it counts as nothing. The same fixtures' pieces that
run without containers (the worker's ``CELERY_KV_TEST_CONF`` and journal) are shown on
worker subprocesses by ``tests/test_pytest_plugin.py``.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.docker

CONFTEST = '''
import pytest

import tasks

pytest_plugins = ["celery_kv.testing.containers"]


@pytest.fixture
def default_worker_tasks(default_worker_tasks):
    return default_worker_tasks | {tasks}
'''

TASKS = '''
from celery import shared_task

from celery_kv import IdempotentTask


@shared_task(base=IdempotentTask, idempotency_key="{order}")
def charge(order, cents):
    return {"order": order, "cents": cents}
'''

TEST = '''
from celery_kv import install


def test_a_second_charge_is_deduplicated_by_the_container_worker(celery_setup, kv_events):
    app = celery_setup.app
    install(app)
    charge = app.tasks["tasks.charge"]
    first = charge.delay("o-1", 500)
    assert first.get(timeout=60) == {"order": "o-1", "cents": 500}
    kv_events.assert_ran(first)  # recorded by the worker in its container
    second = charge.delay("o-1", 500)
    assert second.get(timeout=60) == first.get()
    kv_events.assert_deduplicated(second, key="o-1")
'''


def test_celery_setup_with_a_coordination_container(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(tasks=TASKS, test_containers=TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
