"""Imported by the workers (the ``imports`` setting): the fault tasks on the worker app."""

from __future__ import annotations

import os

from tests.celery.worker_app import app
from tests.faults.tasks import register

register(app, os.environ["CKV_FX"])
