"""``celery kv why TASK_ID`` without a worker: what callers left in Redis, and bad input.

Triggers of a debounced task stay one pending burst (no worker fires it), a singleton
call keeps its queued claim: the command must name each. Bad input (a malformed id, an
unknown id, an unknown task, Redis down) is one line and a non-zero exit. The worker
scenarios (blocked by a singleton, a slot, a rate limit, a debounce) are in
tests/celery/test_why.py.
"""

from __future__ import annotations

import uuid
from types import ModuleType

from celery_kv.testing import free_port

from .test_cli_debounce import (  # noqa: F401  (fixtures: proj, server)
    invoke,
    one_line_error,
    out_json,
    proj,
    server,
    trigger,
)


def test_a_pending_burst_is_named_with_its_due_time_and_triggers(
    proj: ModuleType,  # noqa: F811
) -> None:
    ids = trigger(proj.notify, [("alice", 1), ("alice", 2), ("alice", 3)])
    text = invoke("-A", proj.__name__, "kv", "why", ids[0])
    assert text.exit_code == 0, text.output
    verdict, header, _rule, *rows = text.output.splitlines()
    assert verdict.startswith("debounced: burst 'alice' fires in ")
    assert "3 triggers absorbed" in verdict
    assert header.split() == ["FEATURE", "KEY", "STATE", "HOLDER", "TTL", "FENCE"]
    assert any(r.startswith("debounce ") and ids[0] in r and "pending (3 triggers)" in r
               for r in rows), text.output

    answer = out_json(invoke("-A", proj.__name__, "kv", "why", ids[0], "--json"))
    assert answer["cause"] == "debounce" and answer["task_name"] == "proj.notify"
    assert "delay store" in answer["found_in"]
    row, = answer["keys"]
    assert row["holder"] == ids[0] and row["ours"] and 0 < row["ttl"] <= 5


def test_a_queued_singleton_claim_is_named(proj: ModuleType) -> None:  # noqa: F811
    task_id = proj.once.apply_async(("site-1",)).id
    answer = out_json(invoke("-A", proj.__name__, "kv", "why", task_id, "--json"))
    assert answer["cause"] == "queued", answer
    assert answer["verdict"].startswith("queued: holds singleton 'site-1'")
    row, = answer["keys"]
    assert (row["feature"], row["state"], row["holder"]) == ("singleton", "queued", task_id)
    assert row["fence"] >= 1 and row["ttl"] > 0


def test_an_unknown_id_is_one_line_and_exit_1(proj: ModuleType) -> None:  # noqa: F811
    task_id = str(uuid.uuid4())
    one_line_error(invoke("-A", proj.__name__, "kv", "why", task_id),
                   f"no task with id {task_id} is known to celery-kv or the result backend")


def test_a_malformed_id_is_one_line_and_exit_2(proj: ModuleType) -> None:  # noqa: F811
    for bad in ("has space", "tab\there", "x" * 300, ""):
        result = invoke("-A", proj.__name__, "kv", "why", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "Traceback" not in result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        assert "task id" in lines[0]


def test_an_unknown_task_name_is_one_line(proj: ModuleType) -> None:  # noqa: F811
    one_line_error(invoke("-A", proj.__name__, "kv", "why", str(uuid.uuid4()),
                          "--task", "proj.nope"), "no task named 'proj.nope'")


def test_redis_down_is_one_line(proj: ModuleType) -> None:  # noqa: F811
    url = f"redis://127.0.0.1:{free_port()}/0"
    one_line_error(invoke("-A", proj.__name__, "kv", "why", str(uuid.uuid4()), "--url", url),
                   "cannot reach Redis at", url)
