"""``lakehouse privacy``: scan tables for PII, erase a data subject from every layer."""

from __future__ import annotations

import click

from lakehouse.cli_kit import LakehouseGroup, pass_settings
from lakehouse.config import Settings
from lakehouse.privacy.erase import erase_subject, parse_subject
from lakehouse.privacy.scanner import scan_tables


@click.group(cls=LakehouseGroup)
def privacy() -> None:
    """PII: scanning, tokenization in silver, data-subject erasure."""


@privacy.command()
@click.option(
    "--layer",
    "layers",
    multiple=True,
    default=["bronze"],
    show_default=True,
    type=click.Choice(["bronze", "silver", "gold"]),
    help="Layers to scan (repeatable).",
)
@click.option("--rows", default=2000, show_default=True, help="Rows sampled per table.")
@pass_settings
def scan(settings: Settings, layers: tuple[str, ...], rows: int) -> None:
    """Sample tables and propose PII classifications (compare with the catalog's `declared`)."""
    report = scan_tables(settings, layers, rows=rows)
    click.echo(report.to_string(index=False) if len(report) else "no PII found")


@privacy.command()
@click.option("--subject", required=True, help="<kind>:<id>, e.g. customer:123 or user:u-000042.")
@click.option("--reason", default="data subject request", show_default=True, help="Kept in audit.erasures.")
@pass_settings
def erase(settings: Settings, subject: str, reason: str) -> None:
    """Delete a data subject from every layer (DELETE, purge, VACUUM) and write audit.erasures."""
    from lakehouse.ml.features import OnlineCopies, features_root
    from lakehouse.spark import get_spark

    kind, subject_id = parse_subject(subject)
    # the online feature store holds copies of gold rows: erased with the lake, or the features stay served
    copies = [OnlineCopies(settings)] if any((features_root(settings) / "views").glob("*.yaml")) else []
    report = erase_subject(get_spark(settings), settings, kind, subject_id, reason, copies=copies)
    for table in report.tables:
        if table.version_before is None and table.version_after is None:  # a store outside the lake
            click.echo(f"{table.table:32} {table.rows_deleted:6} entities")
            continue
        click.echo(
            f"{table.table:32} {table.rows_deleted:6} rows  v{table.version_before} → v{table.version_after}"
        )
    click.echo(f"erasure {report.erasure_id}: {report.rows_deleted} rows deleted; recorded in audit.erasures")
