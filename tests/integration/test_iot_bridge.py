"""Devices → Mosquitto → bridge → Kafka → bronze → silver → gold, on the real services; the bridge is killed
mid-stream. Silver is the declared silver.telemetry (the engine), the offline intervals gold.device_offline's
gaps model."""

from __future__ import annotations

import base64
import signal
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from bridge_process import bridge_process, wait_ready
from fuzz_cases import declared_in
from lakehouse.config import Settings
from lakehouse.gold import models
from lakehouse.silver import engine
from lakehouse.simulate.devices import PublishReport, Simulation, publish, simulate_fleet
from lakehouse.sources.device_registry import UNASSIGNED_SITE, DeviceRegistry
from lakehouse.sources.kafka import ingest_available
from lakehouse.sources.mqtt import Bridge, BridgeConfig, ensure_bridge_topics
from topic_records import consume

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, **overrides: Any) -> BridgeConfig:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "kafka_topic": f"iot-it-{tag}",
        "dead_letter_topic": f"iot-it-{tag}.dlq",
        "client_id": f"it-bridge-{tag}",
        "registry_path": tmp_path / "devices.json",
        "partitions": 2,
    }
    values.update(overrides)
    return BridgeConfig(**values)


def _end_total(settings: Settings, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def _publish_in_background(
    simulation: Simulation, settings: Settings, rate: float
) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(
                publish(simulation.messages, host=settings.mqtt.host, port=settings.mqtt.port, rate=rate)
            )
        except BaseException as exc:  # surfaced by the test below
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_bridge_forwards_normalised_records_and_dead_letters(mqtt: Settings, tmp_path: Path) -> None:
    config = _config(tmp_path)
    ensure_bridge_topics(mqtt, config)
    simulation = simulate_fleet(6, 600, seed=15)
    registry = DeviceRegistry(tmp_path / "devices.json")
    provisioned = {d.device_id: d.site for d in simulation.devices[:4]}  # two devices are unknown
    registry.provision((d.device_id, d.site, d.firmware) for d in simulation.devices[:4])
    bridge = Bridge(mqtt, config, registry)
    bridge.connect()
    stats_box: list[Any] = []
    runner = threading.Thread(
        target=lambda: stats_box.append(bridge.run(idle_seconds=60, max_messages=len(simulation.messages)))
    )
    runner.start()
    report = publish(simulation.messages, host=mqtt.mqtt.host, port=mqtt.mqtt.port)
    runner.join(timeout=120)
    assert not runner.is_alive()
    assert report.sent == len(simulation.messages)

    malformed = [m for m in simulation.messages if m.kind == "malformed"]
    good = [m for m in simulation.messages if m.kind != "malformed"]
    records = consume(mqtt, config.kafka_topic)
    assert len(records) == len(good)
    assert all(key == value["device_id"] for key, value in records)
    assert Counter((v["device_id"], v["seq"]) for _, v in records) == Counter(
        (m.device_id, m.seq) for m in good
    )
    legacy = {d.device_id for d in simulation.devices if d.legacy}
    assert legacy, "the fleet should have a °F device"
    for _, value in records:
        assert 5 < value["temperature_c"] < 35, value  # °F readings were converted
        assert value["device_time"].endswith("Z") and value["received_at"].endswith("Z")
        assert value["site"] == provisioned.get(value["device_id"], UNASSIGNED_SITE)
        assert value["mqtt_topic"] == f"devices/{value['device_id']}/telemetry"
    auto = {d.device_id for d in DeviceRegistry(tmp_path / "devices.json").devices() if d.auto_registered}
    assert auto == {d.device_id for d in simulation.devices[4:]}

    letters = [value for _, value in consume(mqtt, config.dead_letter_topic)]
    assert Counter(v["reason"] for v in letters) == Counter(m.case for m in malformed)
    assert Counter(base64.b64decode(v["payload_base64"]) for v in letters) == Counter(
        m.payload for m in malformed
    )
    assert stats_box[0].dead_lettered == len(malformed)


def test_killed_bridge_loses_nothing_and_silver_has_each_reading_once(
    mqtt: Settings, spark: Any, tmp_path: Path
) -> None:
    simulation = simulate_fleet(8, 1_600, seed=21)
    kinds = simulation.by_kind()
    assert simulation.offline and kinds.get("very_late") and kinds.get("late"), kinds
    config = _config(tmp_path)
    ensure_bridge_topics(mqtt, config)

    first = wait_ready(bridge_process(config))
    publisher, published = _publish_in_background(simulation, mqtt, rate=500)
    deadline = time.monotonic() + 60
    while _end_total(mqtt, config.kafka_topic) < 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # no flush, no disconnect, unacknowledged messages in flight
    first.wait(timeout=30)
    before_restart = _end_total(mqtt, config.kafka_topic)
    publisher.join(timeout=120)
    assert isinstance(published[0], PublishReport), published
    assert before_restart < len(simulation.messages) - kinds["malformed"], "kill the bridge mid-stream"

    second = bridge_process(config, "--once-idle-seconds", "4")
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err[-3000:]
    assert "bridged" in out

    good = [m for m in simulation.messages if m.kind != "malformed"]
    records = [value for _, value in consume(mqtt, config.kafka_topic)]
    assert {(v["device_id"], v["seq"]) for v in records} == {(m.device_id, m.seq) for m in good}
    assert len(records) >= len(good)  # duplicates allowed, losses not
    letters = [v for _, v in consume(mqtt, config.dead_letter_topic)]
    assert {base64.b64decode(v["payload_base64"]) for v in letters} == {
        m.payload for m in simulation.messages if m.kind == "malformed"
    }

    bronze = str(tmp_path / "bronze")
    table = declared_in(mqtt, "silver.telemetry", tmp_path, bronze)
    ingested = ingest_available(
        spark,
        mqtt,
        config.kafka_topic,
        table=bronze,
        checkpoint=str(tmp_path / "checkpoints" / "bronze"),
    )
    assert ingested.rows == len(records)
    engine.build_table(spark, mqtt, table.name, table=table)  # its declared 15-minute watermark per device
    totals = engine.check_table(spark, table)  # bronze = applied + quarantined + duplicates + dropped
    assert totals["input_rows"] == len(records)
    assert (totals["applied"], totals["late"]) == (len(simulation.accepted_keys()), kinds["very_late"])
    silver = spark.read.format("delta").load(table.path)
    keys = [(r["device_id"], r["seq"]) for r in silver.select("device_id", "seq").collect()]
    assert len(keys) == len(set(keys)), "each (device_id, seq) exactly once"
    assert set(keys) == simulation.accepted_keys()
    quarantine = spark.read.format("delta").load(table.quarantine).collect()
    assert Counter(r["reason"] for r in quarantine) == {"late_beyond_watermark": kinds["very_late"]}

    model = models.gold_model(mqtt, "gold.device_offline")  # the demo's declared model, on this silver
    offline = models.TRANSFORMS[str(model.model.python)](
        spark, {"silver.telemetry": silver}, model.model.params
    )
    offline = offline.collect()
    found = sorted((r["device_id"], r["offline_from"].replace(tzinfo=UTC)) for r in offline)
    expected = sorted((g.device_id, g.last_seen) for g in simulation.offline)
    assert [d for d, _ in found] == [d for d, _ in expected]
    for (_, seen), (_, truth) in zip(found, expected, strict=True):
        assert abs((seen - truth).total_seconds()) < 0.01
    assert all(isinstance(r["offline_from"], datetime) for r in offline)
