"""``celery kv debounce TASK [KEY]``: the pending and running bursts of a debounced task.

A debounced task (``debounce=S``) or a ``singleton_mode="latest"`` task keeps, per key, one
burst still to run (its task id is what every caller got back) and one running. Reading
them answers "when will it run, with what, and is the last one still going?".
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from ...store.bursts import Burst, Render, display_name, list_bursts, read_burst
from ..keys import Call, short_key
from ._base import (
    app_of,
    common,
    emit_json,
    feature_of,
    guarded,
    kv,
    seconds,
    table,
    target,
    task_of,
)

# the listing's widest columns are cut to these; the one-key view and --json show them whole
ARGS_WIDTH = 60
KEY_WIDTH = 48


def renderer(task: Any, feature: Any) -> Render:
    """The task's debounce key from one trigger's arguments, as ``fill_header`` renders it."""
    signature = task._kv_policy.signature

    def render(args: list[Any], kwargs: dict[str, Any]) -> str:
        call = Call(feature.task_name, signature, args, kwargs)
        return call.fingerprint if feature.key is None else str(feature.key.render(call))

    return render


def in_seconds(value: float | None, none: str = "-") -> str:
    """A time from now: '4.210s', or 'overdue 1.000s' for one that has passed."""
    if value is None:
        return none
    return seconds(value) if value >= 0 else f"overdue {seconds(-value)}"


def show_arguments(args: list[Any] | None, kwargs: dict[str, Any] | None) -> str:
    """Arguments as a call shows them: ``"alice", 3, note="x"`` (values as JSON)."""
    if args is None or kwargs is None:
        return "?"
    shown = [json.dumps(a, default=str) for a in args]
    shown += [f"{k}={json.dumps(v, default=str)}" for k, v in kwargs.items()]
    return ", ".join(shown)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def as_row(burst: Burst) -> dict[str, Any]:
    """One burst for --json: the record, its state and display name."""
    return {"state": burst.state, "name": display_name(burst), **asdict(burst)}


def _listing(bursts: list[Burst]) -> str:
    rows = []
    for b in bursts:
        p, r = b.pending, b.running
        rows.append((
            _short(b.key if b.key is not None else display_name(b), KEY_WIDTH),
            b.problem or b.state,
            p.task_id if p else "-", in_seconds(p.due_in) if p else "-",
            in_seconds(p.max_wait_in, "none") if p else "-",
            p.triggers if p else (r.triggers if r else "-"),
            r.task_id if r else "-",
            (in_seconds(r.lease_left) + ("" if r.status == "running" else f" ({r.status})"))
            if r else "-",
            _short(show_arguments(p.arguments.args, p.arguments.kwargs), ARGS_WIDTH)
            if p else "-",
        ))
    return table(["KEY", "STATE", "PENDING TASK ID", "DUE IN", "MAX-WAIT IN", "TRIGGERS",
                  "RUNNING TASK ID", "LEASE LEFT", "LATEST ARGS"], rows)


def _detail(b: Burst) -> str:
    p, r, w = b.pending, b.running, b.window
    rows: list[tuple[str, Any]] = [("key", b.key), ("state", b.problem or b.state),
                                   ("redis key", b.redis_key)]
    if p:
        rows += [
            ("pending task id", p.task_id), ("due in", in_seconds(p.due_in)),
            ("max-wait in", in_seconds(p.max_wait_in, "none")), ("triggers", p.triggers),
            ("first trigger", f"{seconds(p.first_trigger_ago)} ago"),
            ("latest args", p.arguments.problem
             or show_arguments(p.arguments.args, p.arguments.kwargs)),
        ]
    if r:
        rows += [
            ("running task id", r.task_id), ("run status", r.status),
            ("lease left", in_seconds(r.lease_left)), ("fence", r.fence),
            ("run triggers", r.triggers),
            ("run args", r.arguments.problem
             or show_arguments(r.arguments.args, r.arguments.kwargs)),
        ]
    if w and w.ends_in > 0:
        rows += [("leading run id", w.task_id), ("window ends in", in_seconds(w.ends_in)),
                 ("window triggers", w.triggers)]
    return table(["FIELD", "VALUE"], rows)


@kv.command()
@common
@click.argument("task_name", metavar="TASK")
@click.argument("key", metavar="[KEY]", required=False)
@click.pass_context
@guarded
def debounce(ctx: click.Context, task_name: str, key: str | None, url: str | None,
             prefix: str | None, as_json: bool) -> None:
    """Pending and running bursts of a debounced task (debounce=S, or singleton_mode="latest").

    TASK is the registered task; KEY the rendered debounce key (what its debounce_key or
    singleton_key template gives, e.g. the user id): that key's burst alone. Without KEY,
    every burst of TASK (listing needs SCAN: an operator user).
    """
    found = target(ctx, url, prefix)
    task = task_of(app_of(ctx), task_name)
    feature = feature_of(task, "debounce", 'debounce (nor singleton_mode="latest")')
    store = found.kv.store
    where = f"under '{found.kv.prefix}:'"
    if key is not None:
        burst = read_burst(store, feature.task_name, short_key(key))
        bursts = [burst] if burst is not None else []
        missing = f"no pending burst for task {task_name!r} key {key!r} {where}"
    else:
        bursts = list_bursts(store, feature.task_name, renderer(task, feature))
        missing = f"no pending burst for task {task_name!r} {where}"
    if as_json:
        emit_json([as_row(b) for b in bursts])
        return
    if not bursts:
        click.echo(missing)
        return
    click.echo(_detail(bursts[0]) if key is not None else _listing(bursts))
