"""``celery kv doctor``: is this Redis fit to coordinate, and which ACL confines the app.

The checks live in ``celery_kv.store.doctor`` (the dashboard shows them as banners).
"""

from __future__ import annotations

from dataclasses import asdict

import click

from ...store.doctor import diagnose
from ._base import common, emit_json, guarded, kv, ping, table, target


@kv.command()
@common
@click.option("--strict", is_flag=True, help="Exit with status 2 when there is a warning.")
@click.pass_context
@guarded
def doctor(ctx: click.Context, url: str | None, prefix: str | None, as_json: bool,
           strict: bool) -> None:
    """Check that Redis can coordinate: reachability, version, mode, eviction, persistence.

    It also prints the ACL rules of a Redis user confined to the prefix (Redis 7).
    """
    found = target(ctx, url, prefix)
    report = diagnose(found.kv, found.where, ping(found))
    if as_json:
        emit_json({"url": report.where, "prefix": report.prefix, "server": report.server,
                   "keys": report.keys, "checks": [asdict(c) for c in report.checks],
                   "acl": report.acl})
    else:
        click.echo(f"celery kv doctor: {report.where} (prefix '{report.prefix}')\n")
        click.echo(table(["CHECK", "STATUS", "DETAIL"],
                         [(c.name, c.status, c.detail) for c in report.checks]))
        click.echo(f"\nACL of a user confined to '{report.prefix}:' (Redis 7):\n"
                   f"  ACL SETUSER <user> on ><password> {report.acl['rules']}\n"
                   f"operator user (locks, purge, key counts: adds SCAN):\n"
                   f"  ACL SETUSER <operator> on ><password> {report.acl['operator_rules']}")
    statuses = {c.status for c in report.checks}
    if "ERROR" in statuses:
        ctx.exit(1)
    if strict and "WARNING" in statuses:
        ctx.exit(2)
