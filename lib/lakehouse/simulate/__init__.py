"""Simulators that feed the lakehouse's sources, outside the data's path: a web/mobile clickstream with the
flaws real streams have (:mod:`.clickstream`), a device fleet and the UCI occupancy replay over MQTT
(:mod:`.devices`), the third-party FX API (:mod:`.fx_api`), the retail database with its CDNOW seed and change
generator (:mod:`.retail`) and the demo's first fill of every source (:mod:`.demo`)."""

from __future__ import annotations

from lakehouse.simulate.clickstream import (
    DEFAULT_FLAWS,
    DEFAULT_START,
    KINDS,
    MALFORMED_CASES,
    Flaws,
    Pacer,
    ProduceReport,
    SimulatedEvent,
    event_time_ms,
    generate_events,
    produce,
    simulate_to_kafka,
)

__all__ = [
    "DEFAULT_FLAWS",
    "DEFAULT_START",
    "KINDS",
    "MALFORMED_CASES",
    "Flaws",
    "Pacer",
    "ProduceReport",
    "SimulatedEvent",
    "event_time_ms",
    "generate_events",
    "produce",
    "simulate_to_kafka",
]
