"""Bridge throughput: MQTT → Kafka msgs/s ÷ the broker's own client tools (mosquitto_pub → mosquitto_sub).

    .venv/bin/python benchmarks/bridge.py [--messages 20000] [--env local]

Both runs publish the same N simulated device payloads with ``mosquitto_pub -l -q 1`` (one line = one message)
on the same Mosquitto broker, and time from the first publish to the last message handled:

* baseline: ``mosquitto_sub -q 1 -C N`` receiving them (how fast this broker delivers at QoS 1 at all);
* bridge: :class:`lakehouse.sources.mqtt.Bridge` receiving them, normalising, producing to Kafka (idempotent,
  ``acks=all``), waiting for Kafka and only then acknowledging each message to MQTT.

Prints both rates and their ratio (the bridge is bound by kafka-python's per-record produce in Python).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from lakehouse.config import load_settings
from lakehouse.simulate.devices import FleetFlaws, simulate_fleet
from lakehouse.sources.device_registry import DeviceRegistry
from lakehouse.sources.mqtt import Bridge, BridgeConfig, BridgeStats, ensure_bridge_topics
from lakehouse.stack import ServiceManager

NO_FLAWS = FleetFlaws(late=0, very_late=0, duplicate=0, malformed=0, offline=0, skewed_devices=0)


def _publish(settings, topic: str, lines: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            shutil.which("mosquitto_pub") or "mosquitto_pub",
            "-h", settings.mqtt.host, "-p", str(settings.mqtt.port),
            "-q", "1", "-t", topic, "-l",
        ],
        stdin=lines.open("rb"),
    )  # fmt: skip


def baseline(settings, lines: Path, messages: int) -> float:
    """Messages/s from mosquitto_pub to mosquitto_sub on the broker (QoS 1)."""
    topic = f"bench-{uuid.uuid4().hex[:8]}/dev-0001/telemetry"
    sub = subprocess.Popen(
        [
            shutil.which("mosquitto_sub") or "mosquitto_sub",
            "-h", settings.mqtt.host, "-p", str(settings.mqtt.port),
            "-q", "1", "-t", topic, "-C", str(messages),
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # let it subscribe; the clock starts at the first publish
    started = time.perf_counter()
    pub = _publish(settings, topic, lines)
    sub.wait(timeout=300)
    seconds = time.perf_counter() - started
    pub.wait(timeout=60)
    return messages / seconds


def bridged(settings, lines: Path, messages: int, folder: Path) -> tuple[float, BridgeStats]:
    """Messages/s through the bridge into Kafka, acknowledged back to MQTT."""
    tag = uuid.uuid4().hex[:8]
    config = BridgeConfig(
        kafka_topic=f"bench-iot-{tag}",
        dead_letter_topic=f"bench-iot-{tag}.dlq",
        client_id=f"bench-bridge-{tag}",
        session_expiry_s=60,
        registry_path=folder / "devices.json",
    )
    ensure_bridge_topics(settings, config)
    bridge = Bridge(settings, config, DeviceRegistry(folder / "devices.json"))
    bridge.connect()
    result: list[BridgeStats] = []
    runner = threading.Thread(
        target=lambda: result.append(bridge.run(max_messages=messages, idle_seconds=60))
    )
    runner.start()
    started = time.perf_counter()
    pub = _publish(settings, "devices/dev-0001/telemetry", lines)
    runner.join()
    seconds = time.perf_counter() - started
    pub.wait(timeout=60)
    return messages / seconds, result[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--env", default="local")
    args = parser.parse_args()
    settings = load_settings(args.env)
    ServiceManager(settings).start(["kafka", "mqtt"])

    simulation = simulate_fleet(1, args.messages, seed=1, flaws=NO_FLAWS)
    with tempfile.TemporaryDirectory() as folder:
        lines = Path(folder) / "payloads.txt"
        lines.write_bytes(b"\n".join(m.payload for m in simulation.messages) + b"\n")
        base = baseline(settings, lines, args.messages)
        ours, stats = bridged(settings, lines, args.messages, Path(folder))
    print(f"mosquitto_pub → mosquitto_sub (QoS 1): {base:>10,.0f} msg/s")
    print(
        f"mosquitto_pub → bridge → Kafka:        {ours:>10,.0f} msg/s  "
        f"({stats.forwarded} forwarded, {stats.dead_lettered} dead-lettered, {stats.batches} batches)"
    )
    print(f"ratio bridge / mosquitto_sub = {ours / base:.2f}")


if __name__ == "__main__":
    main()
