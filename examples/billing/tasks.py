"""The billing tasks: each one shows a celery-kv feature doing a real job.

Every body writes one event to the journal, so the demo can check what ran
against what was sent.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery_kv import CachedTask, IdempotentTask, KVTask, RateLimitedTask, SingletonTask

from . import journal
from .app import app, kv

PARTNER_RATE = "5/s"  # the partner API's contract: at most 5 calls a second per tenant
REINDEX_DEBOUNCE = 0.5  # a catalogue is reindexed this long after its last save...
REINDEX_MAX_WAIT = 2.0  # ...but never later than this after the first save of a burst
PRICES = {"starter": 900, "team": 2900, "business": 9900, "seat": 700, "storage": 250,
          "support": 4900}

# Sessions written by the web side (examples/billing/web.py) and read by the tasks.
sessions = kv.sessions("web", ttl=1800.0)


@app.task(bind=True, base=IdempotentTask, name="billing.charge",
          idempotency_key="{order_id}", idempotency_ttl=86400)
def charge(self: Any, order_id: str, tenant: str, amount_cents: int,
           session_id: str) -> dict[str, Any]:
    """Charge the customer's card once per order, however often the order is submitted.

    A double click, a browser retry and the payment provider's webhook all send
    it again; celery-kv returns the first one's result to each of them.
    """
    session = sessions.get(session_id)  # also slides the session's TTL: the user is active
    if session is None:
        raise LookupError(f"session of order {order_id} expired before payment")
    receipt = {"order_id": order_id, "charge_id": f"ch_{uuid.uuid4().hex[:12]}",
               "amount_cents": amount_cents, "customer": session["user"]}
    journal.record(kv, "charge", order_id=order_id, tenant=tenant, task_id=self.request.id)
    session.setdefault("receipts", []).append(receipt["charge_id"])
    sessions.save(session_id, session)  # the web side shows the receipt from the session
    return receipt


@app.task(bind=True, base=RateLimitedTask, name="billing.push_invoice",
          global_rate_limit=PARTNER_RATE, rate_limit_key="{tenant}")
def push_invoice(self: Any, tenant: str, invoice_id: str) -> str:
    """Send an invoice to the accounting partner's API, which allows 5 calls/s per tenant.

    Over the limit, the task is rescheduled (it holds no worker slot while it waits).
    ``self.request.kv_rate_limit`` is the Decision that admitted this run; ``at`` is the
    Redis server time of that decision.
    """
    admitted = self.request.kv_rate_limit
    journal.record(kv, "partner", tenant=tenant, invoice_id=invoice_id, task_id=self.request.id,
                   admitted_at=admitted.at, remaining=admitted.remaining)
    return f"partner-{tenant}-{invoice_id}"


@app.task(bind=True, base=SingletonTask, name="billing.rebuild_ledger",
          singleton_key="{tenant}", lock_ttl=10)
def rebuild_ledger(self: Any, tenant: str) -> dict[str, Any]:
    """Rebuild a tenant's ledger summary: the nightly job that beat and admins both trigger.

    Two rebuilds of one tenant at once would double-count, so it is a singleton:
    a trigger while one is queued or running gets that run's AsyncResult.
    ``self.fence`` grows with every run of the key: the ledger store would refuse a
    write stamped with an older fence than the last one it accepted.
    """
    started = journal.server_time(kv)
    time.sleep(0.3)  # summing a day of charges
    ended = journal.server_time(kv)
    journal.record(kv, "rebuild", tenant=tenant, start=started, end=ended, fence=self.fence,
                   task_id=self.request.id)
    return {"tenant": tenant, "rebuilt_at": ended, "fence": self.fence}


@app.task(bind=True, base=CachedTask, name="billing.price", cache_ttl=60)
def price(self: Any, sku: str, currency: str = "EUR") -> dict[str, Any]:
    """Look up a price in the slow pricing service; cached for a minute per (sku, currency)."""
    journal.record(kv, "price", sku=sku, task_id=self.request.id)
    time.sleep(0.2)  # the pricing service is slow
    return {"sku": sku, "currency": currency, "cents": PRICES[sku]}


@app.task(bind=True, base=KVTask, name="billing.reindex_search", debounce=REINDEX_DEBOUNCE,
          debounce_key="{tenant}", debounce_max_wait=REINDEX_MAX_WAIT)
def reindex_search(self: Any, tenant: str, version: int) -> int:
    """Rebuild a tenant's search index after the admin UI saves its catalogue.

    An admin saves many times in a row and only the last version matters, so the saves of
    one burst run once, with the last save's arguments; every save's AsyncResult gets that
    run's result. ``self.request.kv_triggers`` is how many saves the run covers.
    """
    started = journal.server_time(kv)
    time.sleep(0.2)  # indexing the catalogue
    ended = journal.server_time(kv)
    journal.record(kv, "reindex", tenant=tenant, version=version, start=started, end=ended,
                   triggers=self.request.kv_triggers, task_id=self.request.id)
    return version
