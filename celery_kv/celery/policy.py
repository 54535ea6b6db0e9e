"""``TaskPolicy``: everything celery-kv does for one task, decided when the task is defined."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import ENGINE_OPTIONS, Settings, all_options
from .features import FEATURES
from .features.base import Feature
from .keys import namespace_for
from .options import TaskDefinition, check_spelling

_ENGINE = {option.name: option for option in ENGINE_OPTIONS}


@dataclass(frozen=True)
class TaskPolicy:
    name: str
    signature: inspect.Signature
    namespace: str
    features: tuple[Feature, ...]  # in the declared order of FEATURES
    on_unavailable: Mapping[str, str]
    queued_ttl: float
    enqueue_claim_ttl: float
    unavailable_max_delay: float
    wait_interval: float
    completion_ttl: float
    completion_deadline: float
    delay_store: bool | str = True  # kv_delay_store: True, False or "all"
    counters_ttl: float = 0.0  # kv_metrics_ttl, 0 when kv_metrics is off
    counted_identities: frozenset[str] = frozenset()  # kv_metrics_identities

    def feature(self, name: str) -> Any:
        """The configured feature called ``name``, or None when the task does not use it."""
        return next((f for f in self.features if f.name == name), None)

    @property
    def coordinated(self) -> bool:
        return bool(self.features)

    def enqueue_claimers(self, eager: bool) -> list[Feature]:
        """The features that claim keys at ``apply_async``; run eagerly, those whose
        claim does not wait for a later message (``Feature.claims_when_eager``)."""
        return [f for f in self.features
                if f.claims_at_enqueue and (f.claims_when_eager or not eager)]

    @property
    def marks_completion(self) -> bool:
        """Whether finished task ids are marked (tasks that have a final-outcome phase)."""
        return any(f.final_phase for f in self.features)

    @property
    def undo_hold(self) -> float:
        """How long a claim handed back by a denied start phase lives: the queued TTL plus
        the longest deferral the task may ask for (a backoff, or a feature's own)."""
        longest_backoff = self.wait_interval * 20 * 1.2
        return self.queued_ttl + max(longest_backoff, *(f.max_defer for f in self.features))

    def unavailable(self, features: tuple[Feature, ...]) -> str:
        """kv_on_unavailable for a phase of ``features``: the strictest of their policies."""
        chosen = {self.on_unavailable[f.name] for f in features}
        return next((p for p in ("raise", "retry") if p in chosen), "run")


def build_policy(task_cls: Any, settings: Settings) -> TaskPolicy:
    """Check every celery-kv option of a task class and freeze them (definition time)."""
    task = TaskDefinition(task_cls, settings)
    check_spelling(task_cls, task.name, (o.name for o in all_options() if o.task_option))
    features = tuple(f for f in (cls.configure(task) for cls in FEATURES) if f is not None)
    if getattr(task_cls, "_kv_requires_rate", False) and not any(
        f.name == "rate_limit" for f in features
    ):
        raise ValueError(f"task {task.name!r}: RateLimitedTask needs global_rate_limit='N/s|m|h'")
    return TaskPolicy(
        name=task.name,
        signature=task.signature,
        namespace=namespace_for(task.name),
        features=features,
        on_unavailable=task.get(_ENGINE["on_unavailable"]),
        queued_ttl=task.get(_ENGINE["queued_ttl"]),
        enqueue_claim_ttl=settings.enqueue_claim_ttl,
        unavailable_max_delay=settings.unavailable_max_delay,
        wait_interval=settings.wait_interval,
        completion_ttl=settings.completion_ttl,
        completion_deadline=settings.completion_deadline,
        delay_store=task.get(_ENGINE["delay_store"]),
        counters_ttl=settings.metrics_ttl if settings.metrics else 0.0,
        counted_identities=frozenset(settings.metrics_identities),
    )
