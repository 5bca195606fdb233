"""``lakehouse retail …``: seed the operational database, make changes, run the CDC publisher, and extract
any postgres source (or print its fingerprint) outside the DAG.

Registered in :mod:`lakehouse.cli` with ``main.add_command(retail)``; the environment comes from the main
group's ``--env`` (``$LAKEHOUSE_ENV``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from lakehouse.cli_kit import LakehouseGroup, pass_settings
from lakehouse.config import Settings
from lakehouse.errors import ConfigError

if TYPE_CHECKING:
    from lakehouse.sources.registry import PostgresTableSource

log = logging.getLogger(__name__)


@click.group(cls=LakehouseGroup)
def retail() -> None:
    """PostgreSQL: the demo database (seed, changes), CDC to Kafka, and the extract of any postgres source."""


@retail.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Load only the first N CDNOW orders.")
@click.option("--replace", is_flag=True, help="Empty the tables first (refused otherwise when data exists).")
@pass_settings
def seed(settings: Settings, limit: int | None, replace: bool) -> None:
    """Create the schema and load the real CDNOW purchases (69,659 orders) with generated dimensions."""
    from lakehouse.simulate.retail import seed as seed_database

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
    from lakehouse.simulate.retail import generate_changes

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


@retail.command("extract")
@click.option(
    "--source", "source_names", multiple=True, help="A postgres source (repeat for more; default: every one)."
)
@click.option("--page-size", type=click.IntRange(min=1), default=50_000, show_default=True)
@pass_settings
def extract(settings: Settings, source_names: tuple[str, ...], page_size: int) -> None:
    """Extract postgres sources into bronze (incremental or snapshot, as declared), each on its own."""
    from lakehouse.sources.postgres import extract_sources, raise_for_failures
    from lakehouse.spark import get_spark

    sources = _postgres_sources(settings, source_names)
    outcomes = extract_sources(get_spark(settings), settings, sources, page_size=page_size)
    for outcome in outcomes:
        report = outcome.report
        if report is None:
            click.echo(f"{outcome.source}: FAILED {outcome.error}")
        elif report.mode == "snapshot":
            what = "unchanged" if report.unchanged else f"{report.rows} changes"
            click.echo(
                f"{outcome.source}: {what} (inserted {report.inserted}, updated {report.updated}, "
                f"deleted {report.deleted}) → {report.bronze} v{report.table_version}"
            )
        else:
            click.echo(
                f"{outcome.source}: {report.rows} rows in {report.pages} pages → {report.bronze} "
                f"v{report.table_version}"
            )
    raise_for_failures(outcomes)


@retail.command("fingerprint")
@click.option("--source", "source_names", multiple=True, help="A postgres or postgres_cdc source (repeat).")
@pass_settings
def fingerprint(settings: Settings, source_names: tuple[str, ...]) -> None:
    """Print what changes when a source has something new to land (for data-aware rebuilds)."""
    from lakehouse.sources.postgres import source_fingerprint
    from lakehouse.sources.registry import PostgresCdcSource, PostgresTableSource, load_registry

    registry = load_registry(settings)
    chosen = [registry.get(name) for name in source_names] or [
        s for s in registry.sources.values() if isinstance(s, PostgresTableSource | PostgresCdcSource)
    ]
    for source in chosen:
        if not isinstance(source, PostgresTableSource | PostgresCdcSource):
            raise ConfigError(f"source {source.name!r} is not of kind postgres or postgres_cdc")
        click.echo(f"{source.name}\t{source_fingerprint(settings, source)}")


def _postgres_sources(settings: Settings, names: tuple[str, ...]) -> list[PostgresTableSource]:
    from lakehouse.sources.registry import PostgresTableSource, load_registry

    registry = load_registry(settings)
    sources = [registry.get(name) for name in names] or registry.of_kind("postgres")
    chosen = []
    for source in sources:
        if not isinstance(source, PostgresTableSource):
            raise ConfigError(f"source {source.name!r} is not of kind postgres")
        chosen.append(source)
    return chosen
