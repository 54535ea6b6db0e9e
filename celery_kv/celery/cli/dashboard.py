"""``celery kv dashboard``: serve the live page (``celery_kv.dashboard``) until Ctrl-C.

    celery -A proj kv dashboard [--port 9809] [--bind 127.0.0.1] [--allow-unlock]

Read-only unless ``--allow-unlock``; then a random token is printed here, and the page
must send it (with a confirmation) to break a lock. Binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import click

from ...dashboard import Dashboard, new_token, serve
from ._base import app_of, guarded, kv, target


@kv.command()
@click.option("--port", type=click.IntRange(0, 65535), default=9809, show_default=True,
              help="TCP port to listen on (0: any free port).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes the page.")
@click.option("--allow-unlock", is_flag=True,
              help="Let the page break locks, with a token printed at start-up.")
@click.option("--url", default=None, help="Redis URL (default: the app's kv_redis_url or broker).")
@click.option("--prefix", default=None, help="Key prefix (default: the app's kv_prefix).")
@click.pass_context
@guarded
def dashboard(ctx: click.Context, port: int, bind: str, allow_unlock: bool, url: str | None,
              prefix: str | None) -> None:
    """A live web page: held locks and semaphores, rate-limit decisions per minute,
    waiting and deferred tasks, idempotency records, doctor's findings."""
    found = target(ctx, url, prefix)  # Redis down: one line and exit status 1
    token = new_token() if allow_unlock else None
    page = Dashboard(found.kv, app_of(ctx), where=found.where, allow_unlock=allow_unlock,
                     token=token, secrets_=found.secrets)
    try:
        server = serve(page, bind, port)
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise click.ClickException(f"cannot listen on {bind}:{port}: {reason}") from None
    host, bound = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"celery kv dashboard: http://{shown}:{bound}/ for {found.where} "
               f"(prefix '{found.kv.prefix}'), "
               + ("unlock allowed" if allow_unlock else "read-only"))
    if token is not None:
        click.echo(f"unlock token: {token}")
    click.echo("Ctrl-C stops it.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
