"""Concurrency limits: at most N runs at once across all workers, per key.

    python -m examples.concurrency

Each account's export hammers that account's database, so at most one export per
account may run at a time, fleet-wide; exports of different accounts run side by side.
Each run holds a semaphore slot on a lease renewed while it runs, so a SIGKILLed worker
gives its slot back within ``lock_ttl``. A run that finds no free slot is rescheduled
with a short backoff; it does not block a worker process while it waits.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from celery_kv import KVTask, install
from examples.billing import journal
from examples.common import make_app, start_fresh, worker

app = make_app("concurrency")
kv = install(app)
ACCOUNTS, EXPORTS = ("acme", "globex"), 3


@app.task(bind=True, base=KVTask, concurrency_limit=1, concurrency_key="{account}",
          lock_ttl=10)
def export(self: Any, account: str, n: int) -> None:
    start = journal.server_time(kv)
    time.sleep(0.3)  # the export
    journal.record(kv, "export", account=account, n=n, start=start,
                   end=journal.server_time(kv))


def most_at_once(runs: list[dict[str, Any]]) -> int:
    """The most runs in progress at one instant (server time)."""
    edges = sorted(itertools.chain(((r["start"], 1) for r in runs), ((r["end"], -1) for r in runs)),
                   key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    return max(itertools.accumulate(step for _, step in edges))


def main() -> None:
    start_fresh(kv)
    with worker(app, "examples.concurrency"):
        sent = [export.delay(a, n) for n in range(EXPORTS) for a in ACCOUNTS]
        for result in sent:
            result.get(timeout=60)
    runs = journal.read(kv, "export")
    for account in ACCOUNTS:
        mine = [r for r in runs if r["account"] == account]
        print(f"{account}: {len(mine)} exports, at most {most_at_once(mine)} running at once "
              "(limit 1)")
    print(f"all accounts: at most {most_at_once(runs)} running at once")


if __name__ == "__main__":
    main()
