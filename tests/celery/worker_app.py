"""``celery -A tests.celery.worker_app worker``: the test app, configured from CKV_* variables.

A watchdog thread kills the worker's process group when the test session that started
it is gone, so a killed pytest never leaves workers behind.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from tests.celery.apps import hook_worker, make_app


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

app = make_app(
    "ckv-tests",
    broker=os.environ["CKV_BROKER"],
    backend=os.environ["CKV_BACKEND"],
    kv_url=os.environ["CKV_KV"],
    prefix=os.environ["CKV_PREFIX"],
    fx_url=os.environ["CKV_FX"],
    **json.loads(os.environ.get("CKV_CONF", "{}")),
)
hook_worker(app, os.environ["CKV_NODE"], os.environ["CKV_FX"])
