"""A small billing app on celery-kv: the app that README's first command (the demo) runs.

- ``app``: the Celery app, configured from ``BILLING_*`` environment variables;
- ``tasks``: idempotent charges, a per-tenant partner-API rate limit, a singleton
  nightly rebuild, cached price lookups and a debounced search reindex;
- ``web``: what a web framework's views would do: log a customer in (a session
  that the tasks read and write too), take payments, show prices;
- ``journal``: what the demo measures; every task body writes one event stamped
  with Redis server time.
"""
