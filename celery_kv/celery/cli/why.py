"""``celery kv why TASK_ID``: what holds one task back, as a verdict line and its keys.

The lookup lives in ``celery_kv.celery.why`` (see its docstring for what it reads and
what it costs: an HSCAN of the delay store, the app's pools, and a SCAN of the prefix
when the task's message is nowhere in Redis); this module parses and prints.
"""

from __future__ import annotations

import click

from ..why import UnknownTask, check_task_id, explain
from ._base import app_of, common, emit_json, guarded, kv, seconds, table, target, task_of


def _task_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_task_id(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@kv.command()
@common
@click.argument("task_id", metavar="TASK_ID", callback=_task_id)
@click.option("--task", "task_name", default=None,
              help="The task's name: look only at its keys (faster on a big app).")
@click.pass_context
@guarded
def why(ctx: click.Context, task_id: str, task_name: str | None, url: str | None,
        prefix: str | None, as_json: bool) -> None:
    """Why TASK_ID is not running: the feature holding it back, who holds its keys, the
    TTLs and fences, its rate-limit slot or its debounce burst."""
    found = target(ctx, url, prefix)
    app = app_of(ctx)
    if task_name is not None:
        task_of(app, task_name)
    try:
        answer = explain(app, found.kv, task_id, task_name)
    except UnknownTask as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(answer.as_dict())
        return
    click.echo(answer.verdict)
    if answer.keys:
        click.echo(table(["FEATURE", "KEY", "STATE", "HOLDER", "TTL", "FENCE"],
                         [(r.feature, r.key, r.state, r.holder or "-",
                           seconds(r.ttl) if r.ttl is not None else "-",
                           "-" if r.fence is None else r.fence) for r in answer.keys]))
    for note in answer.notes:
        click.echo(f"note: {note}")
