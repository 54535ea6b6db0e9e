"""Which decisions a phase script counts (``celery_kv.store.metrics``).

Each feature declares, per step script, the rules that turn the script's reply into
counted events (``Feature.counts``), mirroring the signals it sends for the same reply, so
``celery kv metrics`` and ``celery_kv.signals`` agree. The engine attaches them to the
phase's steps here; counting then happens inside the phase's one script.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..store import Step, metrics

if TYPE_CHECKING:
    from .features.base import Feature
    from .policy import TaskPolicy


def tallied(policy: TaskPolicy, ctx: Any,
            owned: Iterable[tuple[Feature | None, Step]]) -> list[Step]:
    """The steps, each with its feature's tally when the app counts decisions."""
    if not policy.counters_ttl:
        return [step for _, step in owned]
    steps: list[Step] = []
    for feature, step in owned:
        rules = feature.count_rules(step, ctx) if feature is not None else ""
        if feature is not None and rules:
            step = replace(step, tally=metrics.tally(
                policy.name, feature.name, rules, identity_of(policy, feature, ctx)))
        steps.append(step)
    return steps


def identity_of(policy: TaskPolicy, feature: Any, ctx: Any) -> str | None:
    """The call's key for ``feature`` when an operator listed it in
    ``kv_metrics_identities``; None for every other key (bounded cardinality)."""
    if not policy.counted_identities:
        return None
    try:
        described = feature.describe(ctx)
    except Exception:  # a key that cannot be built is refused elsewhere, not here
        return None
    for key in described.values():
        if str(key) in policy.counted_identities:
            return str(key)
    return None
