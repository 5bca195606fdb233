"""Click groups ``lakehouse stream …`` (continuous mode) and ``lakehouse processor …`` (stream processors).

Registered on the main command with ``main.add_command(stream)`` and ``main.add_command(processor)``; they
read the environment the main command selected (``--env``), or ``$LAKEHOUSE_ENV``.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import click

from lakehouse.cli_kit import LakehouseGroup, pass_settings
from lakehouse.config import Settings


@click.group(cls=LakehouseGroup)
def stream() -> None:
    """Continuous mode: Kafka → bronze, the silver tables it feeds and real-time gold, supervised."""


@stream.command()
@click.option("--foreground", is_flag=True, help="Run in this terminal (Ctrl-C stops) instead of detached.")
@click.option(
    "--registry",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Another sources.yaml (default: the project's).",
)
@click.option("--no-realtime", is_flag=True, help="No real-time gold rollups.")
@click.option(
    "--no-silver", is_flag=True, help="No declared silver tables (the DAG builds them from bronze instead)."
)
@click.option("--no-influx", is_flag=True, help="Real-time rollups to Delta only, not to InfluxDB.")
@click.option(
    "--trigger",
    "trigger_interval",
    default=None,
    help="Trigger interval, e.g. '5 seconds' (default: streaming.trigger_interval).",
)
@click.option(
    "--lateness", default=None, help="Watermark delay of every rollup (default each one's declared lateness)."
)
@click.option("--status-interval", type=click.FloatRange(min=0.1), default=3.0, show_default=True)
@click.option("--max-backoff", type=click.FloatRange(min=0), default=60.0, show_default=True)
@pass_settings
def start(
    settings: Settings,
    foreground: bool,
    registry: str | None,
    no_realtime: bool,
    no_silver: bool,
    no_influx: bool,
    trigger_interval: str | None,
    lateness: str | None,
    status_interval: float,
    max_backoff: float,
) -> None:
    """Start continuous mode (safe to run twice: a running supervisor is left alone)."""
    from lakehouse.stack.continuous import start as start_detached
    from lakehouse.streaming.continuous import SupervisorFiles, SupervisorOptions, plan, run_foreground

    options = SupervisorOptions(
        registry=registry,
        realtime=not no_realtime,
        silver=not no_silver,
        influx=not no_influx,
        trigger_interval=trigger_interval,
        lateness=lateness,
        status_interval=status_interval,
        max_backoff=max_backoff,
    )
    if foreground:
        click.echo("continuous mode in the foreground; Ctrl-C stops (the checkpoints keep the positions)")
        run_foreground(settings, options)
        return
    pid, started = start_detached(settings, options)
    names = ", ".join(spec.name for spec in plan(settings, options))
    files = SupervisorFiles.of(settings)
    if started:
        click.echo(f"continuous mode started (pid {pid}): {names}")
    else:
        click.echo(f"continuous mode already runs (pid {pid})")
    click.echo(f"status: lakehouse stream status   log: {files.log}")


@stream.command()
@pass_settings
def stop(settings: Settings) -> None:
    """Stop continuous mode: every query stops cleanly, the checkpoints keep their positions."""
    from lakehouse.stack.continuous import stop as stop_supervisor

    pid = stop_supervisor(settings)
    click.echo(f"continuous mode stopped (pid {pid})" if pid else "continuous mode was not running")


@stream.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw status JSON.")
@pass_settings
def status(settings: Settings, as_json: bool) -> None:
    """Each query: active, last batch, rows, rates, Kafka lag, restarts, last progress."""
    import json

    from lakehouse.streaming.continuous import format_status, read_status, running_pid

    current = read_status(settings)
    alive = running_pid(settings) is not None
    if as_json:
        click.echo(json.dumps({"running": alive, "status": current}, indent=2))
        return
    click.echo(format_status(current, alive))


@click.group(cls=LakehouseGroup)
def processor() -> None:
    """Stream processors between Kafka topics (enrich, route, dead-letter)."""


@processor.command("enrich-clickstream")
@click.option(
    "--max-idle-seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop after this long without records (default: run until Ctrl-C / SIGTERM).",
)
@click.option("--source-topic", default=None, help="Topic to read (default clickstream).")
@click.option("--enriched-topic", default=None, help="Topic to write (default clickstream.enriched).")
@click.option("--dlq-topic", default=None, help="Dead-letter topic (default clickstream.dlq).")
@click.option(
    "--group",
    "group_id",
    default=None,
    help="Consumer group (default lakehouse-enrich-clickstream).",
)
@pass_settings
def enrich_clickstream(
    settings: Settings,
    max_idle_seconds: float | None,
    source_topic: str | None,
    enriched_topic: str | None,
    dlq_topic: str | None,
    group_id: str | None,
) -> None:
    """Enrich clickstream events (region, device class) into clickstream.enriched; bad ones to the DLQ."""
    from lakehouse.streaming.processors import ClickstreamEnricher, EnricherConfig

    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "source_topic": source_topic,
            "enriched_topic": enriched_topic,
            "dlq_topic": dlq_topic,
            "group_id": group_id,
        }.items()
        if value
    }
    config = EnricherConfig.from_settings(settings, **overrides)
    enricher = ClickstreamEnricher(config)
    logging.getLogger(__name__).info("enriching %s → %s", config.source_topic, config.enriched_topic)

    def on_signal(_signum: int, _frame: Any) -> None:
        enricher.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = enricher.run(max_idle_seconds=max_idle_seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.reasons.items())) or "none"
    click.echo(
        f"consumed {report.consumed}: enriched {report.enriched}, dead-lettered {report.dead_lettered} "
        f"({reasons}) in {report.batches} committed batches"
    )
