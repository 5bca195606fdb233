"""``lakehouse iot``: simulate a device fleet, replay the UCI occupancy sensors, run the MQTT → Kafka bridge.

Registered on the main command with ``main.add_command(iot)``; also runs alone:
``python -m lakehouse.iot.cli --env dev bridge``.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

import click

from lakehouse.config import ENV_VARIABLE, Settings, load_settings
from lakehouse.errors import LakehouseError


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj if isinstance(ctx.find_root().obj, dict) else {}
    env = (ctx.obj or {}).get("env") or obj.get("env")
    try:
        return load_settings(env)
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc


def _start(value: str) -> datetime:
    if value == "now":
        return datetime.now(UTC).replace(microsecond=0)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not ISO-8601 or 'now'") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--env", "env", default=None, help=f"Environment (default ${ENV_VARIABLE} or local).")
@click.pass_context
def iot(ctx: click.Context, env: str | None) -> None:
    """IoT devices over MQTT: simulator, UCI occupancy replay and the MQTT → Kafka bridge."""
    parent = ctx.parent.obj if ctx.parent is not None and isinstance(ctx.parent.obj, dict) else {}
    if env:
        os.environ[ENV_VARIABLE] = env
    if ctx.parent is None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("kafka").setLevel(logging.WARNING)
    ctx.obj = {**parent, "env": env or parent.get("env")}


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
@click.pass_context
def simulate(
    ctx: click.Context, devices: int, messages: int, rate: float, seed: int | None, start: str
) -> None:
    """Publish a simulated sensor fleet (with offline devices, skewed clocks, bad payloads) to MQTT."""
    from lakehouse.iot.devices import simulate_to_mqtt

    try:
        simulation, report = simulate_to_mqtt(
            _settings(ctx), devices=devices, messages=messages, rate=rate, seed=seed, start=_start(start)
        )
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc
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
@click.pass_context
def replay(ctx: click.Context, rate: float | None, speedup: float, limit: int | None) -> None:
    """Replay the real UCI occupancy sensor readings as device uci-occupancy (--speedup or --rate)."""
    from lakehouse.iot.devices import replay_to_mqtt

    try:
        report = replay_to_mqtt(_settings(ctx), speedup=speedup, rate=rate, limit=limit)
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"replayed {report.sent} occupancy readings in {report.seconds:.1f}s")


@iot.command()
@click.option(
    "--once-idle-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this long without a message (default: run until SIGINT/SIGTERM).",
)
@click.option("--client-id", default=None, help="MQTT client id (default: stable per environment).")
@click.option("--kafka-topic", default=None, help="Telemetry topic (default: from sources.yaml).")
@click.option("--dead-letter-topic", default=None, help="Dead-letter topic (default: from sources.yaml).")
@click.pass_context
def bridge(
    ctx: click.Context,
    once_idle_seconds: float | None,
    client_id: str | None,
    kafka_topic: str | None,
    dead_letter_topic: str | None,
) -> None:
    """Forward MQTT device telemetry to Kafka (normalised; bad messages to the dead-letter topic).

    The MQTT session is persistent: messages published while the bridge is down are delivered when it
    starts again with the same client id. SIGINT/SIGTERM stop it gracefully (flush, then disconnect).
    """
    from lakehouse.iot.bridge import Bridge, BridgeConfig, ensure_bridge_topics

    settings = _settings(ctx)
    options = {"client_id": client_id, "kafka_topic": kafka_topic, "dead_letter_topic": dead_letter_topic}
    try:
        overrides = {key: value for key, value in options.items() if value}
        config = BridgeConfig.from_settings(settings, **overrides)
        ensure_bridge_topics(settings, config)
        runner = Bridge(settings, config)
        runner.install_signal_handlers()
        runner.connect()
        click.echo(
            f"bridge {config.client_id}: {config.mqtt_topic} → {config.kafka_topic} "
            f"(dead letters → {config.dead_letter_topic})",
        )
        stats = runner.run(idle_seconds=once_idle_seconds)
    except LakehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.reasons.items())) or "none"
    click.echo(
        f"bridged {stats.received} messages: {stats.forwarded} forwarded, "
        f"{stats.dead_lettered} dead-lettered "
        f"({reasons}), {stats.redelivered} redelivered"
    )


if __name__ == "__main__":
    iot()
