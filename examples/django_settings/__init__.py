"""Configure celery-kv the Django way: ``CELERY_KV_*`` in a settings module.

    python -m examples.django_settings

``settings.py`` stands for a Django project's settings (no Django needed here);
``celery_app.py`` is the project's ``proj/celery.py``. Celery reads every setting
under the ``CELERY_`` namespace, and celery-kv's settings are ordinary ``kv_*``
settings, so ``CELERY_KV_PREFIX`` is ``kv_prefix``, ``CELERY_KV_LOCK_TTL`` is
``kv_lock_ttl``, and so on.
"""
