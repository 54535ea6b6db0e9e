"""``celery -A tests.celery.delay_worker_app worker``: the delay-store tests' app, from CKV_*.

The same watchdog as ``worker_app``: the worker's process group dies with the test session.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from tests.celery.apps import hook_worker
from tests.celery.delay_apps import make_delay_app


def _watch(parent: int) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os.killpg(os.getpgrp(), signal.SIGKILL)


if os.environ.get("CKV_PARENT_PID"):
    threading.Thread(target=_watch, args=(int(os.environ["CKV_PARENT_PID"]),), daemon=True,
                     name="ckv-watchdog").start()

app = make_delay_app(
    "ckv-delay-tests",
    broker=os.environ["CKV_BROKER"],
    backend=os.environ["CKV_BACKEND"],
    kv_url=os.environ["CKV_KV"],
    prefix=os.environ["CKV_PREFIX"],
    fx_url=os.environ["CKV_FX"],
    **json.loads(os.environ.get("CKV_CONF", "{}")),
)
hook_worker(app, os.environ["CKV_NODE"], os.environ["CKV_FX"])
