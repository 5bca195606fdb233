"""``lakehouse catalog``: list, show and check table contracts; freshness against the SLA; scaffold drafts."""

from __future__ import annotations

import click

from lakehouse.cli_kit import LakehouseGroup, pass_settings
from lakehouse.config import Settings
from lakehouse.governance.catalog import (
    catalog_root,
    check_catalog,
    freshness_report,
    load_catalog,
    scaffold_contract,
)


@click.group(cls=LakehouseGroup)
def catalog() -> None:
    """Table contracts: owner, columns, classification, retention, freshness SLA."""


@catalog.command("list")
@pass_settings
def list_tables(settings: Settings) -> None:
    """Every contract: table, owner, classification, SLA."""
    for name, contract in sorted(load_catalog(settings).tables.items()):
        pii = ",".join(c.name for c in contract.pii_columns()) or "-"
        click.echo(
            f"{name:34} {contract.owner:14} {contract.classification:12} "
            f"sla={contract.freshness_sla or '-':5} pii={pii}"
        )


@catalog.command()
@click.argument("table")
@pass_settings
def show(settings: Settings, table: str) -> None:
    """One contract with its columns."""
    contract = load_catalog(settings).contract(table)
    click.echo(f"{contract.table} — {contract.description}")
    click.echo(
        f"owner {contract.owner}; {contract.classification}; retention {contract.retention_days} days; "
        f"freshness SLA {contract.freshness_sla or 'none'}"
    )
    for subject in contract.subjects:
        click.echo(f"subject {subject.kind}: {subject.sql()} ({subject.match})")
    for column in contract.columns:
        pii = f" pii={column.pii} treatment={column.treatment}" if column.pii else ""
        click.echo(
            f"  {column.name:22} {column.type:14} {column.classification:12}{pii}  {column.description}"
        )


@catalog.command()
@click.argument("tables", nargs=-1)
@click.option("--freshness/--no-freshness", default=True, help="Also check last commits against the SLA.")
@pass_settings
def check(settings: Settings, tables: tuple[str, ...], freshness: bool) -> None:
    """Check contracts against the Delta schemas (drift fails) and, optionally, freshness."""
    checked = check_catalog(settings, list(tables) or None)
    click.echo(f"schema: {len(checked)} tables match their contracts")
    if freshness:
        report = freshness_report(settings)
        if tables:
            report = report[report["table"].isin(tables)]
        # Tables built only in some modes (continuous: rt_*) are not late when that mode never ran.
        optional = {name for name, c in load_catalog(settings).tables.items() if c.optional}
        stale = report[~report["ok"] & ~(report["table"].isin(optional) & report["last_commit"].isna())]
        click.echo(report.to_string(index=False))
        if len(stale):
            raise click.ClickException(
                f"{len(stale)} tables breach their freshness SLA: {', '.join(stale['table'])}"
            )


@catalog.command()
@click.argument("table")
@click.option("--write", is_flag=True, help="Write catalog/<layer>/<name>.yaml (refuses to overwrite).")
@pass_settings
def scaffold(settings: Settings, table: str, write: bool) -> None:
    """Draft a contract from the table's Delta schema (PII proposed by the scanner)."""
    text = scaffold_contract(settings, table)
    if not write:
        click.echo(text)
        return
    layer, name = table.split(".", 1)
    path = catalog_root(settings) / layer / f"{name}.yaml"
    if path.exists():
        raise click.ClickException(f"{path} exists: edit it, or print a draft without --write")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path}")
