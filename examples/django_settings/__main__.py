"""``python -m examples.django_settings``: a worker configured only from settings.py."""

from __future__ import annotations

from examples.common import start_fresh, worker
from examples.django_settings.celery_app import app, build_report, kv


def main() -> None:
    start_fresh(kv)
    print(f"producer: prefix {kv.prefix!r}, queue {app.conf.task_default_queue!r} "
          "(CELERY_KV_PREFIX, CELERY_TASK_DEFAULT_QUEUE)")
    with worker(app, "examples.django_settings.celery_app"):
        first, again = build_report.delay("daily"), build_report.delay("daily")
        seen = first.get(timeout=30)
    print(f"worker: prefix {seen['prefix']!r}, running lease {seen['lease_left']:.1f} s left "
          "of 20 (CELERY_KV_LOCK_TTL)")
    print(f"2 triggers -> {len({first.id, again.id})} run")


if __name__ == "__main__":
    main()
