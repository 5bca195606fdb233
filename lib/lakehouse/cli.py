"""The ``lakehouse`` command: services, the simulator, ingestion and the DAG, for one environment."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from lakehouse.cli_kit import LakehouseGroup, pass_settings, setup_logging
from lakehouse.config import ENV_VARIABLE, Settings

# lakehouse.simulate.clickstream.SCENARIOS by name: `--help` imports no simulator (a test keeps them equal)
SCENARIO_NAMES = ("mobile_campaign",)


@click.group(cls=LakehouseGroup)
@click.option(
    "--env",
    "env",
    default=None,
    help=f"Environment: local, test, cluster… (default ${ENV_VARIABLE} or local).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log progress.")
@click.pass_context
def main(ctx: click.Context, env: str | None, verbose: bool) -> None:
    """Lakehouse Workbench: Kafka → bronze/silver/gold Delta → dashboards and models, on one laptop."""
    setup_logging(verbose)
    ctx.ensure_object(dict)["env"] = env  # every command reads it through the CLI kit, never os.environ


@main.command()
@click.option("--force", is_flag=True, help="Fetch again even if the poms did not change.")
@pass_settings
def jars(settings: Settings, force: bool) -> None:
    """Fetch the JVM artifacts (Delta, Kafka source, Kafka broker, JDBC) with Maven into jvm/target."""
    from lakehouse.jvm import fetch_jars

    counts = fetch_jars(settings.root, force=force)
    for folder, count in counts.items():
        click.echo(f"{folder}: {count} jars")


def _print_status(settings: Settings, names: list[str] | None = None) -> None:
    from lakehouse.stack import ServiceManager

    rows = ServiceManager(settings).status(names)
    click.echo(f"environment {settings.env_name} (workspace {settings.workspace})")
    click.echo(f"{'service':<10} {'state':<10} {'pid':>7} {'port':>6} {'memory':>9}  url")
    for row in rows:
        memory = f"{row.rss_bytes / 2**20:.0f} MiB" if row.rss_bytes else "-"
        click.echo(
            f"{row.name:<10} {row.state:<10} {row.pid or '-':>7} {row.port or '-':>6} {memory:>9}  {row.url}"
            + (f"  ({row.detail})" if row.detail else "")
        )


@main.command()
@click.option(
    "--only",
    default=None,
    help="Comma-separated services: kafka,spark,postgres,mqtt,influxdb,fx_api,mlflow,dashboard.",
)
@pass_settings
def up(settings: Settings, only: str | None) -> None:
    """Start the local services (safe to run twice) and create the Kafka topics."""
    from lakehouse.jvm import fetch_jars
    from lakehouse.stack import ServiceManager, ensure_topics

    fetch_jars(settings.root)
    names = [n.strip() for n in only.split(",")] if only else None
    ServiceManager(settings).start(names)
    if settings.kafka.managed and (names is None or "kafka" in names):
        created = ensure_topics(settings)
        if created:
            click.echo(f"created topics: {', '.join(created)}")
    _print_status(settings, names)


@main.command()
@click.option("--only", default=None, help="Comma-separated services to stop.")
@pass_settings
def down(settings: Settings, only: str | None) -> None:
    """Stop the local services cleanly."""
    from lakehouse.stack import ServiceManager

    names = [n.strip() for n in only.split(",")] if only else None
    stopped = ServiceManager(settings).stop(names)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@main.command()
@click.confirmation_option(prompt="Delete this environment's lake, checkpoints, logs and service data?")
@pass_settings
def clean(settings: Settings) -> None:
    """Stop the services, then delete the environment's data: its workspace and PostgreSQL's (outside it)."""
    from lakehouse.stack import ServiceManager

    manager = ServiceManager(settings)
    manager.stop()
    for folder in manager.remove_data():
        click.echo(f"removed {folder}")


@main.command()
@click.option("--services", "services_only", is_flag=True, help="Only the services, not the tables' lag.")
@pass_settings
def status(settings: Settings, services_only: bool) -> None:
    """Show each service (port, health, memory), then each DAG task's lag behind its inputs."""
    _print_status(settings)
    if not services_only:
        click.echo("")
        _print_plan(settings)


@main.command()
@click.option("--events", "count", type=click.IntRange(min=0), default=None, help="How many events.")
@click.option(
    "--rate", type=click.FloatRange(min=0), default=None, help="Events per second (0 = unthrottled)."
)
@click.option("--seed", type=int, default=None, help="Random seed (same seed, same events).")
@click.option(
    "--run", "run", type=int, default=0, help="A new run number gives new events for the same seed."
)
@click.option(
    "--scenario",
    type=click.Choice(sorted(SCENARIO_NAMES)),
    default=None,
    help="A drift for this run's window: mobile_campaign (new social-media mobile users who rarely buy).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_settings
def simulate(
    settings: Settings,
    count: int | None,
    rate: float | None,
    seed: int | None,
    run: int,
    scenario: str | None,
    quiet: bool,
) -> None:
    """Produce simulated web and mobile clickstream events (with real-world flaws) to Kafka."""
    from lakehouse.simulate import simulate_to_kafka

    report = simulate_to_kafka(
        settings,
        count=count,
        rate=rate,
        seed=seed,
        run=run,
        scenario=scenario,
        progress=not quiet and sys.stderr.isatty(),
    )
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.by_kind.items()))
    click.echo(
        f"sent {report.sent} events in {report.seconds:.1f}s ({report.events_per_second:,.0f}/s): {kinds}"
    )


@main.command()
@click.option("--topic", default="clickstream", show_default=True)
@click.option(
    "--continuous", is_flag=True, help="Keep running with a processing-time trigger (Ctrl-C stops)."
)
@click.option("--trigger", "trigger_interval", default=None, help="Trigger interval, e.g. '5 seconds'.")
@pass_settings
def ingest(settings: Settings, topic: str, continuous: bool, trigger_interval: str | None) -> None:
    """Kafka → bronze: drain what is there (default) or keep streaming (--continuous)."""
    from lakehouse.sources.kafka import ingest_available, start_ingest
    from lakehouse.sources.registry import load_registry
    from lakehouse.spark import get_spark

    bronze = load_registry(settings).kafka_ingest().get(topic, topic.replace(".", "_"))
    table = settings.table_path("bronze", bronze)
    spark = get_spark(settings)
    if not continuous:
        report = ingest_available(spark, settings, topic, table=table)
        click.echo(f"bronze {report.table}: +{report.rows} rows (Delta version {report.table_version})")
        return
    query_interval = trigger_interval or settings.streaming.trigger_interval
    query = start_ingest(
        spark, settings, topic, table=table, continuous=True, trigger_interval=query_interval
    )
    click.echo(f"streaming {topic} → bronze every {query_interval}; Ctrl-C stops")
    try:
        while query.isActive:
            progress = query.lastProgress
            if progress is not None:
                click.echo(f"batch {progress.batchId}: {progress.numInputRows} rows")
            time.sleep(5)
    except KeyboardInterrupt:
        click.echo("stopping (the checkpoint keeps the position)…")
    finally:
        query.stop()


def _print_plan(settings: Settings) -> int:
    """Each DAG task: current, behind its inputs (and why) or waiting for one that is; how many lag."""
    from lakehouse.dag import plan

    outcomes = plan(settings)
    for outcome in outcomes:
        click.echo(outcome.line())
    lagging = sum(1 for o in outcomes if o.action != "current")
    click.echo(
        f"{lagging} of {len(outcomes)} task(s) behind their inputs: `lakehouse build` runs them"
        if lagging
        else f"all {len(outcomes)} task(s) current"
    )
    return lagging


@main.command()
@click.option("--force", is_flag=True, help="Re-run every task.")
@click.option("--plan", "dry_run", is_flag=True, help="Run nothing: which tasks lag their inputs, and why.")
@pass_settings
def build(settings: Settings, force: bool, dry_run: bool) -> None:
    """Build the DAG (pipeline.yaml): each task runs only when its code, parameters or inputs changed."""
    from lakehouse.dag import BuildFailed
    from lakehouse.dag import build as build_dag
    from lakehouse.declared_dag import sync

    if sync(settings):  # a new or changed declaration is a new or changed task of this build
        click.echo("pipeline.declared.yaml: updated from the declarations")
    if dry_run:
        _print_plan(settings)
        return
    try:
        report = build_dag(settings, force=force, progress=click.echo)
    except BuildFailed as failed:
        click.echo(failed.report.summary())
        raise
    click.echo(report.summary())


@main.group(cls=LakehouseGroup)
def runs() -> None:
    """The run archive: each task run's executed notebook, by run id or by the table version it wrote."""


def _echo_runs(records: list[Any]) -> None:
    for record in records:
        tables = ", ".join(
            f"{w.table} v{w.version}"
            if w.first_version == w.version
            else f"{w.table} v{w.first_version}-{w.version}"
            for w in record.tables
        )
        click.echo(f"{record.started_at[:19]}  {record.status:<7}  {record.task:<28} run {record.run_id}")
        click.echo(f"    notebook: {record.notebook or '(none written)'}")
        click.echo(f"    wrote:    {tables or '-'}")
        click.echo(f"    why:      {'; '.join(record.reasons) or '-'}")
        if record.error:
            click.echo(f"    error:    {record.error}")


@runs.command("find")
@click.option("--run-id", default=None, help="The OpenLineage run id (a unique prefix is enough).")
@click.option("--table", default=None, help="A table the run wrote, e.g. silver/events.")
@click.option("--version", type=click.IntRange(min=0), default=None, help="A Delta version of --table.")
@click.option("--task", default=None, help="Only runs of this task.")
@pass_settings
def runs_find(
    settings: Settings, run_id: str | None, table: str | None, version: int | None, task: str | None
) -> None:
    """Find archived runs (newest first) by run id, task, or the table version they wrote."""
    from lakehouse.errors import LakehouseError
    from lakehouse.runs import find_runs

    if not (run_id or table or task):
        raise click.UsageError("give --run-id, --table (with or without --version) or --task")
    found = find_runs(settings, run_id=run_id, table=table, version=version, task=task)
    if not found:
        raise LakehouseError("no archived run matches: `lakehouse runs list` shows the latest ones")
    _echo_runs(found)


@runs.command("list")
@click.option("--last", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs.")
@pass_settings
def runs_list(settings: Settings, last: int) -> None:
    """The latest archived runs, newest first."""
    from lakehouse.runs import read_index

    _echo_runs(list(reversed(read_index(settings)))[:last])


@main.command()
@click.option("--events", "count", type=click.IntRange(min=0), default=None, help="Events to simulate first.")
@pass_settings
def demo(settings: Settings, count: int | None) -> None:
    """The main job: services up, events produced (first run only), DAG built, where to look printed."""
    from lakehouse.dag import build as build_dag
    from lakehouse.jvm import fetch_jars
    from lakehouse.simulate.demo import produce_all
    from lakehouse.stack import ServiceManager, ensure_topics

    fetch_jars(settings.root)
    manager = ServiceManager(settings)
    manager.start(["kafka", "spark", "postgres", "mqtt", "influxdb", "redis", "fx_api", "mlflow"])
    ensure_topics(settings)
    marker = settings.workspace / "run" / "demo-produced"
    if not marker.exists():
        report = produce_all(settings, clickstream_events=count)
        marker.write_text("\n".join(report.lines()) + "\n")
        click.echo("produced: " + "; ".join(report.lines()))
    build_dag(settings, progress=click.echo)
    # the declared models' champions behind their endpoints (the DAG has just trained them)
    endpoints = [name for name, service in manager.services().items() if service.on_demand]
    manager.start(["dashboard", *endpoints])
    _print_status(settings)
    services = {s.name: s for s in manager.services().values()}
    click.echo("")
    click.echo(f"Dashboard:           {services['dashboard'].url}")
    quality = services["dashboard"].url.rsplit("/", 1)[0]
    click.echo(
        f"Quality dashboard:   {quality}/quality   (profiles: {quality}/profiles/index.html, "
        f"Data Docs: {quality}/data-docs/index.html)"
    )
    click.echo(f"Models dashboard:    {quality}/models   (drift reports: {quality}/ml-reports/)")
    for name in endpoints:
        click.echo(f"Model endpoint:      {services[name].url}   ({name.removeprefix('model-')}@champion)")
    click.echo(f"Lineage events:      {settings.reports / 'lineage'}")
    click.echo(f"MLflow UI:           {services['mlflow'].url}")
    click.echo(f"Executed notebooks:  {settings.workspace / 'notebooks'}")
    click.echo(f"Lake (Delta tables): {settings.lake}")
    click.echo("Stop everything with: make down")


def lab_command(settings: Settings, port: int, token: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The JupyterLab command line and environment for ``settings``: the project's Jupyter config
    (``jupyter/``: Ploomber's broken contents manager off, loopback, root allowed), ``notebooks/`` as the
    root, and kernels that inherit the environment, so notebooks attach to its running services."""
    config_path = os.pathsep.join(
        p for p in (str(settings.root / "jupyter"), os.environ.get("JUPYTER_CONFIG_PATH", "")) if p
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_PATH": config_path,
        ENV_VARIABLE: settings.env_name,
        "LAKEHOUSE_ROOT": str(settings.root),
    }
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--port",
        str(port),
        "--port-retries=0",
        f"--ServerApp.root_dir={settings.root / 'notebooks'}",
    ]
    if token is not None:
        command.append(f"--IdentityProvider.token={token}")
    return command, env


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8888, show_default=True)
@click.option(
    "--token", default=None, help="Access token (default: JupyterLab makes one and prints the URL)."
)
@pass_settings
def lab(settings: Settings, port: int, token: str | None) -> None:
    """JupyterLab on notebooks/, attached to this environment's services (as root too)."""
    command, env = lab_command(settings, port, token)
    os.execve(command[0], command, env)


def _register_groups() -> None:
    """Command groups that live beside the code they drive."""
    from lakehouse.declared_cli import dag, silver, table
    from lakehouse.governance.cli import catalog
    from lakehouse.privacy.cli import privacy
    from lakehouse.sources.http_cli import api
    from lakehouse.sources.mqtt_cli import iot
    from lakehouse.sources.postgres_cli import retail
    from lakehouse.sources.source_cli import source
    from lakehouse.streaming.cli import processor, stream

    for group in (stream, processor, api, retail, iot, catalog, privacy, source, silver, dag, table):
        main.add_command(group)


_register_groups()

if __name__ == "__main__":
    main()
