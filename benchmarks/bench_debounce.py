"""What a call costs the caller: a plain publish against a call a pending burst absorbs.

Run: ``.venv/bin/python -m benchmarks.bench_debounce``. No worker runs: it times
``apply_async`` in the producer, interleaved round by round, on two private
redis-servers (broker, coordination). Variants:

- ``plain``: a publish to the broker (Celery's ``apply_async`` of an uncoordinated task);
- ``debounce, absorbed``: a call that joins a pending burst (one script, nothing
  published: the burst's one message is already queued);
- ``debounce, new burst``: a call that starts a burst (claim, publish with a countdown,
  confirm: two scripts and a publish).
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from celery import Celery

from celery_kv import KVTask, install
from celery_kv.testing import redis_server

from ._common import interleaved_medians, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    with redis_server() as broker, redis_server() as kv_server:
        app = Celery("bench-debounce", broker=broker.url, set_as_current=False)
        app.conf.update(kv_redis_url=kv_server.url, kv_prefix="bench", task_ignore_result=True)
        install(app)

        def noop(key: str, i: int) -> int:
            return i

        plain: Any = app.task(name="bench.plain", base=KVTask, shared=False)(noop)
        burst: Any = app.task(name="bench.debounce", base=KVTask, shared=False,
                              debounce=3600.0, debounce_key="{key}")(noop)
        absorbing = uuid.uuid4().hex
        burst.apply_async((absorbing, 0))  # the pending burst every absorbed call joins
        counter = iter(range(10**9))
        ops = {
            "plain": lambda: plain.apply_async(("x", next(counter))),
            "debounce, absorbed": lambda: burst.apply_async((absorbing, next(counter))),
            "debounce, new burst": lambda: burst.apply_async((uuid.uuid4().hex, 0)),
        }
        medians = interleaved_medians(ops, rounds=args.rounds)
        base = medians["plain"]
        rows = [[name, f"{us:,.0f}", f"{us / base:.2f}x"] for name, us in medians.items()]
        print(f"## apply_async cost in the producer, median of {args.rounds} interleaved "
              "calls\n")
        print(table(["call", "µs (median)", "vs plain"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
