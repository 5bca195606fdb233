"""IoT devices over MQTT: a seeded fleet simulator and a replay of the real UCI occupancy sensor readings.

The simulator builds a fleet of environmental sensors (temperature, humidity, CO2, battery, light) spread
over sites, each with a firmware version that decides its payload dialect:

* legacy firmware (``1.2.x``, ``1.3.x``) reports the temperature in °F and its clock as epoch milliseconds;
* ``1.4.x`` and later report °C and an ISO-8601 time; ``2.x`` also reports light.

Every device sends one reading per ``interval_s`` of *device time* with a per-device ``seq`` that grows by
one per reading, and the fleet has the flaws real fleets have. Each message carries its ground truth
(:attr:`DeviceMessage.kind`); the guarantees below hold per device, in the order the messages are emitted:

* ``valid``: its device time is not older than the newest device time its device emitted before it;
* ``late``: older than that newest device time by at most 10 minutes (held back in the device's buffer);
* ``very_late``: at least 25 minutes older than it (so a 15-minute watermark quarantines it);
* ``duplicate``: the exact bytes of an earlier ``valid`` message of the same device, re-sent;
* ``malformed``: rejected by the bridge; :attr:`DeviceMessage.case` is the dead-letter reason it gets.

Devices also drop offline for 10-30 intervals (no readings; :attr:`Simulation.offline` lists the gaps, in
device time) and some have a skewed clock (a constant offset, so their readings stay in order). A reading
that is dropped (malformed or very late) is never next to another dropped reading or to an offline gap, so
the only gaps longer than two intervals are the offline ones.

Example:
    >>> sim = simulate_fleet(devices=5, messages=500, seed=3)
    >>> len(sim.messages)
    500
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError, ServiceError
from lakehouse.simulate.clickstream import Pacer

log = logging.getLogger(__name__)

KINDS: Final = ("valid", "late", "very_late", "duplicate", "malformed")
MALFORMED_CASES: Final = (
    "not_json",
    "not_an_object",
    "missing_device_id",
    "missing_seq",
    "invalid_timestamp",
    "unknown_unit",
    "out_of_range",
)
FIRMWARE: Final = {"1.2.0": 0.12, "1.3.1": 0.13, "1.4.2": 0.45, "2.0.1": 0.30}
LEGACY_FIRMWARE: Final = frozenset({"1.2.0", "1.3.1"})
SITES: Final = ("hq-floor-1", "hq-floor-2", "hq-floor-3", "warehouse-a", "lab-b")
DEFAULT_START: Final = datetime(2024, 11, 1, tzinfo=UTC)
TOPIC_TEMPLATE: Final = "devices/{device_id}/telemetry"
REPLAY_DEVICE: Final = "uci-occupancy"
REPLAY_FIRMWARE: Final = "uci-replay-1.0"
REPLAY_SITE: Final = "uci-office"

# Lateness geometry, in device-time seconds, relative to the newest reading the device emitted before.
_LATE_MAX_S: Final = 10 * 60
_VERY_LATE_MIN_S: Final = 25 * 60
_OFFLINE_INTERVALS: Final = (10, 30)
_SITE_BASE_C: Final = {"hq-floor-1": 21.0, "hq-floor-2": 21.8, "hq-floor-3": 22.4, "warehouse-a": 16.5}


@dataclass(frozen=True)
class FleetFlaws:
    """How often each flaw happens (shares of all readings; ``offline`` is per reading slot)."""

    late: float = 0.02
    very_late: float = 0.01
    duplicate: float = 0.02
    malformed: float = 0.02
    offline: float = 0.004
    skewed_devices: float = 0.2

    def __post_init__(self) -> None:
        for name in ("late", "very_late", "duplicate", "malformed", "offline", "skewed_devices"):
            value = getattr(self, name)
            if not 0 <= value <= 0.2 and not (name == "skewed_devices" and 0 <= value <= 1):
                raise ConfigError(f"flaw share {name}={value} must be between 0 and 0.2")


@dataclass(frozen=True, slots=True)
class Device:
    """One simulated sensor."""

    device_id: str
    site: str
    firmware: str
    clock_skew_s: float

    @property
    def topic(self) -> str:
        return TOPIC_TEMPLATE.format(device_id=self.device_id)

    @property
    def legacy(self) -> bool:
        """Legacy firmware reports °F and epoch-millisecond clocks."""
        return self.firmware in LEGACY_FIRMWARE


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """One MQTT publish: topic and payload bytes, plus the ground truth of what it is."""

    topic: str
    payload: bytes
    device_id: str
    seq: int | None
    kind: str
    case: str | None = None


@dataclass(frozen=True, slots=True)
class OfflineGap:
    """A device was offline between two readings (device times, skew included)."""

    device_id: str
    last_seen: datetime
    back_at: datetime


@dataclass(frozen=True)
class Simulation:
    """A simulated fleet and its messages in emission order."""

    devices: list[Device]
    messages: list[DeviceMessage]
    offline: list[OfflineGap]
    interval_s: float

    def by_kind(self) -> dict[str, int]:
        counts = Counter(message.kind for message in self.messages)
        return {kind: counts[kind] for kind in KINDS if counts[kind]}

    def accepted_keys(self) -> set[tuple[str, int]]:
        """(device_id, seq) of every reading silver keeps: valid and late ones."""
        return {
            (m.device_id, m.seq) for m in self.messages if m.kind in {"valid", "late"} and m.seq is not None
        }


@dataclass
class _Slot:
    device: Device
    seq: int
    sampled: datetime  # true time
    emitted: datetime  # true time the device publishes it
    reading: dict[str, float | None]
    kind: str = "valid"
    case: str | None = None
    payload: bytes = b""
    after_gap: bool = False
    held: str | None = None  # "late" or "very_late": the reading was held back on purpose


def iso_millis(moment: datetime) -> str:
    """``2024-11-01T10:00:00.000Z``: UTC, millisecond precision, ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _pick_weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def build_fleet(devices: int, seed: int, flaws: FleetFlaws | None = None) -> list[Device]:
    """``devices`` sensors ``dev-0001``… with a site, firmware and (for some) a skewed clock."""
    if devices < 1:
        raise ConfigError(f"a fleet needs at least one device (got {devices})")
    flaws = flaws or FleetFlaws()
    rng = random.Random(f"fleet-{seed}")
    fleet = []
    for number in range(1, devices + 1):
        skew = 0.0
        if rng.random() < flaws.skewed_devices:
            skew = rng.choice((-1, 1)) * rng.uniform(30, 600)
        fleet.append(
            Device(
                device_id=f"dev-{number:04d}",
                site=rng.choice(SITES),
                firmware=_pick_weighted(rng, FIRMWARE),
                clock_skew_s=round(skew, 3),
            )
        )
    return fleet


def _reading(device: Device, moment: datetime, battery: float, rng: random.Random) -> dict[str, float | None]:
    hour = moment.hour + moment.minute / 60
    daily = math.sin(2 * math.pi * (hour - 9) / 24)
    working = 9 <= hour < 18 and moment.weekday() < 5
    temperature_c = _SITE_BASE_C.get(device.site, 20.0) + 1.8 * daily + rng.gauss(0, 0.25)
    return {
        "temperature_c": round(temperature_c, 2),
        "humidity_pct": round(min(95.0, max(5.0, 42 - 8 * daily + rng.gauss(0, 1.5))), 1),
        "co2_ppm": round(max(380.0, 430 + (420 if working else 0) * (0.6 + 0.4 * daily) + rng.gauss(0, 25))),
        "battery_pct": round(battery, 1),
        "light_lux": round(max(0.0, (420 if working else 6) + rng.gauss(0, 15)), 1)
        if device.firmware.startswith("2.")
        else None,
    }


def device_payload(
    device: Device, seq: int, device_time: datetime, reading: dict[str, Any]
) -> dict[str, Any]:
    """The JSON object a device of this firmware publishes for one reading."""
    temperature = reading.get("temperature_c")
    payload: dict[str, Any] = {"device_id": device.device_id, "seq": seq, "fw": device.firmware}
    if device.legacy:
        payload["ts"] = int(device_time.timestamp() * 1000)
        payload["unit"] = "F"
        payload["temperature"] = None if temperature is None else round(temperature * 9 / 5 + 32, 2)
    else:
        payload["ts"] = iso_millis(device_time)
        payload["unit"] = "C"
        payload["temperature"] = temperature
    payload["humidity"] = reading.get("humidity_pct")
    payload["co2"] = reading.get("co2_ppm")
    payload["battery"] = reading.get("battery_pct")
    if reading.get("light_lux") is not None:
        payload["light"] = reading["light_lux"]
    return payload


def _encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _malformed(slot: _Slot, case: str, rng: random.Random) -> bytes:
    device_time = slot.sampled + timedelta(seconds=slot.device.clock_skew_s)
    payload = device_payload(slot.device, slot.seq, device_time, slot.reading)
    if case == "missing_device_id":
        del payload["device_id"]
    elif case == "missing_seq":
        del payload["seq"]
    elif case == "invalid_timestamp":
        payload["ts"] = rng.choice(("yesterday", "2024-13-45T99:00:00Z", ""))
    elif case == "unknown_unit":
        payload["unit"] = rng.choice(("deg", "celsius?", "R"))
    elif case == "out_of_range":
        field_name, value = rng.choice((("humidity", 180.0), ("co2", -40.0), ("battery", 250.0)))
        payload[field_name] = value
    else:  # pragma: no cover - the caller only passes the cases above
        raise ValueError(case)
    return _encode(payload)


def _junk(device: Device, rng: random.Random) -> tuple[str, bytes]:
    if rng.random() < 0.6:
        text = _encode({"device_id": device.device_id, "seq": 1, "temperature": 21.0})
        return "not_json", text[: rng.randint(5, len(text) - 2)]
    return "not_an_object", _encode([device.device_id, 21.0, 40.0])


def simulate_fleet(
    devices: int = 20,
    messages: int = 2_000,
    *,
    seed: int = 7,
    start: datetime = DEFAULT_START,
    interval_s: float = 60.0,
    flaws: FleetFlaws | None = None,
) -> Simulation:
    """Simulate ``messages`` MQTT messages from a fleet of ``devices`` sensors (same seed, same bytes).

    Args:
        devices: fleet size (``dev-0001``…).
        messages: exactly how many messages to emit, flaws included.
        seed: the random seed.
        start: the true time of the first reading.
        interval_s: seconds of device time between two readings of one device.
        flaws: how often each flaw happens.

    Returns:
        The fleet, its messages in emission order and the offline gaps it had.
    """
    if messages < devices:
        raise ConfigError(f"messages ({messages}) must be at least the number of devices ({devices})")
    if interval_s <= 0:
        raise ConfigError(f"interval_s must be positive (got {interval_s})")
    flaws = flaws or FleetFlaws()
    fleet = build_fleet(devices, seed, flaws)
    rng = random.Random(f"readings-{seed}")
    duplicates = round(messages * flaws.duplicate)
    junk = round(messages * flaws.malformed * 0.3)
    readings = messages - duplicates - junk
    per_device = [readings // devices + (1 if i < readings % devices else 0) for i in range(devices)]
    interval = timedelta(seconds=interval_s)

    timelines: list[list[_Slot]] = []
    offline: list[OfflineGap] = []
    for device, count in zip(fleet, per_device, strict=True):
        moment = start + rng.uniform(0, 1) * interval
        seq = rng.randint(0, 5_000)
        battery = rng.uniform(35, 100)
        drain = rng.uniform(0.005, 0.04)
        slots: list[_Slot] = []
        for index in range(count):
            after_gap = False
            if 3 <= index < count - 3 and rng.random() < flaws.offline:
                last = slots[-1].sampled
                moment = last + interval * rng.randint(*_OFFLINE_INTERVALS)
                skew = timedelta(seconds=device.clock_skew_s)
                offline.append(OfflineGap(device.device_id, last + skew, moment + skew))
                after_gap = True
            reading = _reading(device, moment, battery, rng)
            slots.append(_Slot(device, seq, moment, moment, reading, after_gap=after_gap))
            seq += 1
            battery = max(1.0, battery - drain)
            moment += interval * rng.uniform(0.97, 1.03)
        timelines.append(slots)

    malformed_slot_cases = [c for c in MALFORMED_CASES if c not in {"not_json", "not_an_object"}]
    for slots in timelines:
        for index, slot in enumerate(slots):
            droppable = (
                0 < index < len(slots) - 1
                and slots[index - 1].kind == "valid"
                and slots[index - 1].held != "very_late"
                and not slot.after_gap
                and not slots[index + 1].after_gap
            )
            draw = rng.random()
            if droppable and draw < flaws.malformed * 0.7:
                slot.kind, slot.case = "malformed", rng.choice(malformed_slot_cases)
                slot.payload = _malformed(slot, slot.case, rng)
            elif droppable and draw < flaws.malformed * 0.7 + flaws.very_late:
                slot.held = "very_late"
                slot.emitted = slot.sampled + timedelta(seconds=rng.uniform(35 * 60, 90 * 60))
            elif draw < flaws.malformed * 0.7 + flaws.very_late + flaws.late:
                slot.held = "late"
                slot.emitted = slot.sampled + interval * rng.uniform(2.5, 6)
            if not slot.payload:
                device_time = slot.sampled + timedelta(seconds=slot.device.clock_skew_s)
                slot.payload = _encode(device_payload(slot.device, slot.seq, device_time, slot.reading))

    emitted = _settle_lateness([slot for slots in timelines for slot in slots])

    ordered: list[tuple[datetime, str, int, DeviceMessage]] = [
        (
            slot.emitted,
            slot.device.device_id,
            0,
            DeviceMessage(
                slot.device.topic, slot.payload, slot.device.device_id, slot.seq, slot.kind, slot.case
            ),
        )
        for slot in emitted
    ]
    valid = [item for item in ordered if item[3].kind == "valid"]
    for _ in range(duplicates):
        when, device_id, _, original = rng.choice(valid)
        resent = DeviceMessage(original.topic, original.payload, device_id, original.seq, "duplicate")
        ordered.append((when + interval * rng.uniform(0.2, 3), device_id, 1, resent))
    for _ in range(junk):
        device = rng.choice(fleet)
        case, payload = _junk(device, rng)
        when = start + (ordered[-1][0] - start) * rng.random()
        ordered.append(
            (
                when,
                device.device_id,
                2,
                DeviceMessage(device.topic, payload, device.device_id, None, "malformed", case),
            )
        )
    ordered.sort(key=lambda item: (item[0], item[1], item[2]))
    return Simulation(fleet, [item[3] for item in ordered], offline, interval_s)


def _settle_lateness(slots: list[_Slot]) -> list[_Slot]:
    """Sort slots by emission and relabel held-back readings by their real lag; returns emission order.

    The lag of a held-back reading is measured against the newest reading its device emitted before it. A
    reading that is not behind anything (its device went quiet) is ``valid``; one inside the late band is
    ``late``; a ``very_late`` one beyond the very-late band stays; anything in between is re-emitted on time
    (which can change other lags, hence the loop).
    """
    for _ in range(100):
        slots.sort(key=lambda slot: (slot.emitted, slot.device.device_id, slot.seq))
        newest: dict[str, datetime] = {}
        changed = False
        for slot in slots:
            device_id = slot.device.device_id
            if slot.held and slot.emitted != slot.sampled:
                before = newest.get(device_id)
                lag = (before - slot.sampled).total_seconds() if before else 0.0
                if lag <= 0:
                    slot.kind = "valid"
                elif lag <= _LATE_MAX_S:
                    slot.kind = "late"
                elif slot.held == "very_late" and lag >= _VERY_LATE_MIN_S:
                    slot.kind = "very_late"
                else:
                    slot.kind, slot.emitted, changed = "valid", slot.sampled, True
            if slot.kind in {"valid", "late"}:
                newest[device_id] = max(newest.get(device_id, slot.sampled), slot.sampled)
        if not changed:
            return slots
    raise DataError("the simulator could not settle late readings: use another seed")  # pragma: no cover


# --- the real UCI occupancy readings ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OccupancyReading:
    """One row of the UCI occupancy file (Candanedo & Feldheim 2016), sampled every 16 minutes."""

    time: datetime
    temperature_c: float
    humidity_pct: float
    light_lux: float
    co2_ppm: float


def occupancy_csv() -> Path:
    """The path of river's copy of the UCI occupancy readings (found by path; river is not imported).

    Raises:
        ConfigError: the ``river`` package is not installed.
    """
    spec = importlib.util.find_spec("river")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "drift" / "datasets" / "occupancy.csv"
        if path.is_file():
            return path
    raise ConfigError(
        "the UCI occupancy readings ship in the `river` package: install it with "
        "`.venv/bin/pip install --no-deps river` (it is read by path, never imported)"
    )


def read_occupancy(path: Path | None = None) -> list[OccupancyReading]:
    """Read the occupancy file: ``time,V1..V4`` = Temperature (°C), Humidity (%), Light (lux), CO2 (ppm).

    The file's times carry no zone; they are taken as UTC.

    Raises:
        DataError: a row does not have a time and four numbers.
    """
    path = path or occupancy_csv()
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                rows.append(
                    OccupancyReading(
                        time=datetime.strptime(row["time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC),
                        temperature_c=float(row["V1"]),
                        humidity_pct=float(row["V2"]),
                        light_lux=float(row["V3"]),
                        co2_ppm=float(row["V4"]),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path}:{number} is not an occupancy reading ({exc}): {row}") from exc
    return rows


def replay_messages(
    readings: Sequence[OccupancyReading], device_id: str = REPLAY_DEVICE
) -> list[DeviceMessage]:
    """The occupancy readings as MQTT messages of one °C device (``seq`` = row number)."""
    topic = TOPIC_TEMPLATE.format(device_id=device_id)
    messages = []
    for seq, reading in enumerate(readings):
        payload = {
            "device_id": device_id,
            "seq": seq,
            "fw": REPLAY_FIRMWARE,
            "ts": iso_millis(reading.time),
            "unit": "C",
            "temperature": reading.temperature_c,
            "humidity": reading.humidity_pct,
            "co2": reading.co2_ppm,
            "light": reading.light_lux,
        }
        messages.append(DeviceMessage(topic, _encode(payload), device_id, seq, "valid"))
    return messages


def replay_schedule(readings: Sequence[OccupancyReading], speedup: float) -> list[float]:
    """Seconds after the start at which each reading is published, ``speedup`` times faster than real."""
    if speedup <= 0:
        raise ConfigError(f"speedup must be positive (got {speedup})")
    if not readings:
        return []
    first = readings[0].time
    return [(reading.time - first).total_seconds() / speedup for reading in readings]


# --- publishing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishReport:
    """What :func:`publish` sent (every message acknowledged by the broker at QoS 1)."""

    sent: int
    by_kind: dict[str, int]
    seconds: float

    @property
    def messages_per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Connection:
    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    refused: list[str] = field(default_factory=list)


def _open(host: str, port: int, client_id: str, timeout: float) -> _Connection:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.max_inflight_messages_set(200)
    client.reconnect_delay_set(min_delay=1, max_delay=2)  # a restarted broker: devices are back at once
    connection = _Connection(client)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            connection.refused.append(str(reason))
        connection.connected.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise ServiceError(
            f"no MQTT broker answers at {host}:{port} ({exc}): start it with `lakehouse up` "
            "or fix mqtt.host/port in the environment file"
        ) from exc
    client.loop_start()
    if not connection.connected.wait(timeout) or connection.refused:
        client.loop_stop()
        raise ServiceError(
            f"the MQTT broker at {host}:{port} did not accept {client_id}: {connection.refused}"
        )
    return connection


def publish(
    messages: Iterable[DeviceMessage],
    *,
    host: str,
    port: int,
    rate: float = 0,
    schedule: Sequence[float] | None = None,
    connections: int = 8,
    qos: int = 1,
    client_prefix: str = "lakehouse-device",
    timeout: float = 60.0,
) -> PublishReport:
    """Publish device messages to MQTT and wait until the broker acknowledged every one (QoS 1).

    Devices share ``connections`` MQTT connections; a device always uses the same one, so the broker keeps
    each device's messages in order.

    Args:
        messages: what to publish, in order.
        host: the broker host.
        port: the broker port.
        rate: messages per second (0 = as fast as the broker takes them); ignored with ``schedule``.
        schedule: seconds after the start at which each message is due (e.g. :func:`replay_schedule`).
        connections: how many MQTT connections carry the fleet.
        qos: the MQTT quality of service.
        client_prefix: client ids are ``<prefix>-<n>``.
        timeout: seconds to wait for the broker's acknowledgements at the end.

    Raises:
        ServiceError: the broker is down or did not acknowledge everything in time.
    """
    if connections < 1:
        raise ConfigError(f"connections must be at least 1 (got {connections})")
    pacer = Pacer(rate)
    pool: dict[int, _Connection] = {}
    pending: list[mqtt.MQTTMessageInfo] = []
    by_kind: Counter[str] = Counter()
    began = time.monotonic()
    try:
        for index, message in enumerate(messages):
            if schedule is not None:
                delay = began + schedule[index] - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            else:
                pacer.wait()
            slot = sum(message.device_id.encode()) % connections
            if slot not in pool:
                pool[slot] = _open(host, port, f"{client_prefix}-{slot}", timeout=10)
            info = pool[slot].client.publish(message.topic, message.payload, qos=qos)
            if info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0:
                # The broker is away (restarting): paho keeps a QoS 1/2 message it could not send and sends it
                # once reconnected, completing this info on the broker's acknowledgement as for any other. Its
                # NO_CONN code would only make wait_for_publish raise at once.
                info.rc = mqtt.MQTT_ERR_SUCCESS
            pending.append(info)
            by_kind[message.kind] += 1
        deadline = time.monotonic() + timeout
        for info in pending:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise ServiceError(
                    f"the MQTT broker at {host}:{port} did not acknowledge all messages within {timeout} s: "
                    "check `lakehouse status` and publish again (duplicates are removed in silver)"
                )
    finally:
        for connection in pool.values():
            connection.client.disconnect()
            connection.client.loop_stop()
    seconds = time.monotonic() - began
    report = PublishReport(sum(by_kind.values()), dict(by_kind), seconds)
    log.info("published %d messages in %.1f s (%s)", report.sent, seconds, report.by_kind)
    return report


def simulate_to_mqtt(
    settings: Settings,
    *,
    devices: int = 20,
    messages: int = 2_000,
    rate: float = 0,
    seed: int | None = None,
    start: datetime = DEFAULT_START,
    registry_path: Path | None = None,
) -> tuple[Simulation, PublishReport]:
    """Provision a simulated fleet in the device registry and publish its messages to MQTT.

    Returns:
        The simulation (ground truth) and what was published.
    """
    from lakehouse.sources.device_registry import DeviceRegistry

    simulation = simulate_fleet(
        devices, messages, seed=settings.simulator.seed if seed is None else seed, start=start
    )
    registry = DeviceRegistry.open(settings, registry_path)
    registry.provision((d.device_id, d.site, d.firmware) for d in simulation.devices)
    report = publish(simulation.messages, host=settings.mqtt.host, port=settings.mqtt.port, rate=rate)
    return simulation, report


def replay_to_mqtt(
    settings: Settings,
    *,
    speedup: float = 960.0,
    rate: float | None = None,
    limit: int | None = None,
    registry_path: Path | None = None,
) -> PublishReport:
    """Replay the UCI occupancy readings as device ``uci-occupancy``.

    Args:
        settings: the environment (broker, registry location).
        speedup: how many times faster than real time (960: the 16-minute sampling becomes 1 s).
        rate: a fixed number of messages per second instead (0 = as fast as possible).
        limit: replay only the first ``limit`` readings.
    """
    from lakehouse.sources.device_registry import DeviceRegistry

    readings = read_occupancy()[:limit]
    DeviceRegistry.open(settings, registry_path).provision([(REPLAY_DEVICE, REPLAY_SITE, REPLAY_FIRMWARE)])
    schedule = None if rate is not None else replay_schedule(readings, speedup)
    return publish(
        replay_messages(readings),
        host=settings.mqtt.host,
        port=settings.mqtt.port,
        rate=rate or 0,
        schedule=schedule,
        connections=1,
        client_prefix=REPLAY_DEVICE,
    )


def iter_payloads(messages: Iterable[DeviceMessage]) -> Iterator[dict[str, Any]]:
    """The JSON objects among the messages' payloads (skips payloads that are not a JSON object)."""
    for message in messages:
        try:
            value = json.loads(message.payload)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value
