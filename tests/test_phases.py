"""Lifecycle phases: step scripts composed into one script (one round trip on one server),
run step by step on a Cluster; a step that denies undoes the steps before it."""

from __future__ import annotations

from typing import Any

import pytest

from celery_kv import KV
from celery_kv.store import Step
from celery_kv.store.scripts import available, compose, load
from tests.conftest import count_commands, keys_under


def claims(kv: KV, task_id: str, record: str) -> list[Step]:
    keys = kv.store.keys
    lock = (keys.key("lock", ("t", record)), keys.key("lock", ("t", record), "fence"))
    return [
        Step("task_singleton_claim", lock, (task_id, "nonce-1", 10_000, 60_000, "")),
        Step("task_idempotency_claim", (keys.key("idem", ("ns", record)),),
             (task_id, "nonce-1", "fp", 10_000)),
    ]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_a_phase_runs_every_step_in_one_round_trip(kv: KV, backend_name: str) -> None:
    kv.store.run_phase("warm up", claims(kv, "warm", "warm"))
    with count_commands(kv) as sent:
        answer = kv.store.run_phase("enqueue claim", claims(kv, "id-1", "r1"))
    assert [text(reply[0]) for reply in answer.replies] == ["ok", "ok"]
    assert answer.now > 1.7e9
    expected = 2 if backend_name == "cluster" else 1  # one call per slot on a Cluster
    assert len([c for c in sent if c[0] == "EVALSHA"]) == expected


def test_a_denied_step_undoes_the_steps_before_it(kv: KV) -> None:
    keys = kv.store.keys
    record = keys.key("idem", ("ns", "r2"))
    kv.client.hset(record, mapping={"s": "p", "o": "someone-else", "f": "fp"})
    kv.client.pexpire(record, 60_000)
    answer = kv.store.run_phase("enqueue claim", claims(kv, "id-2", "r2"))
    assert [text(reply[0]) for reply in answer.replies] == ["ok", "deny"]
    assert text(answer.replies[1][1]) == "in_progress"
    assert not kv.client.exists(keys.key("lock", ("t", "r2"))), "the lock claim was undone"
    assert sorted(keys_under(kv)) == sorted([record, keys.key("lock", ("t", "r2"), "fence")])


def test_a_retried_claim_is_the_same_call_not_a_duplicate(kv: KV) -> None:
    first = kv.store.run_phase("enqueue claim", claims(kv, "id-3", "r3"))
    again = kv.store.run_phase("enqueue claim", claims(kv, "id-3", "r3"))  # same nonce
    assert [text(r[0]) for r in first.replies + again.replies] == ["ok"] * 4
    other = [Step(s.script, s.keys, (s.args[0], "nonce-2", *s.args[2:])) for s in
             claims(kv, "id-3", "r3")]
    denied = kv.store.run_phase("enqueue claim", other)  # same id, another call
    assert text(denied.replies[0][0]) == "deny" and text(denied.replies[0][1]) == "id-3"


def test_every_step_script_declares_what_the_composer_needs() -> None:
    for name in (n for n in available() if n.startswith("task_")):
        source = load(name)
        for used in source.uses:
            load(used)
        if source.undo is not None:
            assert load(source.undo).retry_safe, f"{name}: its undo must be safe to retry"
    with pytest.raises(ValueError):
        compose(())
    assert not compose(("task_done_check", "task_rate_limit_start")).retry_safe
