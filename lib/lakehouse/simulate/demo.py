"""The demo's first run: put data into every kind of source, so the DAG has all five to land.

Web/mobile clickstream → Kafka; the operational database seeded from the real CDNOW purchases, changed,
and its changes captured (wal2json → Kafka); IoT devices and the real UCI occupancy readings → MQTT → the
bridge → Kafka. The third-party API (the local ECB FX rates service) is pulled by the DAG itself.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.stack.java import lakehouse_command

log = logging.getLogger(__name__)


@dataclass
class SourcesReport:
    """How much each source produced."""

    produced: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"{name}: {count:,}" for name, count in self.produced.items()]


def produce_retail(settings: Settings, changes: int = 300) -> dict[str, int]:
    """Seed PostgreSQL (if empty), open the CDC slot, make changes and publish them to Kafka once."""
    from lakehouse.simulate.retail import connect, ensure_seeded, generate_changes
    from lakehouse.sources.cdc import ensure_slot, run_cdc
    from lakehouse.sources.registry import PostgresCdcSource, load_registry

    seeded = ensure_seeded(settings, settings.postgres.seed_limit or None)
    produced = {"retail orders seeded": seeded.orders if seeded else 0}
    for source in load_registry(settings).of_kind("postgres_cdc"):
        assert isinstance(source, PostgresCdcSource)
        with connect(settings, autocommit=True) as conn:
            ensure_slot(conn, source.slot)  # after the seed: its one big transaction is not replayed
        generate_changes(settings, changes, seed=settings.simulator.seed)
        report = run_cdc(settings, source, once=True)
        produced["retail changes captured"] = report.changes
    return produced


def produce_iot(settings: Settings, devices: int = 20, messages: int = 2000) -> dict[str, int]:
    """Devices and the UCI replay publish over MQTT while the bridge forwards to Kafka, then it stops."""
    from lakehouse.simulate.devices import replay_to_mqtt, simulate_to_mqtt

    command = lakehouse_command(settings.env_name, "iot", "bridge")
    bridge = subprocess.Popen(
        [*command, "--once-idle-seconds", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # the bridge subscribes first: MQTT keeps QoS 1 messages only for known sessions
        if bridge.poll() is not None:
            error = bridge.stderr.read() if bridge.stderr else ""
            raise ServiceError(f"the IoT bridge stopped at start: {error}")
        _, fleet = simulate_to_mqtt(settings, devices=devices, messages=messages)
        replay = replay_to_mqtt(settings, rate=200)  # the 509 real readings in seconds, in order
        bridge.wait(timeout=300)
    finally:
        if bridge.poll() is None:
            bridge.terminate()
            bridge.wait(timeout=30)
    return {"iot messages published": fleet.sent + replay.sent}


def produce_all(settings: Settings, clickstream_events: int | None = None) -> SourcesReport:
    """Every source of the demo, once."""
    from lakehouse.simulate import simulate_to_kafka

    report = SourcesReport()
    clicks = simulate_to_kafka(settings, count=clickstream_events, progress=sys.stderr.isatty())
    report.produced["clickstream events"] = clicks.sent
    report.produced.update(produce_retail(settings))
    report.produced.update(produce_iot(settings))
    return report
