"""``celery -A tests.celery.worker_app worker``: the test app, configured from CKV_* variables.

A watchdog thread kills the worker's process group when the test session that started
it is gone, so a killed pytest never leaves workers behind.
"""

from __future__ import annotations

from tests.celery.apps import make_app, worker_from_environment

app = worker_from_environment(make_app, "ckv-tests")
