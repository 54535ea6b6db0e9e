"""Concurrency: at most N runs at once across all workers, task-wide or per key.

A ``Semaphore`` named ``(task name, key)``: each run holds a slot on its own lease
(``lock_ttl``), renewed by the heartbeat, so a SIGKILLed worker's slot comes back when
its lease ends. A run that finds every slot taken is deferred with a backoff bounded by
the earliest lease end.
"""

from __future__ import annotations

from typing import Any

from ... import signals
from ...errors import LockNotAcquired
from ...primitives._arguments import to_ms
from ...store import Step
from ..context import Run
from ..keys import KeySpec
from ..options import Option, TaskDefinition, key_spec, positive_int
from .base import Feature, Outcome, Wait
from .singleton import LOCK_TTL

LIMIT = Option("concurrency_limit", "at most N running at once across all workers",
               positive_int)
KEY = Option("concurrency_key", "per-key slots (`\"{tenant_id}\"`); default: task-wide",
             key_spec)


class Concurrency(Feature):
    name = "concurrency"
    options = (LIMIT, KEY, LOCK_TTL)

    def __init__(self, task: TaskDefinition, limit: int) -> None:
        self.task_name = task.name
        self.limit = limit
        self.key: KeySpec | None = task.get(KEY)
        self.lease = task.get(LOCK_TTL)

    @classmethod
    def configure(cls, task: TaskDefinition) -> Concurrency | None:
        limit = task.get(LIMIT)
        task.needs(KEY, limit is not None, "concurrency_limit")
        return None if limit is None else cls(task, limit)

    def _slot_key(self, run: Run) -> str:
        return self.key.render(run.call) if self.key is not None else ""

    def _keys(self, run: Run) -> tuple[str]:
        return (run.kv.store.keys.key("sem", (self.task_name, self._slot_key(run))),)

    def start(self, run: Run) -> Step:
        assert self.lease is not None
        return Step("task_concurrency_start", self._keys(run),
                    (run.token, to_ms(self.lease), self.limit, ""))

    def denied(self, run: Run, reply: list[Any]) -> Wait:
        key = self._slot_key(run)
        signals.emit(signals.lock_contended, run.task, task_id=run.task_id, key=key,
                     holder=None, feature=self.name)
        ms = int(reply[2])
        return Wait(LockNotAcquired(f"concurrency:{key}", None, self.task_name),
                    hint=ms / 1000.0 if ms >= 0 else None)

    def renew(self, run: Run) -> Step:
        assert self.lease is not None
        return Step("task_concurrency_renew", self._keys(run), (run.token, to_ms(self.lease)))

    def hand_back(self, run: Run, hold: float) -> Step:
        return Step("task_concurrency_release", self._keys(run), (run.token,))

    def finish(self, run: Run, outcome: Outcome, revoke: str = "") -> Step | None:
        if revoke or self.name not in run.held:
            return None  # on revoke the run token is not known: its lease runs out by itself
        return Step("task_concurrency_release", self._keys(run), (run.token,))
