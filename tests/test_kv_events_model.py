"""``kv_events`` against a model: any sequence of eager calls records exactly the
decisions the rules say (a Hypothesis state machine on fakeredis).

Run eagerly, each call ends before the next starts, so the rules are simple to state: an
idempotent key runs once and every later call is a duplicate of the completed run; a
cached argument list misses once and hits after; a tenant gets two calls an hour, and a
third is rate-limited (eagerly: ``RateLimitExceeded``); a singleton whose last run ended
runs again.
"""

from __future__ import annotations

import uuid
from collections import Counter

import fakeredis
import pytest
from celery import Celery
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from celery_kv import KV, CachedTask, IdempotentTask, RateLimitExceeded, SingletonTask, install
from celery_kv.celery.install import installed
from celery_kv.celery.keys import encode_value
from celery_kv.testing.events import KVEvents

app = Celery("model", broker="memory://", backend="cache+memory://")
app.conf.update(task_always_eager=True, task_eager_propagates=True,
                kv_redis_url="redis://127.0.0.1:1/0")
install(app, KV(client=fakeredis.FakeRedis(), prefix="unused"))


@app.task(base=IdempotentTask, idempotency_key="{order}", shared=False)
def charge(order: str) -> str:
    return order


@app.task(base=CachedTask, cache_ttl=3600, cache_key="{sku}", shared=False)
def price(sku: str) -> int:
    return len(sku)


@app.task(base=SingletonTask, singleton_key="{n}", shared=False,
          global_rate_limit="2/h", rate_limit_key="{tenant}")
def call_partner(tenant: str, n: int) -> int:
    return n


Key = tuple[str, str, "str | None"]


class EagerRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.kv = KV(client=fakeredis.FakeRedis(server=fakeredis.FakeServer()),
                     prefix="m" + uuid.uuid4().hex[:8])
        self.previous = installed(app).use(self.kv)
        self.events = KVEvents(wait=0.0).start()
        self.expected: Counter[Key] = Counter()
        self.charged: set[str] = set()
        self.priced: set[str] = set()
        self.calls: Counter[str] = Counter()

    def teardown(self) -> None:
        self.events.stop()
        installed(app).use(self.previous)

    @rule(order=st.sampled_from(["o1", "o2", "a:b"]))
    def charge_once(self, order: str) -> None:
        result = charge.delay(order)
        assert result.get() == order
        if order in self.charged:
            self.expected["task_deduplicated", charge.name, encode_value(order, "o")] += 1
            self.events.assert_deduplicated(result, key=order)
        else:
            self.expected["task_admitted", charge.name, None] += 1
            self.events.assert_ran(result)
        self.charged.add(order)

    @rule(sku=st.sampled_from(["team", "pro", "%41"]))
    def look_up(self, sku: str) -> None:
        result = price.delay(sku)
        assert result.get() == len(sku)
        if sku in self.priced:
            self.expected["cache_hit", price.name, encode_value(sku, "sku")] += 1
        else:
            self.expected["cache_miss", price.name, encode_value(sku, "sku")] += 1
            self.expected["task_admitted", price.name, None] += 1
        self.priced.add(sku)

    @rule(tenant=st.sampled_from(["acme", "globex"]), n=st.integers(0, 2))
    def call(self, tenant: str, n: int) -> None:
        self.calls[tenant] += 1
        if self.calls[tenant] > 2:
            with pytest.raises(RateLimitExceeded):
                call_partner.delay(tenant, n)
            self.expected["task_rate_limited", call_partner.name, tenant] += 1
            self.events.assert_rate_limited(call_partner.name, key=tenant,
                                            times=self.calls[tenant] - 2)
        else:
            assert call_partner.delay(tenant, n).get() == n
            self.expected["task_admitted", call_partner.name, None] += 1

    @invariant()
    def recorded_exactly_what_the_rules_say(self) -> None:
        assert self.events.counts() == +self.expected


EagerRules.TestCase.settings = settings(max_examples=40, stateful_step_count=15,
                                        deadline=None)
test_eager_rules_record_the_modelled_events = EagerRules.TestCase
