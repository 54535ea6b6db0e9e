"""``celery kv idempotency``: one idempotency record, in progress or completed."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from ..keys import short_key, task_id_of
from ._base import (
    Target,
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


def _task_idempotency(found: Target, task: Any) -> Any:
    feature = feature_of(task, "idempotency", "idempotency (base=IdempotentTask)")
    return feature.primitive(found.kv, task._kv_policy.namespace)


@kv.command()
@common
@click.argument("task_or_key", metavar="TASK")
@click.argument("key", metavar="KEY", required=False)
@click.option("--namespace", default=None,
              help="A record made in code by kv.idempotency(namespace): then the only "
                   "argument is the KEY.")
@click.option("--forget", is_flag=True,
              help="Then delete the record, so the next call runs: for a record that says "
                   "'unknown' once you have checked what its run did.")
@click.pass_context
@guarded
def idempotency(ctx: click.Context, task_or_key: str, key: str | None, namespace: str | None,
                forget: bool, url: str | None, prefix: str | None, as_json: bool) -> None:
    """State of one idempotency record: in progress (owner, lease), completed (result) or
    unknown (a run's lease lapsed without an outcome: its effects may have happened).

    TASK is a registered idempotent task and KEY its idempotency key (the
    per-call idempotency_key, or what its idempotency_key template gives).
    For a record made in code: --namespace NS KEY.
    """
    found = target(ctx, url, prefix)
    if namespace is not None:
        if key is not None:
            raise click.UsageError("with --namespace, give only the KEY")
        try:
            idem = found.kv.idempotency(namespace)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--namespace") from None
        key = task_or_key
    else:
        if key is None:
            raise click.UsageError("give TASK and KEY, or --namespace NS KEY")
        idem = _task_idempotency(found, task_of(app_of(ctx), task_or_key))
        key = short_key(key)
    try:
        state = idem.state(key)
    except (ValueError, TypeError) as exc:  # a key too long, or a record that does not parse
        raise click.ClickException(
            f"cannot read the idempotency record for key {key!r} in namespace "
            f"{idem.namespace!r} under '{found.kv.prefix}:': {exc}"
        ) from None
    if state.status == "absent":
        raise click.ClickException(
            f"no idempotency record for key {key!r} in namespace {idem.namespace!r} "
            f"under '{found.kv.prefix}:' (never seen, or expired)"
        )
    data = {"namespace": idem.namespace, "key": key, **asdict(state),
            "task_id": task_id_of(state.owner)}
    if forget:
        data["forgotten"] = idem.forget(key)
    if as_json:
        emit_json(data)
        return
    click.echo(table(["FIELD", "VALUE"], [
        ("namespace", idem.namespace), ("key", key), ("status", state.status),
        ("owner task id", data["task_id"]), ("owner token", state.owner),
        ("fingerprint", state.fingerprint),
        ("lease left", seconds(state.lease_left) if state.status == "in_progress" else "-"),
        ("kept for", seconds(state.ttl_left) if state.status in ("completed", "unknown")
         else "-"),
        ("result", json.dumps(state.result, default=str) if state.status == "completed"
         else "-"),
    ]))
    if forget:
        click.echo(f"forgot the record: the next call with key {key!r} runs")
