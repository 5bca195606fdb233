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


@processor.command("list")
@pass_settings
def list_processors(settings: Settings) -> None:
    """The processors sources.yaml declares: topic → output topic, dead letters, rules, derived fields."""
    from lakehouse.sources.registry import load_registry
    from lakehouse.streaming.processors import declared_processors

    declared = declared_processors(load_registry(settings))
    if not declared:
        click.echo("no source declares a processor (see lakehouse.contracts.processor)")
    for name, source in declared.items():
        spec = source.processor
        assert spec is not None
        click.echo(
            f"{name}: {source.topic} → {spec.topic} (dead letters: {spec.dead_letter_topic}); "
            f"require {[r.reason for r in spec.require]}; derive {sorted(spec.derive)}"
        )


@processor.command("run")
@click.argument("source")
@click.option(
    "--max-idle-seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop after this long without records (default: run until Ctrl-C / SIGTERM).",
)
@click.option("--group", "group_id", default=None, help="Consumer group (default: the declared one).")
@pass_settings
def run_processor(
    settings: Settings, source: str, max_idle_seconds: float | None, group_id: str | None
) -> None:
    """Run the processor SOURCE declares in sources.yaml: records enriched to its topic, bad ones to DLQ."""
    from lakehouse.errors import ConfigError
    from lakehouse.sources.registry import KafkaSource, load_registry
    from lakehouse.streaming.processors import ProcessorConfig, TopicProcessor

    declared = load_registry(settings).get(source)
    if not isinstance(declared, KafkaSource):
        raise ConfigError(f"source {source!r} is not a kafka source: processors read a Kafka source's topic")
    config = ProcessorConfig.for_source(settings, declared, **({"group_id": group_id} if group_id else {}))
    runner = TopicProcessor(config)
    logging.getLogger(__name__).info("processing %s → %s", config.source_topic, config.output_topic)

    def on_signal(_signum: int, _frame: Any) -> None:
        runner.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = runner.run(max_idle_seconds=max_idle_seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.reasons.items())) or "none"
    click.echo(
        f"consumed {report.consumed}: enriched {report.enriched}, dead-lettered {report.dead_lettered} "
        f"({reasons}) in {report.batches} committed batches"
    )
