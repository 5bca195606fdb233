"""``lakehouse retail …``: seed the operational database, make changes, run the CDC publisher.

Registered in :mod:`lakehouse.cli` with ``main.add_command(retail)``; the environment comes from the main
group's ``--env`` (``$LAKEHOUSE_ENV``).
"""

from __future__ import annotations

import logging

import click

from lakehouse.config import Settings, load_settings
from lakehouse.errors import ConfigError, LakehouseError

log = logging.getLogger(__name__)


def _settings(ctx: click.Context) -> Settings:
    root = ctx.find_root().obj
    env = root.get("env") if isinstance(root, dict) else None
    try:
        return load_settings(env)
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def retail() -> None:
    """The operational retail database (PostgreSQL): seed, changes, CDC to Kafka."""


@retail.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Load only the first N CDNOW orders.")
@click.option("--replace", is_flag=True, help="Empty the tables first (refused otherwise when data exists).")
@click.pass_context
def seed(ctx: click.Context, limit: int | None, replace: bool) -> None:
    """Create the schema and load the real CDNOW purchases (69,659 orders) with generated dimensions."""
    from lakehouse.sources.postgres import seed as seed_database

    try:
        report = seed_database(_settings(ctx), limit, replace=replace)
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"seeded {report.customers} customers, {report.products} products, {report.orders} orders, "
        f"{report.order_items} order items"
    )


@retail.command()
@click.option("--count", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--seed", "seed_value", type=int, default=1, show_default=True, help="Random seed.")
@click.pass_context
def changes(ctx: click.Context, count: int, seed_value: int) -> None:
    """Apply COUNT changes: new orders, status moves, customer updates, deletes of cancelled orders."""
    from lakehouse.sources.postgres import generate_changes

    try:
        report = generate_changes(_settings(ctx), count, seed_value)
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.by_kind.items()))
    click.echo(f"applied {report.total} changes: {kinds}")


@retail.group()
def cdc() -> None:
    """Log-based change data capture (wal2json → Kafka)."""


@cdc.command("run")
@click.option("--once", is_flag=True, help="Drain the slot and stop (default: follow it, Ctrl-C stops).")
@click.option(
    "--source", "source_name", default=None, help="The postgres_cdc source (default: the only one)."
)
@click.pass_context
def cdc_run(ctx: click.Context, once: bool, source_name: str | None) -> None:
    """Publish the database's changes to the source's Kafka topic (at-least-once, LSN in every record)."""
    from lakehouse.sources.cdc import run_cdc
    from lakehouse.sources.registry import PostgresCdcSource, load_registry

    settings = _settings(ctx)
    try:
        registry = load_registry(settings)
        if source_name:
            source = registry.get(source_name)
        else:
            found = registry.of_kind("postgres_cdc")
            if len(found) != 1:
                raise ConfigError(
                    f"sources.yaml has {len(found)} postgres_cdc sources: name one with --source"
                )
            source = found[0]
        if not isinstance(source, PostgresCdcSource):
            raise ConfigError(f"source {source_name!r} is not of kind postgres_cdc")
        if not once:
            click.echo(f"following slot {source.slot} → topic {source.topic}; Ctrl-C stops")
        report = run_cdc(settings, source, once=once)
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"published {report.changes} changes of {report.transactions} transactions to {report.topic} "
        f"(slot at {report.last_lsn or 'unchanged'}): {report.by_action}"
    )
