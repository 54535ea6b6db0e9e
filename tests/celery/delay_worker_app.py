"""``celery -A tests.celery.delay_worker_app worker``: the delay-store tests' app, from CKV_*.

The same watchdog as ``worker_app``: the worker's process group dies with the test session.
"""

from __future__ import annotations

from tests.celery.apps import worker_from_environment
from tests.celery.delay_apps import make_delay_app

app = worker_from_environment(make_delay_app, "ckv-delay-tests")
