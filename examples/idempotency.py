"""Idempotent tasks: an order is charged once, however many times it is submitted.

    python -m examples.idempotency

A double click, a browser retry and the payment provider's webhook all ask to charge
order 42. Sent through ``apply_async`` the duplicates get the first task's
``AsyncResult``; sent by name (``send_task``, another service, a broker redelivery)
the worker replays the stored result instead of running the body again.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery_kv import IdempotencyKeyReused, IdempotentTask, install
from examples.billing import journal
from examples.common import make_app, start_fresh, worker

app = make_app("idempotency")
kv = install(app)


# The key is the order, not all the arguments: the same order with another amount is a
# bug in the caller, and is refused (IdempotencyKeyReused) rather than charged again.
@app.task(bind=True, base=IdempotentTask, idempotency_key="{order_id}", idempotency_ttl=600)
def charge(self: Any, order_id: int, amount_cents: int) -> dict[str, Any]:
    journal.record(kv, "charge", order_id=order_id, task_id=self.request.id)
    return {"order_id": order_id, "charge_id": f"ch_{uuid.uuid4().hex[:12]}"}


def main() -> None:
    start_fresh(kv)
    with worker(app, "examples.idempotency"):
        clicks = [charge.delay(42, 1000), charge.delay(42, 1000)]  # the double click
        receipt = clicks[0].get(timeout=30)
        print(f"2 submits -> {len({r.id for r in clicks})} task id")
        # The webhook bypasses apply_async: the worker's guard replays the first receipt.
        webhook = app.send_task("examples.idempotency.charge", (42, 1000))
        replayed = webhook.get(timeout=30)
        same = "the same receipt" if replayed == receipt else f"ANOTHER receipt {replayed}"
        print(f"webhook (send_task, task {webhook.id[:8]}) -> {same}")
        try:
            charge.delay(42, 999)
        except IdempotencyKeyReused as exc:
            print(f"same order, other amount -> refused: {exc}")
    print(f"2 submits + 1 webhook -> {journal.count(kv, 'charge')} charge")


if __name__ == "__main__":
    main()
