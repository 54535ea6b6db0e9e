"""Global rate limits, task-wide and per tenant, across every worker.

    python -m examples.rate_limit

The SMS gateway takes 3 messages a second from the whole fleet; the CRM takes 3 calls a
second per tenant. Celery's own ``rate_limit`` is counted per worker, so N workers would
send N times as much. Over the limit a task is rescheduled (``countdown = retry_after``
plus jitter): it holds no worker slot while it waits and uses up none of its retries.
"""

from __future__ import annotations

from typing import Any

from celery_kv import RateLimitedTask, install
from examples.billing import journal
from examples.common import make_app, start_fresh, worker

app = make_app("rate_limit")
kv = install(app)
RATE, PER_GROUP = 3, 6

# sliding_log is exact (never more than the limit in any window), which makes the claim
# below easy to check; the default, gcra, keeps one small key per identity instead.


@app.task(bind=True, base=RateLimitedTask, global_rate_limit=f"{RATE}/s",
          rate_limit_algorithm="sliding_log")
def send_sms(self: Any, n: int) -> None:
    # The Decision that admitted this run; ``at`` is the Redis server time it was made at.
    journal.record(kv, "sms", n=n, at=self.request.kv_rate_limit.at)


@app.task(bind=True, base=RateLimitedTask, global_rate_limit=f"{RATE}/s",
          rate_limit_key="{tenant}", rate_limit_algorithm="sliding_log")
def sync_crm(self: Any, tenant: str, n: int) -> None:
    journal.record(kv, f"crm-{tenant}", n=n, at=self.request.kv_rate_limit.at)


def busiest_second(times: list[float]) -> int:
    """The most admissions in any window [t, t + 1 s)."""
    return max(sum(1 for u in times if t <= u < t + 1.0 - 1e-6) for t in times)


def report(label: str, kind: str) -> None:
    times = [e["at"] for e in journal.read(kv, kind)]
    print(f"{label}: {len(times)} runs over {max(times) - min(times):.1f} s, "
          f"at most {busiest_second(times)} in any 1 s window")


def main() -> None:
    start_fresh(kv)
    with worker(app, "examples.rate_limit"):
        sent = [send_sms.delay(n) for n in range(PER_GROUP)]
        for tenant in ("acme", "globex"):  # one tenant's backlog never slows the other
            sent += [sync_crm.delay(tenant, n) for n in range(PER_GROUP)]
        for result in sent:
            result.get(timeout=60)
    report(f"send_sms, {RATE}/s task-wide", "sms")
    for tenant in ("acme", "globex"):
        report(f"sync_crm, {RATE}/s per tenant, {tenant}", f"crm-{tenant}")


if __name__ == "__main__":
    main()
