"""IoT: payload normalisation, dead-letter reasons, the device registry and the fleet simulator.

Silver's rules for the bridged records are the declaration's (tests/unit/test_telemetry_declaration.py), and
device offline intervals the gaps transform's (tests/unit/test_gaps.py)."""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import load_settings
from lakehouse.errors import ConfigError
from lakehouse.simulate.devices import (
    MALFORMED_CASES,
    REPLAY_DEVICE,
    read_occupancy,
    replay_messages,
    replay_schedule,
    simulate_fleet,
)
from lakehouse.sources import device_registry
from lakehouse.sources.device_registry import UNASSIGNED_SITE, DeviceRegistry
from lakehouse.sources.mqtt import InvalidMessage, Normalizer, dead_letter, normalize

pytestmark = pytest.mark.unit

TOPIC = "devices/dev-0001/telemetry"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _payload(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "device_id": "dev-0001",
        "seq": 7,
        "fw": "1.4.2",
        "ts": "2024-11-01T10:00:00.000Z",
        "unit": "C",
        "temperature": 21.5,
        "humidity": 40.1,
        "co2": 612,
        "battery": 88,
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


# --- normalisation ---------------------------------------------------------------------------------------


def test_normalize_produces_the_documented_record() -> None:
    record = normalize(TOPIC, _payload(), NOW)
    assert tuple(record) == Normalizer.from_registry(load_settings(), "iot_telemetry").record_fields
    assert record == {
        "device_id": "dev-0001",
        "seq": 7,
        "device_time": "2024-11-01T10:00:00.000Z",
        "received_at": "2026-01-01T12:00:00.000Z",
        "temperature_c": 21.5,
        "humidity_pct": 40.1,
        "co2_ppm": 612.0,
        "battery_pct": 88.0,
        "light_lux": None,
        "firmware": "1.4.2",
        "site": None,
        "mqtt_topic": TOPIC,
    }


def test_legacy_fahrenheit_and_epoch_millis_become_celsius_and_iso() -> None:
    millis = int(datetime(2024, 11, 1, 10, 0, 0, 250_000, tzinfo=UTC).timestamp() * 1000)
    record = normalize(TOPIC, _payload(unit="F", temperature=70.7, ts=millis, fw="1.2.0"), NOW)
    assert record["temperature_c"] == 21.5
    assert record["device_time"] == "2024-11-01T10:00:00.250Z"
    kelvin = normalize(TOPIC, _payload(unit="K", temperature=294.65, ts=millis // 1000), NOW)
    assert kelvin["temperature_c"] == 21.5
    assert kelvin["device_time"] == "2024-11-01T10:00:00.000Z"


def test_offset_times_are_converted_to_utc() -> None:
    record = normalize(TOPIC, _payload(ts="2024-11-01T11:00:00+01:00", light=12.5), NOW)
    assert record["device_time"] == "2024-11-01T10:00:00.000Z"
    assert record["light_lux"] == 12.5


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"device_id": "dev-0001", "seq": 1', "not_json"),
        (b"\xff\xfe not utf-8", "not_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (_payload(device_id=...), "missing_device_id"),
        (_payload(device_id="  "), "missing_device_id"),
        (_payload(device_id="dev-0002"), "device_id_mismatch"),
        (_payload(seq=...), "missing_seq"),
        (_payload(seq=-1), "invalid_seq"),
        (_payload(seq="7"), "invalid_seq"),
        (_payload(seq=True), "invalid_seq"),
        (_payload(ts="yesterday"), "invalid_timestamp"),
        (_payload(ts=...), "invalid_timestamp"),
        (_payload(ts=5), "invalid_timestamp"),
        (_payload(unit="deg"), "unknown_unit"),
        (_payload(unit=...), "unknown_unit"),
        (_payload(humidity="wet"), "invalid_value"),
        (_payload(humidity=180.0), "out_of_range"),
        (_payload(co2=-40), "out_of_range"),
        (_payload(unit="F", temperature=400.0), "out_of_range"),
    ],
)
def test_each_broken_rule_has_its_dead_letter_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        normalize(TOPIC, payload, NOW)
    assert caught.value.reason == reason


def test_dead_letter_keeps_the_raw_payload_and_reason() -> None:
    raw = b'{"device_id": "dev-0001", \xff'
    with pytest.raises(InvalidMessage) as caught:
        normalize(TOPIC, raw, NOW)
    letter = dead_letter(TOPIC, raw, NOW, caught.value)
    assert letter["reason"] == "not_json"
    assert letter["device_id"] == "dev-0001"
    assert letter["mqtt_topic"] == TOPIC
    assert base64.b64decode(letter["payload_base64"]) == raw
    assert letter["payload"].startswith('{"device_id": "dev-0001"')
    json.dumps(letter)  # serialisable as the DLQ value


# --- registry --------------------------------------------------------------------------------------------


def test_registry_enriches_known_devices_and_auto_registers_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "iot" / "devices.json"
    registry = DeviceRegistry(path)
    assert registry.provision([("dev-0001", "hq-floor-2", "1.4.2")]) == 1
    assert registry.provision([("dev-0001", "hq-floor-2", "1.4.2")]) == 0
    assert registry.lookup("dev-0001", "1.4.2").site == "hq-floor-2"
    stranger = registry.lookup("dev-9999", "2.0.1")
    assert stranger.site == UNASSIGNED_SITE
    assert stranger.auto_registered
    assert stranger.expected_firmware == "2.0.1"
    reopened = DeviceRegistry(path)
    assert {d.device_id for d in reopened.devices()} == {"dev-0001", "dev-9999"}
    assert reopened.lookup("dev-9999").auto_registered


def test_registry_sees_devices_provisioned_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    bridge_view = DeviceRegistry(path)
    bridge_view.lookup("dev-0005")  # auto-registered by the bridge
    DeviceRegistry(path).provision([("dev-0007", "lab-b", "2.0.1")])  # provisioning, elsewhere
    assert bridge_view.lookup("dev-0007").site == "lab-b"
    assert {d.device_id for d in DeviceRegistry(path).devices()} == {"dev-0005", "dev-0007"}


def test_a_flood_of_new_device_ids_is_registered_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fuzz corpus made up 3,744 device ids: registered one write each (the file rewritten whole), the
    # bridge slowed to ~15 messages/s. A batch's new devices now cost one write.
    registry = DeviceRegistry(tmp_path / "devices.json")
    registry.provision([("dev-0001", "hq", "1.4.0")])
    writes = []
    real = device_registry.write_json
    monkeypatch.setattr(device_registry, "write_json", lambda *a, **k: writes.append(a[0]) or real(*a, **k))
    batch = [(f"dev-fz{i}", "1.4.0") for i in range(500)] + [("dev-0001", "1.4.0"), ("dev-fz7", "1.4.0")]
    entries = registry.lookup_many(batch)
    assert len(writes) == 1
    assert len(entries) == 501 and entries["dev-0001"].site == "hq"
    assert {e.site for d, e in entries.items() if d != "dev-0001"} == {UNASSIGNED_SITE}
    assert len(DeviceRegistry(tmp_path / "devices.json")) == 501  # on disk, for the next process
    registry.lookup_many(batch)
    assert len(writes) == 1  # known now: nothing to write


def test_a_corrupt_registry_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="fix or delete it"):
        DeviceRegistry(path)


# --- simulator and replay -------------------------------------------------------------------------------


def test_simulation_is_deterministic_and_exact_in_size() -> None:
    first = simulate_fleet(10, 1_500, seed=3)
    again = simulate_fleet(10, 1_500, seed=3)
    assert len(first.messages) == 1_500
    assert [m.payload for m in first.messages] == [m.payload for m in again.messages]
    assert set(first.by_kind()) == {"valid", "late", "very_late", "duplicate", "malformed"}
    assert first.offline, "some device should have gone offline"
    assert simulate_fleet(10, 1_500, seed=4).messages != first.messages


def test_simulated_malformed_messages_get_the_reason_they_were_made_for() -> None:
    simulation = simulate_fleet(20, 4_000, seed=5)
    cases = set()
    for message in simulation.messages:
        if message.kind == "malformed":
            with pytest.raises(InvalidMessage) as caught:
                normalize(message.topic, message.payload, NOW)
            assert caught.value.reason == message.case
            cases.add(message.case)
        else:
            normalize(message.topic, message.payload, NOW)
    assert cases == set(MALFORMED_CASES)


def test_simulated_lateness_and_units_follow_the_documented_guarantees() -> None:
    simulation = simulate_fleet(10, 3_000, seed=9)
    legacy = {d.device_id for d in simulation.devices if d.legacy}
    newest: dict[str, datetime] = {}
    seen_units = set()
    for message in simulation.messages:
        if message.kind == "malformed":
            continue
        payload = json.loads(message.payload)
        seen_units.add(payload["unit"])
        assert payload["unit"] == ("F" if message.device_id in legacy else "C")
        device_time = datetime.fromisoformat(normalize(message.topic, message.payload, NOW)["device_time"])
        lag = (newest.get(message.device_id, device_time) - device_time).total_seconds()
        if message.kind == "valid":
            assert lag <= 0
        elif message.kind == "late":
            assert 0 < lag <= 600
        elif message.kind == "very_late":
            assert lag >= 1_500
        if message.kind in {"valid", "late"}:
            newest[message.device_id] = max(newest.get(message.device_id, device_time), device_time)
    assert seen_units == {"C", "F"}


def test_seq_grows_by_one_per_reading_of_a_device() -> None:
    simulation = simulate_fleet(5, 800, seed=2, flaws=None)
    seqs: dict[str, list[int]] = defaultdict(list)
    for message in simulation.messages:
        if message.seq is not None and message.kind != "duplicate":
            seqs[message.device_id].append(message.seq)
    for values in seqs.values():
        ordered = sorted(values)
        assert ordered == list(range(ordered[0], ordered[0] + len(ordered)))


def test_occupancy_replay_reads_the_real_uci_readings() -> None:
    readings = read_occupancy()
    assert len(readings) == 509
    assert readings[0].time == datetime(2015, 2, 4, 17, 51, tzinfo=UTC)
    assert readings[0].temperature_c == 23.18 and readings[0].co2_ppm == 721.25
    messages = replay_messages(readings[:3])
    record = normalize(messages[0].topic, messages[0].payload, NOW)
    assert record["device_id"] == REPLAY_DEVICE
    assert record["light_lux"] == 426.0 and record["humidity_pct"] == 27.272
    assert replay_schedule(readings[:3], speedup=960) == [0.0, 1.0, 2.0]
    with pytest.raises(ConfigError):
        replay_schedule(readings, speedup=0)
