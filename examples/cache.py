"""Cached task results: a slow lookup runs once, and concurrent misses wait for it.

    python -m examples.cache

Product pages ask the slow pricing service for a price. The result is cached for a
minute per argument list, so a hit returns the stored value without running the body.
When several workers miss at once, one computes and the others wait for its value
(single flight), so a cold key never stampedes the pricing service.
"""

from __future__ import annotations

import time
from typing import Any

from celery_kv import CachedTask, install
from examples.billing import journal
from examples.common import make_app, start_fresh, worker

app = make_app("cache")
kv = install(app)
PRICES = {"team": 2900}


@app.task(bind=True, base=CachedTask, cache_ttl=60)
def price(self: Any, sku: str) -> dict[str, Any]:
    journal.record(kv, f"price-{sku}")
    time.sleep(0.3)  # the pricing service is slow
    return {"sku": sku, "cents": PRICES[sku]}


def lookups(sku: str, times: int) -> list[Any]:
    """``times`` lookups sent at once: the workers see them as concurrent misses or hits."""
    return [r.get(timeout=30) for r in [price.delay(sku) for _ in range(times)]]


def computed(sku: str) -> int:
    return journal.count(kv, f"price-{sku}")


def main() -> None:
    start_fresh(kv)
    with worker(app, "examples.cache"):
        cold = lookups("team", 4)  # a cold key, 4 at once on 2 worker processes
        print(f"4 concurrent lookups of a cold key -> {computed('team')} computation, "
              f"{len({repr(v) for v in cold})} distinct answer")
        lookups("team", 3)
        print(f"3 more lookups -> still {computed('team')} computation (hits)")
        # The cached results are a celery-kv cache namespace: clear() drops them in O(1).
        kv.cache(price.kv_namespace).clear()
        lookups("team", 1)
        print(f"after clear(): 1 lookup -> {computed('team')} computations in all")


if __name__ == "__main__":
    main()
