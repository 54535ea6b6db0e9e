"""What the engine hands the features: one ``apply_async`` call, or one execution.

Both carry the task's policy, its ``KV``, the task id, the call's arguments (bound by
name, computed only when a feature needs them) and the celery-kv message header: a flat
dict of named fields, each owned by one feature, merged field by field (a field the
message carries wins over one computed from the arguments).
"""

from __future__ import annotations

import uuid
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..kv import KV
from .keys import Call, as_mapping, run_token

if TYPE_CHECKING:
    from .policy import TaskPolicy

HEADER = "celery_kv"  # the message header that carries the fields
#: the fields the engine itself owns (each feature declares its own in ``header_fields``)
ENGINE_FIELDS = ("attempt", "waits", "unavailable_for", "published_duplicate", "duplicate_of",
                 "replaces", "delay_entry", "delay_copy")


def header_of(request: Any) -> dict[str, Any]:
    """The celery-kv header of a request (worker: a message header; eager: ``headers``)."""
    found = getattr(request, HEADER, None)
    if found is None:
        found = as_mapping(getattr(request, "headers", None)).get(HEADER)
    return dict(as_mapping(found))


class Context:
    """One call of one coordinated task, as the features see it."""

    def __init__(self, task: Any, task_id: str, args: Any, kwargs: Any,
                 header: dict[str, Any]) -> None:
        self.task = task
        self.policy: TaskPolicy = task._kv_policy
        self.task_id = task_id
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        self.header = header
        self.state: dict[str, Any] = {}  # per feature, by feature name

    @cached_property
    def kv(self) -> KV:
        return self.task.kv  # type: ignore[no-any-return]

    @cached_property
    def call(self) -> Call:
        return Call(self.policy.name, self.policy.signature, self.args, self.kwargs)

    def fill_header(self) -> dict[str, Any]:
        for feature in self.policy.features:
            feature.fill_header(self)
        return self.header


class Enqueue(Context):
    """One ``apply_async``: a new task id, and a nonce that tells this call's own claim
    (retried after a lost reply) from a duplicate's."""

    def __init__(self, task: Any, task_id: str, args: Any, kwargs: Any,
                 header: dict[str, Any], delay: float, running_id: str | None) -> None:
        super().__init__(task, task_id, args, kwargs, header)
        self.delay = delay  # a countdown or ETA: the queued claim outlives it
        self.running_id = running_id  # the task id of the run making this call, if any
        self.nonce = uuid.uuid4().hex[:16]
        self.overrides: dict[str, Any] = {}  # publish options a feature's claim set


class Run(Context):
    """One execution of a task id: its run token ``<id>#run:<nonce>`` is new each time."""

    def __init__(self, task: Any, request: Any, args: Any, kwargs: Any) -> None:
        task_id = request.id or uuid.uuid4().hex
        super().__init__(task, task_id, args, kwargs, header_of(request))
        self.request = request
        self.token = run_token(task_id, uuid.uuid4().hex[:12])
        self.elapsed = 0.0  # seconds the body ran
        self.held: set[str] = set()  # features whose start step answered 'ok'
        self.lost: list[str] = []  # features whose lease was lost while running
        self.eager = bool(getattr(request, "is_eager", False))

    @property
    def must_resolve(self) -> bool:
        """A caller or a canvas holds this id: the run may wait, never skip."""
        request = self.request
        return bool(self.header.get("published_duplicate") or request.callbacks
                    or request.errbacks or request.chain or request.chord or request.group)

    def mark(self, name: str, default: Any) -> Any:
        """A header mark left by an earlier deferral of this same attempt (a user retry
        starts the count over)."""
        if self.header.get("attempt") != self.request.retries:
            return default
        return self.header.get(name, default)
