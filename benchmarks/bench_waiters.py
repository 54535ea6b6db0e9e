"""Parked waiters of the fair concurrency pool: memory per waiter, and promotions per second.

Run: ``.venv/bin/python -m benchmarks.bench_waiters``. No worker runs: the pool's step
scripts are driven as the concurrency feature drives them, on a private redis-server,
with a message the size of a real one (a Celery signature with its celery-kv header).

- park: ``--waiters`` runs (default 10,000) across ``--keys`` keys (default 1,000), each
  key's one slot held, so every run is parked (one start script each);
- memory: ``MEMORY USAGE`` (``SAMPLES 0``) of every key of the pool, over the waiters;
- promotions, one at a time: a run ends (release script: its slot goes to the next
  waiter, whose message is returned), and the granted message's run starts (start
  script: the grant becomes its lease); promotions per second over both scripts;
- promotions in bulk: every slot freed without a grant (a retry's hand-back), then the
  pump hands them out, up to 200 per call.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from celery import Celery

from celery_kv import KV
from celery_kv.primitives._arguments import text
from celery_kv.primitives.fair_pool import FairPool, key_id
from celery_kv.store import Step, codec

from ._common import bench_redis, table


def sample_message(app: Celery, key: str, ticket: str) -> str:
    """A parked message as the feature builds it (a signature with its celery-kv header)."""
    sig = app.signature("proj.call_partner", args=(key, {"order": 42, "amount": "10.00"}),
                        kwargs={}, options={
                            "task_id": str(uuid.uuid4()), "root_id": str(uuid.uuid4()),
                            "parent_id": None, "retries": 0, "reply_to": str(uuid.uuid4()),
                            "headers": {"celery_kv": {"attempt": 0,
                                                      "concurrency_ticket": ticket}},
                            "exchange": "", "routing_key": "celery", "priority": 0,
                            "ignore_result": False})
    return codec.dumps(dict(sig))


class Driver:
    def __init__(self, kv: KV, limit: int = 1, total: int = 0) -> None:
        self.kv = kv
        self.pool = FairPool(kv.store, "bench.waiters")
        self.conf = {"limit": limit, "total": total, "lease_ms": 60_000, "grant_ms": 60_000,
                     "queued_ms": 3_600_000}

    def call(self, script: str, **args: Any) -> list[Any]:
        step = Step(script, self.pool.keys, self.pool.args(**self.conf, **args))
        return list(self.kv.store.run_phase("bench", [step]).replies[0])

    def start(self, key: str, token: str, ticket: str = "", message: str = "",
              new_ticket: str = "") -> list[Any]:
        return self.call("task_concurrency_start", token=token, kid=key_id(key),
                         mode="start", ticket=ticket, message=message, new_ticket=new_ticket)

    def release(self, key: str, token: str, mode: str = "grant") -> list[Any]:
        return self.call("task_concurrency_release", token=token, kid=key_id(key), mode=mode)


def memory(kv: KV, pool: FairPool) -> dict[str, int]:
    client: Any = kv.store.client
    return {key.rsplit(":", 1)[-1]: int(client.memory_usage(key, samples=0) or 0)
            for key in pool.keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=1_000)
    args = parser.parse_args()
    app = Celery("bench-waiters", set_as_current=False)
    with bench_redis() as url:
        kv = KV.from_url(url, prefix="bench" + uuid.uuid4().hex[:6])
        d = Driver(kv)
        keys = [f"tenant-{n}" for n in range(args.keys)]
        for key in keys:
            assert text(d.start(key, f"holder-{key}")[0]) == "ok"
        tickets = [uuid.uuid4().hex for _ in range(args.waiters)]
        messages = [sample_message(app, keys[n % len(keys)], ticket)
                    for n, ticket in enumerate(tickets)]
        began = time.perf_counter()
        for n, (ticket, message) in enumerate(zip(tickets, messages, strict=True)):
            reply = d.start(keys[n % len(keys)], f"run-{n}", message=message,
                            new_ticket=ticket)
            assert text(reply[1]) == "parked", reply
        park_s = time.perf_counter() - began
        used = memory(kv, d.pool)
        total = sum(used.values())
        avg_message = sum(map(len, messages)) / len(messages)

        # one at a time: a run ends, its slot goes to the next waiter, which starts
        rounds = min(2_000, args.waiters)
        holders = {key: f"holder-{key}" for key in keys}
        began = time.perf_counter()
        for n in range(rounds):
            key = keys[n % len(keys)]
            granted = d.release(key, holders[key])[1:]
            assert len(granted) == 1, granted
            ticket = codec.loads(text(granted[0]))["options"]["headers"]["celery_kv"][
                "concurrency_ticket"]
            holders[key] = f"promoted-{n}"
            assert text(d.start(key, holders[key], ticket=ticket)[0]) == "ok"
        one_s = time.perf_counter() - began

        # in bulk: every slot freed without a grant, then the pump hands them out
        for key in keys:
            d.release(key, holders[key], mode="hold")
        began = time.perf_counter()
        bulk = calls = 0
        while bulk < len(keys):
            got = d.pool.pump(1, 0, 3_600_000, 60_000)
            calls += 1
            if not got:
                break
            bulk += len(got)
        bulk_s = time.perf_counter() - began

    print(f"{args.waiters:,} parked waiters across {args.keys:,} keys "
          f"(message JSON: {avg_message:.0f} bytes on average)\n")
    rows: list[list[object]] = [[part, f"{size:,}"] for part, size in used.items() if size]
    rows.append(["all keys", f"{total:,}"])
    print(table(["key", "MEMORY USAGE (bytes)"], rows))
    print(f"\nper waiter: {total / args.waiters:,.0f} bytes "
          f"({total / args.waiters - avg_message:,.0f} beyond its message; the {args.keys:,} "
          "holders included)")
    print()
    print(table(["operation", "count", "seconds", "per second"], [
        ["park (start script)", args.waiters, f"{park_s:.2f}", f"{args.waiters / park_s:,.0f}"],
        ["promote one: release + start", rounds, f"{one_s:.2f}", f"{rounds / one_s:,.0f}"],
        [f"promote in bulk: pump ({calls} calls)", bulk, f"{bulk_s:.3f}",
         f"{bulk / bulk_s:,.0f}"],
    ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
