"""``celery kv purge``: remove every key under the prefix (SCAN + UNLINK, never KEYS)."""

from __future__ import annotations

import click

from ...store.admin import count_keys
from ...store.admin import purge as purge_keys
from ._base import common, emit_json, guarded, kv, target


@kv.command()
@common
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@guarded
def purge(ctx: click.Context, url: str | None, prefix: str | None, as_json: bool,
          yes: bool) -> None:
    """Remove every key under the prefix (SCAN + UNLINK, never KEYS).

    Held locks, claims, limits, cached values and sessions all go. Only keys
    named '<prefix>:...' are touched; the broker's and other apps' keys stay.
    Listing keys needs SCAN: run it as an operator user (`celery kv doctor` shows the rules).
    """
    found = target(ctx, url, prefix)
    store = found.kv.store
    total = count_keys(store)["total"]
    if total and not yes:
        click.confirm(
            f"Remove {total} key(s) matching '{store.keys.pattern()}' from {found.where}?",
            abort=True, err=True,
        )
    removed = purge_keys(store) if total else 0
    if as_json:
        emit_json({"prefix": store.prefix, "removed": removed})
    else:
        click.echo(f"removed {removed} key(s) under '{store.prefix}:'")
