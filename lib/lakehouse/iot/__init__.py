"""IoT ingestion: simulated and replayed MQTT devices, the device registry and the MQTT → Kafka bridge."""

from __future__ import annotations

from lakehouse.iot.bridge import (
    DEAD_LETTER_REASONS,
    RECORD_FIELDS,
    Bridge,
    BridgeConfig,
    BridgeStats,
    InvalidMessage,
    dead_letter,
    ensure_bridge_topics,
    normalize,
)
from lakehouse.iot.devices import (
    Device,
    DeviceMessage,
    FleetFlaws,
    OfflineGap,
    PublishReport,
    Simulation,
    publish,
    read_occupancy,
    replay_messages,
    replay_to_mqtt,
    simulate_fleet,
    simulate_to_mqtt,
)
from lakehouse.iot.registry import DeviceRegistry, RegisteredDevice

__all__ = [
    "DEAD_LETTER_REASONS",
    "RECORD_FIELDS",
    "Bridge",
    "BridgeConfig",
    "BridgeStats",
    "Device",
    "DeviceMessage",
    "DeviceRegistry",
    "FleetFlaws",
    "InvalidMessage",
    "OfflineGap",
    "PublishReport",
    "RegisteredDevice",
    "Simulation",
    "dead_letter",
    "ensure_bridge_topics",
    "normalize",
    "publish",
    "read_occupancy",
    "replay_messages",
    "replay_to_mqtt",
    "simulate_fleet",
    "simulate_to_mqtt",
]
