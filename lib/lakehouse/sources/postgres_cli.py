"""``lakehouse retail …``: seed the operational database, make changes, run the CDC publisher.

Registered in :mod:`lakehouse.cli` with ``main.add_command(retail)``; the environment comes from the main
group's ``--env`` (``$LAKEHOUSE_ENV``).
"""

from __future__ import annotations

import logging

import click

from lakehouse.cli_kit import LakehouseGroup, pass_settings
from lakehouse.config import Settings
from lakehouse.errors import ConfigError

log = logging.getLogger(__name__)


@click.group(cls=LakehouseGroup)
def retail() -> None:
    """The operational retail database (PostgreSQL): seed, changes, CDC to Kafka."""


@retail.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Load only the first N CDNOW orders.")
@click.option("--replace", is_flag=True, help="Empty the tables first (refused otherwise when data exists).")
@pass_settings
def seed(settings: Settings, limit: int | None, replace: bool) -> None:
    """Create the schema and load the real CDNOW purchases (69,659 orders) with generated dimensions."""
    from lakehouse.sources.postgres import seed as seed_database

    report = seed_database(settings, limit, replace=replace)
    click.echo(
        f"seeded {report.customers} customers, {report.products} products, {report.orders} orders, "
        f"{report.order_items} order items"
    )


@retail.command()
@click.option("--count", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--seed", "seed_value", type=int, default=1, show_default=True, help="Random seed.")
@pass_settings
def changes(settings: Settings, count: int, seed_value: int) -> None:
    """Apply COUNT changes: new orders, status moves, customer updates, deletes of cancelled orders."""
    from lakehouse.sources.postgres import generate_changes

    report = generate_changes(settings, count, seed_value)
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
@pass_settings
def cdc_run(settings: Settings, once: bool, source_name: str | None) -> None:
    """Publish the database's changes to the source's Kafka topic (at-least-once, LSN in every record)."""
    from lakehouse.sources.cdc import run_cdc
    from lakehouse.sources.registry import PostgresCdcSource, load_registry

    registry = load_registry(settings)
    if source_name:
        source = registry.get(source_name)
    else:
        found = registry.of_kind("postgres_cdc")
        if len(found) != 1:
            raise ConfigError(f"sources.yaml has {len(found)} postgres_cdc sources: name one with --source")
        source = found[0]
    if not isinstance(source, PostgresCdcSource):
        raise ConfigError(f"source {source_name!r} is not of kind postgres_cdc")
    if not once:
        click.echo(f"following slot {source.slot} → topic {source.topic}; Ctrl-C stops")
    report = run_cdc(settings, source, once=once)
    click.echo(
        f"published {report.changes} changes of {report.transactions} transactions to {report.topic} "
        f"(slot at {report.last_lsn or 'unchanged'}): {report.by_action}"
    )
