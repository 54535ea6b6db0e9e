"""``celery kv concurrency``: show a pool's keys, set and clear weights; bad input is one line."""

from __future__ import annotations

import json
from collections.abc import Callable

from celery_kv import KV
from celery_kv.primitives.fair_pool import FairPool, key_id
from celery_kv.store import Step

from .test_cli import app_kv, invoke, make_app  # noqa: F401  (fixtures)

POOL = '''
from celery_kv import KVTask


@app.task(base=KVTask, name="proj.export", shared=False, concurrency_limit=1,
          concurrency_key="{tenant}", concurrency_total=3)
def export(tenant):
    return tenant
'''


def park(kv: KV, key: str, token: str) -> None:
    pool = FairPool(kv.store, "proj.export")
    args = pool.args(token=token, kid=key_id(key), lease_ms=30_000, limit=1, total=3,
                     queued_ms=60_000, grant_ms=30_000, mode="start", message="{}",
                     new_ticket=token)
    kv.store.run_phase("test", [Step("task_concurrency_start", pool.keys, args)])


def test_weight_then_show(make_app: Callable[..., str], app_kv: KV) -> None:  # noqa: F811
    name = make_app(extra=POOL)
    for token in ("r1", "w1", "w2"):
        park(app_kv, "tenant-a", token)
    done = invoke("-A", name, "kv", "concurrency", "weight", "proj.export", "tenant-a", "3")
    assert done.exit_code == 0 and "weight 3" in done.output
    shown = invoke("-A", name, "kv", "concurrency", "show", "proj.export", "--json")
    assert json.loads(shown.output)["keys"] == [
        {"key": "tenant-a", "running": 1, "waiting": 2, "weight": 3.0}]
    text = invoke("-A", name, "kv", "concurrency", "show", "proj.export").output
    assert "1 per key, 3 in total" in text and "'tenant-a'" in text
    cleared = invoke("-A", name, "kv", "concurrency", "weight", "proj.export", "tenant-a",
                     "--clear")
    assert cleared.exit_code == 0
    assert FairPool(app_kv.store, "proj.export").weights() == {}


def test_bad_input_is_one_line_and_writes_nothing(make_app: Callable[..., str],  # noqa: F811
                                                  app_kv: KV) -> None:  # noqa: F811
    name = make_app(extra=POOL, tasks=True)
    for args, said in ((["proj.export", "a", "0"], "weight 0"),
                       (["proj.export", "a", "--", "-1"], "weight -1"),
                       (["proj.export", "a", "nan"], "weight nan"),
                       (["proj.export", "a"], "give a weight"),
                       (["proj.push", "a", "2"], "no concurrency_limit"),
                       (["proj.nope", "a", "2"], "no task named 'proj.nope'")):
        result = invoke("-A", name, "kv", "concurrency", "weight", *args)
        assert result.exit_code != 0 and said in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert list(app_kv.client.scan_iter(match=f"{app_kv.store.prefix}:*")) == []
