"""``lakehouse silver`` (list and build declared tables) and ``lakehouse dag sync`` (their DAG tasks)."""

from __future__ import annotations

import uuid

import click

from lakehouse.cli_kit import LakehouseGroup, pass_settings
from lakehouse.config import Settings


@click.group(cls=LakehouseGroup)
def silver() -> None:
    """Declared silver tables (a contract with a build section), built by the one engine."""


@silver.command("list")
@pass_settings
def list_declared(settings: Settings) -> None:
    """Every declared table: apply mode, key, inputs."""
    from lakehouse.silver.engine import declared_tables, silver_table

    for name in declared_tables(settings):
        build = silver_table(settings, name).build
        inputs = ", ".join(f"{spec.table} ({spec.format})" for spec in build.inputs)
        click.echo(f"{name:32} {build.apply:7} key={','.join(build.key) or '-':24} <- {inputs}")


@silver.command("build")
@click.argument("table")
@click.option("--no-quality", is_flag=True, help="Skip the table's suite (not for production runs).")
@pass_settings
def build_one(settings: Settings, table: str, no_quality: bool) -> None:
    """Bring one declared table up to date with its inputs (what its DAG task runs)."""
    from lakehouse.silver.engine import build_table, check_table, silver_table
    from lakehouse.spark import get_spark

    declared = silver_table(settings, table)
    spark = get_spark(settings)
    report = build_table(
        spark, settings, table, run_id=str(uuid.uuid4()), quality=not no_quality, table=declared
    )
    for name, counts in report.counts.items():
        click.echo(f"{table} <- {name}: {counts}")
    click.echo(f"all time: {check_table(spark, declared)}")


@click.group(cls=LakehouseGroup)
def dag() -> None:
    """The DAG's generated part: one task per declared table."""


@dag.command()
@click.option("--check", is_flag=True, help="Fail (exit 1) when pipeline.declared.yaml is out of date.")
@pass_settings
def sync(settings: Settings, check: bool) -> None:
    """Write pipeline.declared.yaml from the declarations (lakehouse build does this first)."""
    from lakehouse.declared_dag import DECLARED
    from lakehouse.declared_dag import sync as sync_declared

    changed = sync_declared(settings, check=check)
    click.echo(f"{DECLARED}: {'written' if changed else 'up to date'}")


@click.group(cls=LakehouseGroup)
def table() -> None:
    """Onboarding: draft a source's silver table from what it landed in bronze."""


@table.command()
@click.argument("source")
@click.option("--owner", default=None, help="The owner to put in the contract (default: the source's).")
@click.option("--write", is_flag=True, help="Write the files (default: print them).")
@click.option("--force", is_flag=True, help="With --write: replace files that exist.")
@pass_settings
def scaffold(settings: Settings, source: str, owner: str | None, write: bool, force: bool) -> None:
    """Draft catalog/silver/<name>.yaml (contract + build) and its starter suite from a bronze sample."""
    from lakehouse.onboarding import scaffold_table

    draft = scaffold_table(settings, source, owner=owner)
    if not write:
        files = ((draft.contract_path, draft.contract), (draft.suite_path, draft.suite), *draft.extra)
        for path, text in files:
            click.echo(f"--- {path}\n{text}")
    else:
        for path in draft.write(overwrite=force):
            click.echo(f"wrote {path}")
    for note in draft.notes:
        click.echo(f"note: {note}")
    click.echo(f"next: review the files, then `lakehouse build` builds {draft.table}")
