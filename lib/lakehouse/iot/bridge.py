"""The MQTT → Kafka bridge: at-least-once delivery of device telemetry, normalised, keyed by device.

How nothing is lost:

* the bridge's MQTT session is persistent (MQTT 5, a stable client id, ``clean_start=False`` and a session
  expiry), so the broker queues QoS 1 messages while the bridge is down and delivers them when it is back;
* messages are acknowledged to the broker by hand (paho's ``manual_ack``) and only after Kafka acknowledged
  the produce (idempotent producer, ``acks=all``): a bridge killed anywhere gets the unacknowledged
  messages again. Re-deliveries can duplicate records in Kafka; silver removes them by ``(device_id, seq)``.

Each message is normalised (:func:`normalize`) to the telemetry record, keyed by ``device_id``::

    {"device_id": "dev-0001", "seq": 123, "device_time": "2024-11-01T10:00:00.000Z",
     "received_at": "...Z", "temperature_c": 21.5, "humidity_pct": 40.1, "co2_ppm": 612.0,
     "battery_pct": 88.0, "light_lux": null, "firmware": "1.4.2", "site": "hq-floor-2",
     "mqtt_topic": "devices/dev-0001/telemetry"}

or, when it cannot be (not JSON, no device id or seq, bad time, unknown unit, value out of range), goes to the
dead-letter topic with its reason and the raw payload.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

import paho.mqtt.client as mqtt
from kafka.errors import KafkaError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lakehouse import kafka_clients
from lakehouse.config import Settings, TopicSettings
from lakehouse.errors import ConfigError, ServiceError
from lakehouse.iot.devices import iso_millis
from lakehouse.iot.registry import DeviceRegistry

log = logging.getLogger(__name__)

SOURCE_NAME: Final = "iot_telemetry"
DEAD_LETTER_REASONS: Final = (
    "not_json",
    "not_an_object",
    "missing_device_id",
    "device_id_mismatch",
    "missing_seq",
    "invalid_seq",
    "invalid_timestamp",
    "unknown_unit",
    "invalid_value",
    "out_of_range",
)
RECORD_FIELDS: Final = (
    "device_id",
    "seq",
    "device_time",
    "received_at",
    "temperature_c",
    "humidity_pct",
    "co2_ppm",
    "battery_pct",
    "light_lux",
    "firmware",
    "site",
    "mqtt_topic",
)
# Plausible physical ranges of the sensors (datasheet limits of typical indoor environment sensors).
RANGES: Final = {
    "temperature_c": (-40.0, 85.0),
    "humidity_pct": (0.0, 100.0),
    "co2_ppm": (0.0, 10_000.0),
    "battery_pct": (0.0, 100.0),
    "light_lux": (0.0, 200_000.0),
}
# Device payload field → record field (both spellings accepted: devices use the short names).
_FIELDS: Final = {
    "temperature": "temperature_c",
    "humidity": "humidity_pct",
    "co2": "co2_ppm",
    "battery": "battery_pct",
    "light": "light_lux",
}
_UNITS: Final[dict[str, Callable[[float], float]]] = {
    "c": lambda v: v,
    "°c": lambda v: v,
    "f": lambda v: (v - 32.0) * 5.0 / 9.0,
    "°f": lambda v: (v - 32.0) * 5.0 / 9.0,
    "k": lambda v: v - 273.15,
}
_MIN_MS, _MAX_MS = 946_684_800_000, 4_102_444_800_000  # 2000-01-01 .. 2100-01-01


class InvalidMessage(ValueError):
    """A message the bridge cannot normalise; ``reason`` is one of :data:`DEAD_LETTER_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def topic_device(topic: str) -> str | None:
    """The device id in ``devices/<id>/telemetry`` (None for other topics)."""
    parts = topic.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "devices" and parts[1] else None


def _number(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidMessage("invalid_value", f"{name}={value!r} is not a number")
    return float(value)


def _device_time(value: Any) -> datetime:
    if isinstance(value, bool):
        raise InvalidMessage("invalid_timestamp", f"ts={value!r}")
    if isinstance(value, int | float):
        millis = value * 1000 if abs(value) < 100_000_000_000 else value  # epoch seconds or milliseconds
        if not _MIN_MS <= millis <= _MAX_MS:
            raise InvalidMessage("invalid_timestamp", f"ts={value!r} is outside 2000..2100")
        return datetime.fromtimestamp(millis / 1000, tz=UTC)
    if isinstance(value, str) and value.strip():
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidMessage("invalid_timestamp", f"ts={value!r} is not ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if not _MIN_MS <= moment.timestamp() * 1000 <= _MAX_MS:
            raise InvalidMessage("invalid_timestamp", f"ts={value!r} is outside 2000..2100")
        return moment.astimezone(UTC)
    raise InvalidMessage("invalid_timestamp", f"ts={value!r}")


def normalize(topic: str, payload: bytes, received_at: datetime) -> dict[str, Any]:
    """Turn one device payload into the telemetry record (``site`` left None: the registry fills it).

    Temperatures become °C (``unit`` C, F or K); times (``ts``: ISO-8601, epoch seconds or milliseconds)
    become ISO-8601 UTC with milliseconds.

    Raises:
        InvalidMessage: the payload breaks a rule; its ``reason`` names the first rule broken.

    Example:
        >>> normalize("devices/d1/telemetry", b'{"device_id":"d1","seq":1,"ts":0}', datetime.now(UTC))
        Traceback (most recent call last):
        ...
        lakehouse.iot.bridge.InvalidMessage: invalid_timestamp: ts=0 is outside 2000..2100
    """
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMessage("not_json", str(exc)) from None
    if not isinstance(document, dict):
        raise InvalidMessage("not_an_object", f"a JSON {type(document).__name__}, not an object")
    device_id = document.get("device_id")
    if not isinstance(device_id, str) or not device_id.strip():
        raise InvalidMessage("missing_device_id", f"device_id={device_id!r}")
    expected = topic_device(topic)
    if expected is not None and expected != device_id:
        raise InvalidMessage("device_id_mismatch", f"device_id {device_id!r} published on {topic!r}")
    seq = document.get("seq")
    if seq is None:
        raise InvalidMessage("missing_seq", "no seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise InvalidMessage("invalid_seq", f"seq={seq!r} is not a non-negative integer")
    device_time = _device_time(document.get("ts", document.get("device_time")))
    values = {target: _number(document, source) for source, target in _FIELDS.items()}
    for target in _FIELDS.values():
        if values[target] is None and target in document:
            values[target] = _number(document, target)
    if values["temperature_c"] is not None:
        unit = document.get("unit")
        convert = _UNITS.get(unit.strip().lower()) if isinstance(unit, str) else None
        if convert is None:
            raise InvalidMessage("unknown_unit", f"temperature unit {unit!r} (expected C, F or K)")
        values["temperature_c"] = round(convert(values["temperature_c"]), 2)
    for name, value in values.items():
        low, high = RANGES[name]
        if value is not None and not low <= value <= high:
            raise InvalidMessage("out_of_range", f"{name}={value} outside [{low}, {high}]")
    firmware = document.get("fw", document.get("firmware"))
    return {
        "device_id": device_id,
        "seq": seq,
        "device_time": iso_millis(device_time),
        "received_at": iso_millis(received_at),
        **values,
        "firmware": str(firmware) if firmware is not None else None,
        "site": None,
        "mqtt_topic": topic,
    }


def dead_letter(topic: str, payload: bytes, received_at: datetime, error: InvalidMessage) -> dict[str, Any]:
    """The dead-letter record: reason, detail, where and when it came, and the raw payload (text + base64)."""
    return {
        "reason": error.reason,
        "detail": error.detail,
        "mqtt_topic": topic,
        "device_id": topic_device(topic),
        "received_at": iso_millis(received_at),
        "payload": payload.decode("utf-8", errors="replace"),
        "payload_base64": base64.b64encode(payload).decode("ascii"),
    }


# --- configuration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeConfig:
    """What the bridge subscribes to and where it produces."""

    mqtt_topic: str = "devices/+/telemetry"
    kafka_topic: str = "iot.telemetry"
    dead_letter_topic: str = "iot.telemetry.dlq"
    qos: int = 1
    client_id: str = "lakehouse-iot-bridge"
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 4000
    batch_size: int = 2000
    registry_path: Path | None = None
    partitions: int = 3
    retention_ms: int = 604_800_000

    @classmethod
    def from_settings(cls, settings: Settings, source: str = SOURCE_NAME, **overrides: Any) -> BridgeConfig:
        """The bridge of an environment: topics from the source registry entry ``source`` (kind mqtt) if it
        exists, else the defaults; the client id is stable per environment."""
        from lakehouse.sources.registry import MqttSource, load_registry

        values: dict[str, Any] = {"client_id": f"lakehouse-iot-bridge-{settings.env_name}"}
        registry = load_registry(settings)
        entry = registry.sources.get(source)
        if entry is not None:
            if not isinstance(entry, MqttSource):
                raise ConfigError(f"source {source!r} in sources.yaml must be of kind mqtt for the bridge")
            values.update(
                mqtt_topic=entry.mqtt_topic,
                kafka_topic=entry.kafka_topic,
                dead_letter_topic=entry.dead_letter_topic,
                qos=entry.qos,
                partitions=entry.partitions,
                retention_ms=entry.retention_ms,
            )
        values.update(overrides)
        return cls(**values)


def ensure_bridge_topics(settings: Settings, config: BridgeConfig) -> list[str]:
    """Create the bridge's Kafka topics if missing (the broker does not auto-create topics)."""
    retention = config.retention_ms
    return kafka_clients.ensure_topics(
        settings.kafka.bootstrap_servers,
        {
            config.kafka_topic: TopicSettings(partitions=config.partitions, retention_ms=retention),
            config.dead_letter_topic: TopicSettings(partitions=1, retention_ms=retention),
        },
        client_id="lakehouse-iot-admin",
    )


# --- the bridge -------------------------------------------------------------------------------------------


@dataclass
class BridgeStats:
    """Counts since the bridge started."""

    received: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    redelivered: int = 0
    batches: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    @property
    def messages_per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.received / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    generation: int


class Bridge:
    """MQTT subscription → normalised Kafka records, acknowledged to MQTT only once Kafka has them.

    Example:
        >>> bridge = Bridge(settings, BridgeConfig.from_settings(settings))   # doctest: +SKIP
        >>> stats = bridge.run(idle_seconds=10)                                # doctest: +SKIP
    """

    def __init__(
        self, settings: Settings, config: BridgeConfig | None = None, registry: DeviceRegistry | None = None
    ) -> None:
        self.settings = settings
        self.config = config or BridgeConfig.from_settings(settings)
        self.registry = registry or DeviceRegistry.open(settings, self.config.registry_path)
        self.stats = BridgeStats()
        self._inbox: queue.Queue[_Inbound] = queue.Queue()
        self._generation = 0
        self._subscribed = threading.Event()
        self._failure: list[str] = []
        self._stop = threading.Event()
        self._client: mqtt.Client | None = None
        self._producer: Any = None

    # MQTT callbacks run on paho's network thread: they only hand messages over.
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._failure.append(f"connection refused: {reason}")
            self._subscribed.set()
            return
        self._generation += 1
        log.info("bridge connected as %s (session present: %s)", self.config.client_id, flags.session_present)
        client.subscribe(self.config.mqtt_topic, qos=self.config.qos)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        failed = [str(code) for code in reasons if code.is_failure]
        if failed:
            self._failure.append(f"subscription to {self.config.mqtt_topic} refused: {failed}")
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.put(
            _Inbound(
                message.topic, bytes(message.payload), message.mid, message.qos, message.dup, self._generation
            )
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not self._stop.is_set():
            log.warning("bridge lost the MQTT connection (%s); paho reconnects", reason)

    def connect(self, timeout: float = 15.0) -> None:
        """Open the Kafka producer and the persistent MQTT session, and wait for the subscription."""
        bootstrap = self.settings.kafka.bootstrap_servers
        self._producer = kafka_clients.producer(bootstrap, self.config.client_id)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.config.session_expiry_s
        properties.ReceiveMaximum = self.config.receive_maximum
        host, port = self.settings.mqtt.host, self.settings.mqtt.port
        try:
            client.connect(host, port, keepalive=30, clean_start=False, properties=properties)
        except OSError as exc:
            self._producer.close(timeout=5)
            raise ServiceError(
                f"no MQTT broker answers at {host}:{port} ({exc}): start it with `lakehouse up` "
                "or fix mqtt.host/port in the environment file"
            ) from exc
        self._client = client
        client.loop_start()
        if not self._subscribed.wait(timeout) or self._failure:
            self.close(flush=False)
            raise ServiceError(
                f"the bridge could not subscribe to {self.config.mqtt_topic} at {host}:{port}: "
                f"{self._failure or 'no answer in time'}"
            )

    def _send(self, topic: str, key: str | None, value: dict[str, Any]) -> Any:
        encoded = json.dumps(value, separators=(",", ":")).encode()
        return self._producer.send(topic, key=key.encode() if key is not None else None, value=encoded)

    def _forward(self, batch: list[_Inbound]) -> None:
        """Produce a batch to Kafka, wait for Kafka's acknowledgement, then acknowledge it to MQTT."""
        futures = []
        for inbound in batch:
            received_at = datetime.now(UTC)
            self.stats.received += 1
            self.stats.redelivered += inbound.dup
            try:
                record = normalize(inbound.topic, inbound.payload, received_at)
            except InvalidMessage as error:
                self.stats.dead_lettered += 1
                self.stats.reasons[error.reason] += 1
                letter = dead_letter(inbound.topic, inbound.payload, received_at, error)
                futures.append(self._send(self.config.dead_letter_topic, letter["device_id"], letter))
                continue
            record["site"] = self.registry.lookup(record["device_id"], record["firmware"]).site
            self.stats.forwarded += 1
            futures.append(self._send(self.config.kafka_topic, record["device_id"], record))
        self._producer.flush(timeout=60)
        for future in futures:
            try:
                future.get(timeout=0)
            except KafkaError as exc:
                # Unacknowledged messages come back from the broker when the bridge restarts.
                raise ServiceError(
                    f"Kafka did not take the bridged records ({exc}); the MQTT messages stay unacknowledged "
                    "and are delivered again when the bridge restarts"
                ) from exc
        client = self._client
        assert client is not None
        for inbound in batch:
            # A mid from an older connection may now name another message: let the broker redeliver it.
            if inbound.qos > 0 and inbound.generation == self._generation:
                client.ack(inbound.mid, inbound.qos)
        self.stats.batches += 1

    def _drain(self, wait: float) -> list[_Inbound]:
        try:
            batch = [self._inbox.get(timeout=wait)]
        except queue.Empty:
            return []
        while len(batch) < self.config.batch_size:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def run(self, *, idle_seconds: float | None = None, max_messages: int | None = None) -> BridgeStats:
        """Forward messages until :meth:`request_stop`, ``idle_seconds`` of silence or ``max_messages``.

        Connects first if :meth:`connect` was not called; always closes (flush, then disconnect) at the end.
        """
        if self._client is None:
            self.connect()
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                batch = self._drain(0.2)
                if batch:
                    self._forward(batch)
                    idle_since = time.monotonic()
                    if max_messages is not None and self.stats.received >= max_messages:
                        break
                elif idle_seconds is not None and time.monotonic() - idle_since >= idle_seconds:
                    break
        finally:
            self.close()
        log.info(
            "bridge stopped: %d received, %d forwarded, %d dead-lettered (%s)",
            self.stats.received,
            self.stats.forwarded,
            self.stats.dead_lettered,
            dict(self.stats.reasons),
        )
        return self.stats

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop after the batch in hand (safe from a signal handler or another thread)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGINT and SIGTERM (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping the bridge", signum)
            self.request_stop()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def close(self, flush: bool = True) -> None:
        """Flush the producer, then disconnect from MQTT (messages not yet acknowledged are redelivered)."""
        self._stop.set()
        if self._producer is not None:
            if flush:
                try:
                    self._producer.flush(timeout=30)
                except KafkaError as exc:
                    log.warning("flushing the producer failed: %s", exc)
            self._producer.close(timeout=10)
            self._producer = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
