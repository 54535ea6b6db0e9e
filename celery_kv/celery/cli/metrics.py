"""``celery kv metrics``: serve the Prometheus metrics of the app's coordination.

The collector (``celery_kv.metrics``) reads Redis at each scrape, so any number of these
can run, anywhere that reaches Redis; a worker can serve the same with ``kv_metrics_port``.
"""

from __future__ import annotations

import contextlib
import threading

import click

from ._base import guarded, kv, target

DEFAULT_PORT = 9808


def _collector_module() -> object:
    try:
        from ... import metrics
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    return metrics


@kv.command()
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to serve /metrics on.")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--once", is_flag=True, help="Print one scrape to stdout and exit.")
@click.option("--url", default=None, help="Redis URL (default: the app's kv_redis_url).")
@click.option("--prefix", default=None, help="Key prefix (default: the app's kv_prefix).")
@click.pass_context
@guarded
def metrics(ctx: click.Context, port: int, bind: str, once: bool, url: str | None,
            prefix: str | None) -> None:
    """Serve Prometheus metrics: decisions per task, feature and event, and the live
    state (held locks, oldest lock, slots, waiters, deferred messages, reservation lag)."""
    module = _collector_module()
    found = target(ctx, url, prefix)
    registry = module.registry_for(found.kv)  # type: ignore[attr-defined]
    if once:
        from prometheus_client import generate_latest

        click.echo(generate_latest(registry).decode(), nl=False)
        return
    try:
        from prometheus_client import start_http_server

        start_http_server(port, addr=bind, registry=registry)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc}") from None
    click.echo(f"celery-kv metrics for '{found.kv.prefix}:' on {found.where}: "
               f"http://{bind}:{port}/metrics (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
