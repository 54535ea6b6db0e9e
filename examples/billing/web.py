"""The web side: what a web framework's views do with the same KV and tasks.

A session is created at login and read by the ``charge`` task, which writes the
receipt into it; the checkout page then shows the receipt from the session.
"""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult

from .app import app
from .tasks import charge, price, sessions


def login(user: str, tenant: str) -> str:
    """Start a session (its id is what the cookie holds)."""
    return sessions.create({"user": user, "tenant": tenant, "receipts": []})


def pay(session_id: str, order_id: str, amount_cents: int) -> AsyncResult:
    """The "Pay" button. Pressing it again sends the same order again: that is safe."""
    session = sessions.get(session_id)
    if session is None:
        raise PermissionError("not logged in")
    return charge.apply_async((order_id, session["tenant"], amount_cents, session_id))


def payment_webhook(session_id: str, order_id: str, tenant: str,
                    amount_cents: int) -> AsyncResult:
    """The payment provider's webhook: another service, so it sends by name, not apply_async."""
    return app.send_task("billing.charge", (order_id, tenant, amount_cents, session_id))


def receipts(session_id: str) -> list[str]:
    """What the checkout page shows."""
    session: dict[str, Any] | None = sessions.get(session_id)
    return list(session["receipts"]) if session else []


def product_page(sku: str) -> AsyncResult:
    return price.delay(sku)
