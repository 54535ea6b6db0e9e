"""``KVTask`` and the feature bases: the options are task attributes.

Set them in the decorator, through ``task_annotations``, or as app-wide defaults in
the ``kv_*`` settings (see ``celery_kv.celery.config``)::

    @app.task(base=KVTask, singleton=True, singleton_key="{tenant_id}",
              global_rate_limit="10/s")
    def nightly(tenant_id): ...

They are checked when the task is bound (at its decorator once ``install(app)`` has
run), and an error names the task, the option and the value.

Inside a task body:

- ``self.kv`` is the app's ``KV``;
- ``self.fence`` (also ``self.request.kv_fence``) is the singleton lock's fencing token
  for this run: an int that only goes up across holders of the key; hand it to the
  resource you protect so it can refuse a write from an older holder;
- ``self.request.kv_rate_limit`` is the rate limit ``Decision`` that admitted the run.

How a call goes: ``apply_async`` claims the singleton and idempotency keys for the new
task id (see ``enqueue``); the worker checks every key again around the body (see
``execution``), so ``send_task``, beat and broker redeliveries are held to the same
rules. Calling the task object directly (``task(1, 2)``) is a plain function call and
runs the body uncoordinated, as in Celery. Run eagerly (``apply()``,
``task_always_eager``), a run that would have to wait raises its reason instead
(``LockNotAcquired``, ``RateLimitExceeded``, ``IdempotencyInProgress``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from celery import Task

from ..kv import KV
from . import enqueue, execution
from .claims import Coordination, Keys, keys_for
from .install import installed
from .keys import Call
from .options import TaskPolicy, build_policy


class KVTask(Task):  # type: ignore[misc]
    """A Celery task with celery-kv coordination; every feature is off until its option is set.

    ============================  ==================================================
    option                        meaning
    ============================  ==================================================
    ``singleton``                 at most one instance per key (``True``/``False``)
    ``singleton_key``             template (``"{tenant_id}"``) or callable; default:
                                  all arguments
    ``singleton_mode``            ``"queued"`` (one queued-or-running) or ``"running"``
                                  (duplicates queue, never run at once)
    ``lock_ttl``                  running lease, renewed by a heartbeat (kv_lock_ttl)
    ``queued_ttl``                lifetime of a queued claim (kv_queued_ttl)
    ``on_duplicate``              ``"return_existing"`` or ``"raise"`` (DuplicateTask)
    ``on_locked``                 a run finding the key held: ``"retry"`` (wait),
                                  ``"skip"`` (return None) or ``"raise"``
                                  (LockNotAcquired)
    ``idempotent``                run once per key, replay the stored result
    ``idempotency_key``           template or callable (also per call:
                                  ``apply_async(..., idempotency_key="order-42")``)
    ``idempotency_ttl``           how long the result is replayed
    ``idempotency_lease``         running lease, renewed by a heartbeat
    ``global_rate_limit``         ``"100/m"`` or a list of rates charged together
    ``rate_limit_key``            per-key limits (``"{tenant_id}"``); default: task-wide
    ``rate_limit_algorithm``      ``gcra``, ``sliding_log``, ``sliding_window``,
                                  ``fixed_window``
    ``rate_limit_max_delay``      past this total delay: RateLimitExceeded (over the
                                  limit the task is rescheduled with countdown =
                                  retry_after + jitter, not counted in max_retries)
    ``concurrency_limit``         at most N running at once across all workers
    ``concurrency_key``           per-key slots; default: task-wide
    ``cached``                    cache with ``kv_cache_ttl`` (``CachedTask`` sets it)
    ``cache_ttl``                 cache the result for this long (enables the cache)
    ``cache_key``                 template or callable; default: all arguments
    ``cache_version``             part of every cache key: change it to invalidate
                                  (concurrent misses wait for one computer for up to
                                  the task's ``time_limit``, else 10 s)
    ``on_unavailable``            overrides ``kv_on_unavailable`` for this task
    ============================  ==================================================
    """

    singleton: ClassVar[bool] = False
    singleton_key: ClassVar[Any] = None
    singleton_mode: ClassVar[str | None] = None
    lock_ttl: ClassVar[float | None] = None
    queued_ttl: ClassVar[float | None] = None
    on_duplicate: ClassVar[str | None] = None
    on_locked: ClassVar[str | None] = None
    idempotent: ClassVar[bool] = False
    idempotency_key: ClassVar[Any] = None
    idempotency_ttl: ClassVar[float | None] = None
    idempotency_lease: ClassVar[float | None] = None
    global_rate_limit: ClassVar[Any] = None
    rate_limit_key: ClassVar[Any] = None
    rate_limit_algorithm: ClassVar[str | None] = None
    rate_limit_max_delay: ClassVar[float | None] = None
    concurrency_limit: ClassVar[int | None] = None
    concurrency_key: ClassVar[Any] = None
    cached: ClassVar[bool] = False
    cache_ttl: ClassVar[float | None] = None
    cache_key: ClassVar[Any] = None
    cache_version: ClassVar[str | int | None] = None
    on_unavailable: ClassVar[Any] = None

    _kv_requires_rate: ClassVar[bool] = False
    _kv_policy: ClassVar[TaskPolicy | None] = None
    _kv_coord: ClassVar[Coordination | None] = None

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
        cls._kv_coord = Coordination(lambda: state.kv, policy)

    @property
    def kv(self) -> KV:
        """The app's ``KV``."""
        return installed(self.app).kv

    @property
    def fence(self) -> int | None:
        """The singleton lock's fencing token for the current run (None outside one)."""
        return getattr(self.request, "kv_fence", None)

    def kv_keys(self, args: Any = None, kwargs: Any = None,
                idempotency_key: str | None = None) -> Keys:
        """The singleton and idempotency keys a call would claim (for tools and tests).

        The lock is named ``(task name, keys.singleton)``; the idempotency record is
        ``keys.idempotency`` in the task's namespace (``self.kv_namespace``).
        """
        policy = self._require_policy()
        return keys_for(policy, Call(policy.name, policy.signature, args, kwargs),
                        idempotency_key)

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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body under the execution guard when a worker (or ``apply``) runs it."""
        request = self.request_stack.top
        if (request is None or request.called_directly
                or getattr(request, "_kv_run", None) is not None):
            return super().__call__(*args, **kwargs)  # a plain function call
        if self._kv_policy is None or not self._kv_policy.coordinated:
            return self.run(*args, **kwargs)
        return execution.execute(self, request, args, kwargs)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """``Task.retry``, handing the claims back to the task id before it re-publishes."""
        run = getattr(self.request, "_kv_run", None)
        if run is not None:
            run.hand_back()
        return super().retry(*args, **kwargs)


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
