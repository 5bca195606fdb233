"""Simulators that feed the lakehouse: a web/mobile clickstream with the flaws real streams have."""

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
