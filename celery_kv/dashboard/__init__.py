"""``celery kv dashboard``: a live, read-only (unless told) web page of the coordination
keys: held locks and semaphores, rate-limit decisions per minute, waiting and deferred
tasks, idempotency records, and doctor's findings as banners.

A plain WSGI app (``app.Dashboard``) on ``wsgiref`` and one HTML page with its script.
"""

from __future__ import annotations

from .app import Dashboard, new_token, serve

__all__ = ["Dashboard", "new_token", "serve"]
