"""Rate limit: a global limit per task, or per key, counted in Redis on server time.

The task's rates are ``RateLimit`` objects in the task's scope, charged all-or-nothing
as the last step of the start phase (so nothing is charged when another feature makes
the run wait). Over the limit the task is re-published with ``countdown = retry_after``
plus a jitter that widens with each denial; it holds no worker slot and does not use up
``max_retries``. Past ``rate_limit_max_delay`` seconds of such delays in all (summed in
the message header: no worker clock is compared) it fails with ``RateLimitExceeded``.
"""

from __future__ import annotations

import random
from typing import Any

from ... import signals
from ...errors import RateLimitExceeded
from ...primitives.ratelimit import ALGORITHMS, RateLimit, parse_rate
from ...primitives.ratelimit.limiter import charge_call, decision_of
from ...store import Step
from ..context import Run
from ..keys import KeySpec
from ..options import Option, TaskDefinition, Where, choice, key_spec, seconds
from .base import Feature, Wait


def _rates(value: Any, where: Where) -> tuple[str, ...]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"{where(value)} names no rate")
    for item in items:
        try:
            parse_rate(item)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where(value)}: {exc}") from None
    return tuple(str(item) for item in items)


RATES = Option("global_rate_limit", "`\"100/m\"`, or a list of rates charged together",
               _rates)
KEY = Option("rate_limit_key", "per-key limits (`\"{tenant_id}\"`); default: task-wide",
             key_spec)
ALGORITHM = Option("rate_limit_algorithm", "`gcra`, `sliding_log`, `sliding_window` or "
                   "`fixed_window`", choice(*ALGORITHMS), "gcra", "kv_rate_limit_algorithm")
MAX_DELAY = Option("rate_limit_max_delay", "total rate-limit delay before the task fails "
                   "with `RateLimitExceeded`", seconds, 3600.0, "kv_rate_limit_max_delay")


def jitter(retry_after: float, denials: int) -> float:
    """Jitter added to ``retry_after``: its window widens with each denial of the same task,
    so a backlog of N waiting tasks does not all come back for every free slot."""
    return random.uniform(0, min(retry_after, 1.0) * min(2.0**denials, 32.0))


class RateLimitFeature(Feature):
    name = "rate_limit"
    options = (RATES, KEY, ALGORITHM, MAX_DELAY)
    header_fields = ("rate_limited_for", "rate_limit_denials")
    final_phase = False  # a hit holds nothing: no final-outcome call, no completion mark

    def __init__(self, task: TaskDefinition, rates: tuple[str, ...]) -> None:
        self.task_name = task.name
        self.rates = rates
        self.key: KeySpec | None = task.get(KEY)
        self.algorithm: str = task.get(ALGORITHM)
        self.max_delay: float = task.get(MAX_DELAY)
        self.max_defer = self.max_delay
        self._limits: tuple[Any, list[RateLimit]] | None = None

    @classmethod
    def configure(cls, task: TaskDefinition) -> RateLimitFeature | None:
        rates = task.get(RATES)
        task.needs(KEY, bool(rates), "global_rate_limit")
        feature = cls(task, rates or ())
        return feature if rates else None

    def limits(self, kv: Any) -> list[RateLimit]:
        """One limit per rate, all in the task's scope, charged together (cached per KV)."""
        cached = self._limits
        if cached is None or cached[0] is not kv:
            kind = "global" if self.key is None else "per-key"
            many = len(self.rates) > 1
            built = [kv.rate_limit(rate, algorithm=self.algorithm,
                                   name=f"{kind}-{i}" if many else kind, scope=self.task_name)
                     for i, rate in enumerate(self.rates)]
            cached = self._limits = (kv, built)
        return cached[1]

    def _pairs(self, run: Run) -> list[tuple[RateLimit, str]]:
        identity = self.key.render(run.call) if self.key is not None else ""
        return [(limit, identity) for limit in self.limits(run.kv)]

    def start(self, run: Run) -> Step:
        pairs = self._pairs(run)
        run.state[self.name] = pairs
        script, keys, args = charge_call(pairs, 1, "hit")
        return Step("task_rate_limit_start", tuple(keys), (script, *args))

    def started(self, run: Run, reply: list[Any]) -> None:
        run.request.kv_rate_limit = decision_of(run.state[self.name], reply[1])

    def denied(self, run: Run, reply: list[Any]) -> Wait:
        pairs = run.state[self.name]
        decision = decision_of(pairs, reply[1])
        run.request.kv_rate_limit = decision
        key = pairs[0][1]
        denials = int(run.mark("rate_limit_denials", 0))
        countdown = decision.retry_after + jitter(decision.retry_after, denials)
        signals.emit(signals.task_rate_limited, run.task, task_id=run.task_id, key=key,
                     limit=decision.denied_by, retry_after=decision.retry_after,
                     countdown=countdown)
        over = RateLimitExceeded(key, decision.retry_after, self.task_name, decision.denied_by)
        return Wait(over, countdown=countdown, budget="rate_limited_for",
                    max_total=self.max_delay, marks={"rate_limit_denials": denials + 1})
