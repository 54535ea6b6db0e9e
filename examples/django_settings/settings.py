"""A Django project's settings module, as far as Celery and celery-kv are concerned.

In a real project this is ``proj/settings.py`` next to ``DATABASES``,
``INSTALLED_APPS`` and the rest, and ``celery_app.py`` reads it with
``app.config_from_object("django.conf:settings", namespace="CELERY")``.
"""

import os

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# Celery's own settings, under the CELERY_ namespace.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_RESULT_EXPIRES = 600
CELERY_TASK_DEFAULT_QUEUE = "example-django"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# celery-kv's settings: kv_<name> becomes CELERY_KV_<NAME>.
CELERY_KV_REDIS_URL = REDIS_URL  # could be another Redis than the broker's
CELERY_KV_PREFIX = "example-django"
CELERY_KV_LOCK_TTL = 20.0  # running lease of singleton tasks, renewed while they run
CELERY_KV_IDEMPOTENCY_TTL = 3600.0
CELERY_KV_ON_UNAVAILABLE = {"cache": "run", "singleton": "retry"}

# Django's own settings would follow; Celery ignores anything without the prefix.
DEBUG = False
