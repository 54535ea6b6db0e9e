"""The project's Celery app (``proj/celery.py`` in a Django project).

    celery -A examples.django_settings.celery_app worker
    celery -A examples.django_settings.celery_app kv locks
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_kv import SingletonTask, install
from celery_kv.primitives.lock import describe

app = Celery("examples.django_settings.celery_app")
# With Django: os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings") and
# app.config_from_object("django.conf:settings", namespace="CELERY").
app.config_from_object("examples.django_settings.settings", namespace="CELERY")
kv = install(app)  # reads kv_* (here: CELERY_KV_*) now, and fails now if one is wrong


@app.task(bind=True, base=SingletonTask, singleton_key="{report}")
def build_report(self: Any, report: str) -> dict[str, Any]:
    """Report what this run sees: the prefix and the lease on its own singleton lock."""
    held = describe(self.kv.store, (self.name, self.kv_keys((report,)).singleton))
    return {"prefix": self.kv.prefix, "lease_left": held.ttl if held else None,
            "fence": self.fence}
