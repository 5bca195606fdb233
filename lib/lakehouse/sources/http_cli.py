"""``lakehouse api``: pull the registry's HTTP sources into bronze, and serve the local FX API.

Register with ``main.add_command(api)`` in :mod:`lakehouse.cli`; the group reads the environment chosen by the
main command's ``--env`` (or ``$LAKEHOUSE_ENV``).
"""

from __future__ import annotations

import click

from lakehouse.config import Settings, load_settings
from lakehouse.errors import LakehouseError


def _settings(ctx: click.Context) -> Settings:
    root = ctx.find_root()
    env = root.obj.get("env") if isinstance(root.obj, dict) else None
    return load_settings(env)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def api() -> None:
    """Third-party HTTP APIs: pull into bronze through buffered delivery; the local FX rates server."""


@api.command()
@click.option(
    "--source", "name", default=None, help="One http source of sources.yaml (default: all of them)."
)
@click.pass_context
def pull(ctx: click.Context, name: str | None) -> None:
    """Pull what is new from the registry's http sources into their bronze tables."""
    from lakehouse.sources.http import pull_all

    try:
        reports = pull_all(_settings(ctx), name)
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    if not reports:
        click.echo("no http sources in the registry")
    for report in reports:
        click.echo(
            f"{report.source}: {report.pages} pages, {report.received} records, +{report.written} to bronze, "
            f"{report.duplicates} duplicates, {len(report.dead_letters)} dead letters, "
            f"{report.retries} retries; cursor {report.cursor_before} → {report.cursor_after}"
        )


@api.command("fx-server")
@click.option("--port", type=click.IntRange(1, 65535), default=18780, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address.")
@click.option(
    "--throttle-first", type=click.IntRange(min=0), default=0, help="Answer 429 to the first N calls."
)
@click.option(
    "--retry-after", default="1", show_default=True, help="Retry-After of a 429 (seconds or HTTP date)."
)
@click.option("--fail-every", type=click.IntRange(min=0), default=0, help="Answer 500 to every k-th call.")
@click.option("--slow-every", type=click.IntRange(min=0), default=0, help="Delay every m-th call.")
@click.option("--slow-seconds", type=click.FloatRange(min=0), default=2.0, show_default=True)
def fx_server(
    port: int,
    host: str,
    throttle_first: int,
    retry_after: str,
    fail_every: int,
    slow_every: int,
    slow_seconds: float,
) -> None:
    """Serve the real ECB reference rates as a paginated, token-protected HTTP API (Ctrl-C stops)."""
    from lakehouse.sources.fx_server import Faults, serve

    faults = Faults(throttle_first, retry_after, fail_every, slow_every, slow_seconds)
    click.echo(f"FX rates API on http://{host}:{port}/v1/rates (Bearer $LAKEHOUSE_FX_TOKEN or demo-token)")
    try:
        serve(port, faults, host=host)
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc
