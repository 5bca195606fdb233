"""``lakehouse api``: pull the registry's HTTP sources into bronze, and serve the local FX API.

Registered with ``main.add_command(api)`` in :mod:`lakehouse.cli`; the group reads the environment chosen by
the main command's ``--env`` (or ``$LAKEHOUSE_ENV``).
"""

from __future__ import annotations

import click

from lakehouse.cli_kit import LakehouseGroup, pass_settings
from lakehouse.config import Settings


@click.group(cls=LakehouseGroup)
def api() -> None:
    """Third-party HTTP APIs: pull into bronze through buffered delivery; the local FX rates server."""


@api.command()
@click.option(
    "--source", "name", default=None, help="One http source of sources.yaml (default: all of them)."
)
@pass_settings
def pull(settings: Settings, name: str | None) -> None:
    """Pull what is new from the registry's http sources into their bronze tables."""
    from lakehouse.sources.http import pull_all

    reports = pull_all(settings, name)
    if not reports:
        click.echo("no http sources in the registry")
    for report in reports:
        click.echo(
            f"{report.source}: {report.pages} pages, {report.received} records, +{report.written} to bronze, "
            f"{report.duplicates} duplicates, {len(report.dead_letters)} dead letters, "
            f"{report.retries} retries; cursor {report.cursor_before} → {report.cursor_after}"
        )


@api.command("fx-server")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Default: the environment's fx_api.port."
)
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
@pass_settings
def fx_server(
    settings: Settings,
    port: int | None,
    host: str,
    throttle_first: int,
    retry_after: str,
    fail_every: int,
    slow_every: int,
    slow_seconds: float,
) -> None:
    """Serve the real ECB reference rates as a paginated, token-protected HTTP API (Ctrl-C stops)."""
    from lakehouse.simulate.fx_api import Faults, serve

    faults = Faults(throttle_first, retry_after, fail_every, slow_every, slow_seconds)
    port = port or settings.fx_api.port
    click.echo(f"FX rates API on http://{host}:{port}/v1/rates (Bearer $LAKEHOUSE_FX_TOKEN or demo-token)")
    serve(port, faults, host=host)
