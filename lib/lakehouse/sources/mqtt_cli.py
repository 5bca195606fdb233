"""``lakehouse iot``: simulate a device fleet, replay the UCI occupancy sensors, run the MQTT → Kafka bridge.

Registered on the main command with ``main.add_command(iot)``; the environment is the main command's
``--env`` (``lakehouse --env dev iot bridge``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from lakehouse.cli_kit import LakehouseGroup, pass_settings
from lakehouse.config import Settings


def _start(value: str) -> datetime:
    if value == "now":
        return datetime.now(UTC).replace(microsecond=0)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not ISO-8601 or 'now'") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group(cls=LakehouseGroup)
def iot() -> None:
    """IoT devices over MQTT: simulator, UCI occupancy replay and the MQTT → Kafka bridge."""


@iot.command()
@click.option("--devices", type=click.IntRange(min=1), default=20, show_default=True, help="Fleet size.")
@click.option("--messages", type=click.IntRange(min=1), default=2_000, show_default=True)
@click.option(
    "--rate", type=click.FloatRange(min=0), default=0, help="Messages per second (0 = unthrottled)."
)
@click.option("--seed", type=int, default=None, help="Random seed (default: the environment's).")
@click.option(
    "--start", default="now", show_default=True, help="Device time of the first reading (ISO-8601)."
)
@pass_settings
def simulate(
    settings: Settings, devices: int, messages: int, rate: float, seed: int | None, start: str
) -> None:
    """Publish a simulated sensor fleet (with offline devices, skewed clocks, bad payloads) to MQTT."""
    from lakehouse.simulate.devices import simulate_to_mqtt

    simulation, report = simulate_to_mqtt(
        settings, devices=devices, messages=messages, rate=rate, seed=seed, start=_start(start)
    )
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.by_kind.items()))
    click.echo(
        f"published {report.sent} messages from {devices} devices in {report.seconds:.1f}s "
        f"({report.messages_per_second:,.0f}/s): {kinds}; {len(simulation.offline)} offline gaps"
    )


@iot.command()
@click.option(
    "--rate", type=click.FloatRange(min=0), default=None, help="Messages per second (0 = unthrottled)."
)
@click.option("--speedup", type=click.FloatRange(min=0, min_open=True), default=960.0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N readings.")
@pass_settings
def replay(settings: Settings, rate: float | None, speedup: float, limit: int | None) -> None:
    """Replay the real UCI occupancy sensor readings as device uci-occupancy (--speedup or --rate)."""
    from lakehouse.simulate.devices import replay_to_mqtt

    report = replay_to_mqtt(settings, speedup=speedup, rate=rate, limit=limit)
    click.echo(f"replayed {report.sent} occupancy readings in {report.seconds:.1f}s")


@iot.command()
@click.option(
    "--once-idle-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this long without a message (default: run until SIGINT/SIGTERM).",
)
@click.option(
    "--source",
    default=None,
    help="The mqtt source of sources.yaml to bridge (default: iot_telemetry, or the only mqtt source).",
)
@click.option("--client-id", default=None, help="MQTT client id (default: stable per environment).")
@click.option("--kafka-topic", default=None, help="Telemetry topic (default: from sources.yaml).")
@click.option("--dead-letter-topic", default=None, help="Dead-letter topic (default: from sources.yaml).")
@pass_settings
def bridge(
    settings: Settings,
    once_idle_seconds: float | None,
    source: str | None,
    client_id: str | None,
    kafka_topic: str | None,
    dead_letter_topic: str | None,
) -> None:
    """Forward MQTT device messages to Kafka, normalised by the source's payload declaration in sources.yaml
    (undeclared values kept in `extra`; bad messages to the dead-letter topic with their reason).

    The MQTT session is persistent: messages published while the bridge is down are delivered when it
    starts again with the same client id. SIGINT/SIGTERM stop it gracefully (flush, then disconnect).
    """
    from lakehouse.sources.mqtt import Bridge, BridgeConfig, ensure_bridge_topics

    options = {"client_id": client_id, "kafka_topic": kafka_topic, "dead_letter_topic": dead_letter_topic}
    overrides = {key: value for key, value in options.items() if value}
    config = BridgeConfig.from_settings(settings, source, **overrides)
    ensure_bridge_topics(settings, config)
    runner = Bridge(settings, config)
    runner.install_signal_handlers()
    runner.connect()
    click.echo(
        f"bridge {config.client_id} ({config.source}): {config.mqtt_topic} → {config.kafka_topic} "
        f"(dead letters → {config.dead_letter_topic})",
    )
    stats = runner.run(idle_seconds=once_idle_seconds)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.reasons.items())) or "none"
    click.echo(
        f"bridged {stats.received} messages: {stats.forwarded} forwarded, "
        f"{stats.dead_lettered} dead-lettered "
        f"({reasons}), {stats.redelivered} redelivered"
    )
    if stats.extra_fields:
        kept = ", ".join(f"{k} {v}" for k, v in sorted(stats.extra_fields.items()))
        click.echo(f"undeclared values kept in extra (declare them in sources.yaml): {kept}")
