"""Singleton tasks: one rebuild per tenant at a time, however often it is triggered.

    python -m examples.singleton

Beat, an admin's button and a webhook all trigger ``rebuild("acme")``; two rebuilds of
one tenant at once would double-count. A trigger while one is queued or running gets
that run's ``AsyncResult`` back, and every run's ``self.fence`` is higher than the last.
"""

from __future__ import annotations

import time
from typing import Any

from celery_kv import SingletonTask, install
from examples.billing import journal
from examples.common import make_app, start_fresh, worker

app = make_app("singleton")
kv = install(app)  # after configuring the app, before defining tasks: options are checked here


@app.task(bind=True, base=SingletonTask, singleton_key="{tenant}", lock_ttl=10)
def rebuild(self: Any, tenant: str) -> int:
    """Rebuild a tenant's ledger. The lock is renewed while this runs (every lock_ttl/3),
    so a long rebuild never loses it; a SIGKILLed worker frees it within lock_ttl."""
    start = journal.server_time(kv)
    time.sleep(0.5)  # the work
    # A real ledger store would refuse a write stamped with a lower fence than the last one
    # it accepted: that is what protects it from a holder that stalled past its lease.
    journal.record(kv, "rebuild", tenant=tenant, fence=self.fence, start=start,
                   end=journal.server_time(kv))
    return int(self.fence)


def main() -> None:
    start_fresh(kv)
    with worker(app, "examples.singleton"):
        triggers = [rebuild.delay("acme") for _ in range(5)]  # all while the first is queued
        ids = {r.id for r in triggers}
        first_fence = triggers[0].get(timeout=30)
        print(f"5 triggers -> {len(ids)} run (task {triggers[0].id})")
        again = rebuild.delay("acme")  # the first run is over: this is a new run
        second_fence = again.get(timeout=30)
        print(f"next trigger after it finished -> a new run, fence {first_fence} -> "
              f"{second_fence}")
    runs = journal.read(kv, "rebuild")
    print(f"runs recorded by the worker: {len(runs)}")


if __name__ == "__main__":
    main()
