"""IoT ingestion: simulated and replayed MQTT devices, the device registry and the MQTT → Kafka bridge
(which normalises by each mqtt source's payload declaration)."""

from __future__ import annotations

from lakehouse.simulate.devices import (
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
from lakehouse.sources.device_registry import DeviceRegistry, RegisteredDevice
from lakehouse.sources.mqtt import (
    DEAD_LETTER_REASONS,
    Bridge,
    BridgeConfig,
    BridgeStats,
    InvalidMessage,
    Normalizer,
    dead_letter,
    ensure_bridge_topics,
    mqtt_source,
    normalize,
)

__all__ = [
    "DEAD_LETTER_REASONS",
    "Bridge",
    "BridgeConfig",
    "BridgeStats",
    "Device",
    "DeviceMessage",
    "DeviceRegistry",
    "FleetFlaws",
    "InvalidMessage",
    "Normalizer",
    "OfflineGap",
    "PublishReport",
    "RegisteredDevice",
    "Simulation",
    "dead_letter",
    "ensure_bridge_topics",
    "mqtt_source",
    "normalize",
    "publish",
    "read_occupancy",
    "replay_messages",
    "replay_to_mqtt",
    "simulate_fleet",
    "simulate_to_mqtt",
]
