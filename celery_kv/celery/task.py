"""``KVTask`` and the feature bases: the options are task attributes.

Set them in the decorator, through ``task_annotations``, or as app-wide defaults in
the ``kv_*`` settings (see ``celery_kv.celery.config``)::

    @app.task(base=KVTask, singleton=True, singleton_key="{tenant_id}",
              global_rate_limit="10/s")
    def nightly(tenant_id): ...

Each feature declares its options (``celery_kv.celery.features``); the attributes
below are made from those declarations. They are checked when the task is bound (at
its decorator once ``install(app)`` has run), and an error names the task, the option
and the value.

Inside a task body:

- ``self.kv`` is the app's ``KV``;
- ``self.fence`` (also ``self.request.kv_fence``) is the singleton lock's fencing token
  for this run: an int that only goes up across holders of the key; hand it to the
  resource you protect so it can refuse a write from an older holder;
- ``self.kv_lost`` is True once this run has lost a lease it held (the heartbeat could
  not renew it: Redis was unreachable for a whole lease, or the key was broken), and
  ``self.kv_checkpoint()`` then raises ``LockLost``: call it before each step that must
  not run without the lock;
- ``self.kv_superseded`` is True once a newer call took this run's key
  (``on_duplicate="supersede"``; learned at the next heartbeat, within about a third of
  ``lock_ttl``), and ``self.kv_checkpoint()`` then raises ``Superseded`` (a ``LockLost``);
  a body that lets it propagate ends REVOKED;
- ``self.request.kv_rate_limit`` is the rate limit ``Decision`` that admitted the run
  (its ``at``: the server time the run was counted at, its reserved slot if it had one);
- ``self.kv_throttle(retry_after)`` holds the task's rate limit back on every worker
  (a partner's 429); ``raise Throttled(retry_after)`` does that and defers the run.

How a call goes: ``apply_async`` claims the keys for the new task id (see ``enqueue``);
the worker checks every key again around the body (see ``execution``), so
``send_task``, beat and broker redeliveries are held to the same rules, and so are
``apply()`` and eager mode. Calling the task object directly (``task(1, 2)``) is a plain
function call and runs the body uncoordinated, as in Celery. Eager calls keep the enqueue
claims too (a duplicate gets the holder's result at ``apply_async``), except a debounce's,
which waits for a timer message an eager run never sends. Run eagerly, a run that would
have to wait raises its reason instead (``LockNotAcquired``, ``RateLimitExceeded``,
``IdempotencyInProgress``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from celery import Task

from ..kv import KV
from . import delays, enqueue, execution
from .config import all_options
from .context import HEADER, Context
from .install import installed
from .keys import as_mapping
from .policy import TaskPolicy, build_policy


@dataclass(frozen=True)
class Keys:
    """The keys one call would hold (``task.kv_keys(...)``), for tools and tests."""

    singleton: str | None = None
    idempotency: str | None = None
    fingerprint: str | None = None


class KVTask(Task):  # type: ignore[misc]
    """A Celery task with celery-kv coordination; every feature is off until its option is set.

    The options, their defaults and their settings are listed in the README ("The Celery
    face") and by ``python -m celery_kv.celery.features``.
    """

    _kv_requires_rate: ClassVar[bool] = False
    _kv_policy: ClassVar[TaskPolicy | None] = None

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Check every option now, so a bad one fails where the task is defined."""
        super().on_bound(app)
        if cls.name is None:  # an abstract base, not a task
            return
        try:
            state = installed(app)
            policy = build_policy(cls, state.settings)
        except Exception:
            registered = app._tasks.get(cls.name)
            if isinstance(registered, cls):
                app._tasks.pop(cls.name, None)  # do not leave a half-defined task behind
            raise
        cls._kv_policy = policy

    @property
    def kv(self) -> KV:
        """The app's ``KV``."""
        return installed(self.app).kv

    @property
    def fence(self) -> int | None:
        """The singleton lock's fencing token for the current run (None outside one)."""
        return getattr(self.request, "kv_fence", None)

    @property
    def kv_lost(self) -> bool:
        """True once the current run has lost a lease it held."""
        running = getattr(self.request, "_kv_run", None)
        return bool(running is not None and running.run.lost)

    @property
    def kv_superseded(self) -> bool:
        """True once a newer call superseded the current run (``on_duplicate="supersede"``)."""
        running = getattr(self.request, "_kv_run", None)
        return bool(running is not None and running.superseded is not None)

    def kv_checkpoint(self) -> None:
        """Raise ``Superseded`` when a newer call took the current run's key, ``LockLost``
        when the run has lost a lease it held."""
        running = getattr(self.request, "_kv_run", None)
        if running is not None:
            running.checkpoint()

    def kv_throttle(self, retry_after: float, limit: str | int | None = None) -> float:
        """Admit no run of this task's rate limit (``limit``: its name or index; default
        the first)
        for the current run's identity before ``retry_after`` seconds from now, on every
        worker: a partner's 429. Returns the server time it is throttled until.
        ``raise celery_kv.Throttled(retry_after)`` also defers the current run."""
        feature = self._require_policy().feature("rate_limit")
        if feature is None:
            raise ValueError(f"task {self.name!r} has no rate limit to throttle")
        running = getattr(self.request, "_kv_run", None)
        if running is None:
            raise RuntimeError(f"task {self.name!r}: kv_throttle is for use inside a run")
        return float(feature.throttle(running.run, retry_after, limit))

    def kv_keys(self, args: Any = None, kwargs: Any = None,
                idempotency_key: str | None = None) -> Keys:
        """The singleton and idempotency keys a call would claim (for tools and tests).

        The lock is named ``(task name, keys.singleton)``; the idempotency record is
        ``keys.idempotency`` in the task's namespace (``self.kv_namespace``).
        """
        policy = self._require_policy()
        header: dict[str, Any] = {}
        if idempotency_key is not None:
            enqueue.take_call_options(self, policy, {"idempotency_key": idempotency_key},
                                      header)
        ctx = Context(self, "", args, kwargs, header)
        ctx.fill_header()
        described: dict[str, Any] = {}
        for feature in policy.features:
            described.update(feature.describe(ctx))
        return Keys(described.get("singleton"), described.get("idempotency"),
                    ctx.header.get("idempotency_fingerprint"))

    @property
    def kv_namespace(self) -> str:
        """The cache and idempotency namespace of this task."""
        return self._require_policy().namespace

    def _require_policy(self) -> TaskPolicy:
        policy = self._kv_policy
        if policy is None:
            raise RuntimeError(f"task {self.name!r} is not bound to an app yet")
        return policy

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None,
                    producer: Any = None, link: Any = None, link_error: Any = None,
                    shadow: Any = None, **options: Any) -> Any:
        """Claim the task's keys for its task id, publish, confirm (see ``enqueue``)."""
        if link is not None:
            options["link"] = link
        if link_error is not None:
            options["link_error"] = link_error

        def publish(final_id: str | None, final: dict[str, Any]) -> Any:
            return super(KVTask, self).apply_async(
                args, kwargs, task_id=final_id, producer=producer, shadow=shadow, **final
            )

        return enqueue.apply_async(self, publish, args, kwargs, task_id, options)

    def apply(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        """Run eagerly under the same rules as a worker run (per-call options included)."""
        headers = dict(as_mapping(options.get("headers")))
        header = dict(as_mapping(headers.get(HEADER)))
        enqueue.take_call_options(self, self._kv_policy, options, header)
        if header:
            headers[HEADER] = header
            options["headers"] = headers
        return super().apply(args, kwargs, *rest, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body under the execution guard when a worker (or ``apply``) runs it."""
        request = self.request_stack.top
        if (request is None or request.called_directly
                or getattr(request, "_kv_run", None) is not None):
            return super().__call__(*args, **kwargs)  # a plain function call
        if self._kv_policy is None or not self._kv_policy.coordinated:
            delays.consume(self, request)  # kv_delay_store="all": a second copy ends here
            return self.run(*args, **kwargs)
        return execution.execute(self, request, args, kwargs)

    def retry(self, args: Any = None, kwargs: Any = None, exc: Any = None, throw: bool = True,
              eta: Any = None, countdown: Any = None, max_retries: Any = None,
              **options: Any) -> Any:
        """``Task.retry``, handing the claims back to the task id before it re-publishes,
        for the retry's countdown plus the queued TTL."""
        running = getattr(self.request, "_kv_run", None)
        if running is not None:
            running.hand_back(running.retry_delay(countdown if countdown is not None
                                                   else eta))
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def on_replace(self, sig: Any) -> Any:
        """``self.replace(sig)``: the replacement inherits the claims (see ``execution``)."""
        running = getattr(self.request, "_kv_run", None)
        if running is not None and not self.request.is_eager:
            running.replace(sig)
        return super().on_replace(sig)


for _option in all_options():
    if _option.task_option:
        setattr(KVTask, _option.name, None)


class SingletonTask(KVTask):
    """At most one queued-or-running instance per key (``singleton=True``)."""

    singleton = True


class IdempotentTask(KVTask):
    """Runs once per key; duplicates get the stored result (``idempotent=True``)."""

    idempotent = True


class RateLimitedTask(KVTask):
    """Rate limited across all workers; needs ``global_rate_limit``."""

    _kv_requires_rate = True


class CachedTask(KVTask):
    """Caches its result for ``cache_ttl`` (default ``kv_cache_ttl``)."""

    cached = True
