"""The MQTT → Kafka bridge: at-least-once delivery of device messages, normalised by the source's declaration.

How nothing is lost:

* the bridge's MQTT session is persistent (MQTT 5, a stable client id, ``clean_start=False`` and a session
  expiry), so the broker queues QoS 1 messages while the bridge is down and delivers them when it is back;
* messages are acknowledged to the broker by hand (paho's ``manual_ack``) and only after Kafka acknowledged
  the produce (idempotent producer, ``acks=all``): a bridge killed anywhere gets the unacknowledged
  messages again. Re-deliveries can duplicate records in Kafka; silver removes them by key + sequence.

What a message becomes is declared, not coded: the ``mqtt`` source's ``payload`` in ``sources.yaml``
(:mod:`lakehouse.contracts.payload`) says where each field is, its type, its unit and its limits. Each message
is read by that declaration (:class:`Normalizer`) into the record :meth:`MqttSource.record_payload` declares,
keyed by the payload's ``key`` — the key fields, the sequence, the event time, ``received_at``, the other
fields, the device registry's site (``device_registry``), ``mqtt_topic``, and ``extra`` with every value the
declaration does not name (only when there is one: nothing is dropped; the bridge counts them by path)::

    {"device_id": "dev-0001", "seq": 123, "device_time": "2024-11-01T10:00:00.000Z",
     "received_at": "...Z", "temperature_c": 21.5, ..., "site": "hq-floor-2",
     "mqtt_topic": "devices/dev-0001/telemetry"}

A message that breaks the declaration (not JSON, no device id or sequence, a wrong type, a bad or absurd
time, an unknown unit, a value out of range, or a device id other than its topic's ``topic_pattern`` names)
goes to the dead-letter topic with its reason (:data:`lakehouse.contracts.payload.GENERIC_REASONS`, plus
``missing_<field>``, ``invalid_<field>`` and ``<field>_mismatch``) and the raw payload.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import paho.mqtt.client as mqtt
from kafka.errors import KafkaError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lakehouse import kafka_clients
from lakehouse.config import Settings, TopicSettings, load_settings
from lakehouse.contracts.payload import (
    GENERIC_REASONS,
    PayloadError,
    PayloadReader,
    PayloadSpec,
    format_path,
    iso_millis,
)
from lakehouse.errors import ConfigError, ServiceError
from lakehouse.sources.device_registry import DeviceRegistry

if TYPE_CHECKING:
    from lakehouse.sources.registry import MqttSource

log = logging.getLogger(__name__)

SOURCE_NAME: Final = "iot_telemetry"  # the source the bridge serves when none is named and it exists
DEAD_LETTER_REASONS: Final = (*GENERIC_REASONS, "missing_<field>", "invalid_<field>", "<field>_mismatch")
RECEIVED_AT: Final = "received_at"
MQTT_TOPIC: Final = "mqtt_topic"

InvalidMessage = PayloadError  # a message the bridge cannot normalise; ``reason`` names the rule it broke


class Normalizer:
    """One ``mqtt`` source's declaration, compiled: MQTT message → the record the bridge writes to Kafka.

    Example:
        >>> normalizer = Normalizer.from_registry(settings, "iot_telemetry")         # doctest: +SKIP
        >>> normalizer.normalize("devices/d1/telemetry", payload, datetime.now(UTC))  # doctest: +SKIP
    """

    def __init__(self, source: MqttSource) -> None:
        record = source.record_payload()
        if source.payload is None or record is None:
            raise ConfigError(
                f"mqtt source {source.name!r} declares no payload: add `payload:` to its entry in "
                "sources.yaml (fields, key, sequence, event_time; see CONTRIBUTING.md, 'Adding a source')"
            )
        self.source = source
        self.payload: PayloadSpec = source.payload
        self.reader: PayloadReader = source.payload.reader()
        self.record_fields: tuple[str, ...] = tuple(record.fields)
        self._topic_levels = source.topic_pattern.split("/") if source.topic_pattern else []
        self._placeholders = source.topic_placeholders()
        link = source.device_registry
        self.site_field = link.site_field if link else None
        self.firmware_field = link.firmware_field if link else None

    @classmethod
    def from_source(cls, source: MqttSource) -> Normalizer:
        return cls(source)

    @classmethod
    def from_registry(cls, settings: Settings, name: str | None = None) -> Normalizer:
        """The normaliser of the registry's ``mqtt`` source ``name`` (see :func:`mqtt_source`)."""
        return cls(mqtt_source(settings, name))

    def topic_values(self, topic: str) -> dict[str, str]:
        """The field values a topic names by ``topic_pattern`` (empty when the topic does not match it)."""
        levels = topic.split("/")
        if not self._topic_levels or len(levels) != len(self._topic_levels):
            return {}
        values = {}
        for index, (level, expected) in enumerate(zip(levels, self._topic_levels, strict=True)):
            if index in self._placeholders:
                if not level:
                    return {}
                values[self._placeholders[index]] = level
            elif level != expected:
                return {}
        return values

    def message_key(self, values: dict[str, Any]) -> str:
        """The Kafka key of a record: its key fields' values, joined by ``/``."""
        return "/".join(str(values[name]) for name in self.payload.key)

    def normalize(self, topic: str, payload: bytes, received_at: datetime) -> dict[str, Any]:
        """The record of one message (the registry's site left None: :class:`Bridge` fills it).

        Raises:
            InvalidMessage: the payload breaks the declaration; its ``reason`` names the rule broken.
        """
        read = self.reader.read(payload)
        values = read.values
        for name, expected in self.topic_values(topic).items():
            if str(values[name]) != expected:
                raise InvalidMessage(f"{name}_mismatch", f"{name} {values[name]!r} published on {topic!r}")
        provided: dict[str, Any] = {RECEIVED_AT: iso_millis(received_at), MQTT_TOPIC: topic}
        if self.site_field is not None:
            provided[self.site_field] = None
        record = {name: values[name] if name in values else provided[name] for name in self.record_fields}
        if read.extra:
            record[self.payload.extra_field] = read.extra
        return record

    def dead_letter_key(self, topic: str, payload: bytes = b"") -> str | None:
        """The device a rejected message is from, as far as its topic (``topic_pattern``) or, failing that,
        its payload tells (None if neither does)."""
        named = self.topic_values(topic)
        if named and all(name in named for name in self.payload.key):
            return "/".join(named[name] for name in self.payload.key)
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None
        values = [
            self.reader.find(document, name) if isinstance(document, dict) else None
            for name in self.payload.key
        ]
        if any(not isinstance(v, str | int) or isinstance(v, bool) or v == "" for v in values):
            return None
        return "/".join(str(v) for v in values)


def mqtt_source(settings: Settings, name: str | None = None) -> MqttSource:
    """The registry's ``mqtt`` source ``name``; unnamed: ``iot_telemetry`` if it exists, else the only one.

    Raises:
        ConfigError: no such source, it is of another kind, or several mqtt sources and none named.
    """
    from lakehouse.sources.registry import MqttSource, load_registry

    registry = load_registry(settings)
    if name is None:
        candidates = [s for s in registry.sources.values() if isinstance(s, MqttSource)]
        if SOURCE_NAME in registry.sources or len(candidates) != 1:
            name = SOURCE_NAME
            if name not in registry.sources:
                known = sorted(s.name for s in candidates)
                raise ConfigError(f"name the mqtt source to bridge with --source (the registry has {known})")
        else:
            name = candidates[0].name
    entry = registry.get(name)
    if not isinstance(entry, MqttSource):
        raise ConfigError(f"source {name!r} in sources.yaml must be of kind mqtt for the bridge")
    return entry


_DEFAULT: list[Normalizer] = []


def normalize(
    topic: str, payload: bytes, received_at: datetime, normalizer: Normalizer | None = None
) -> dict[str, Any]:
    """Turn one device message into its record by its source's declaration.

    Args:
        topic: the MQTT topic it came on.
        payload: its bytes.
        received_at: when the bridge received it.
        normalizer: the source's compiled declaration; default: the ``iot_telemetry`` source of the current
            environment's registry (``$LAKEHOUSE_ENV``, ``$LAKEHOUSE_SOURCES``).

    Raises:
        InvalidMessage: the payload breaks a rule; its ``reason`` names the first rule broken.
    """
    if normalizer is None:
        if not _DEFAULT:
            _DEFAULT.append(Normalizer.from_registry(load_settings(), SOURCE_NAME))
        normalizer = _DEFAULT[0]
    return normalizer.normalize(topic, payload, received_at)


def topic_device(topic: str, normalizer: Normalizer | None = None, payload: bytes = b"") -> str | None:
    """The device a topic names by its source's ``topic_pattern`` (else the payload's key, else None)."""
    if normalizer is None:
        if not _DEFAULT:
            _DEFAULT.append(Normalizer.from_registry(load_settings(), SOURCE_NAME))
        normalizer = _DEFAULT[0]
    return normalizer.dead_letter_key(topic, payload)


def dead_letter(
    topic: str,
    payload: bytes,
    received_at: datetime,
    error: InvalidMessage,
    normalizer: Normalizer | None = None,
) -> dict[str, Any]:
    """The dead-letter record: reason, detail, where and when it came, and the raw payload (text + base64).

    ``device_id`` is the device the topic names (``topic_pattern``), else the payload's key if it can be
    read, else None.
    """
    return {
        "reason": error.reason,
        "detail": error.detail,
        "mqtt_topic": topic,
        "device_id": topic_device(topic, normalizer, payload),
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

    source: str | None = None  # the registry's mqtt source whose declaration normalises the messages
    normalizer: Normalizer | None = None  # that declaration compiled (default: read from the registry)

    @classmethod
    def from_settings(cls, settings: Settings, source: str | None = None, **overrides: Any) -> BridgeConfig:
        """The bridge of one ``mqtt`` source of the registry (see :func:`mqtt_source`): its topics and its
        declaration; the client id is stable per environment and source.

        Raises:
            ConfigError: no such mqtt source, or its declaration names a unit pint does not know.
        """
        entry = mqtt_source(settings, source)
        suffix = "" if entry.name == SOURCE_NAME else f"-{entry.name.replace('_', '-')}"
        values: dict[str, Any] = {
            "client_id": f"lakehouse-iot-bridge-{settings.env_name}{suffix}",
            "mqtt_topic": entry.mqtt_topic,
            "kafka_topic": entry.kafka_topic,
            "dead_letter_topic": entry.dead_letter_topic,
            "qos": entry.qos,
            "partitions": entry.partitions,
            "retention_ms": entry.retention_ms,
            "source": entry.name,
            "normalizer": Normalizer.from_source(entry),
        }
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
    extra_fields: Counter[str] = field(default_factory=Counter)  # undeclared values kept in `extra`, by path
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
        self.normalizer = self.config.normalizer or Normalizer.from_registry(settings, self.config.source)
        self.registry: DeviceRegistry | None = None
        if self.normalizer.site_field is not None:
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
        records: list[tuple[str, dict[str, Any]]] = []
        for inbound in batch:
            received_at = datetime.now(UTC)
            self.stats.received += 1
            self.stats.redelivered += inbound.dup
            try:
                record = self.normalizer.normalize(inbound.topic, inbound.payload, received_at)
            except InvalidMessage as error:
                self.stats.dead_lettered += 1
                self.stats.reasons[error.reason] += 1
                letter = dead_letter(inbound.topic, inbound.payload, received_at, error, self.normalizer)
                letter["source"] = self.normalizer.source.name
                futures.append(self._send(self.config.dead_letter_topic, letter["device_id"], letter))
                continue
            records.append((self.normalizer.message_key(record), record))
        normalizer = self.normalizer
        if self.registry is not None and normalizer.site_field is not None and records:
            firmware_of = {
                key: record.get(normalizer.firmware_field) if normalizer.firmware_field else None
                for key, record in records
            }
            entries = self.registry.lookup_many(firmware_of.items())  # new devices: one registry write
            for key, record in records:
                record[normalizer.site_field] = entries[key].site
        for key, record in records:
            extra = record.get(normalizer.payload.extra_field)
            if extra:
                self._count_extra(extra, ())
            self.stats.forwarded += 1
            futures.append(self._send(self.config.kafka_topic, key, record))
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

    def _count_extra(self, extra: dict[str, Any], prefix: tuple[str, ...]) -> None:
        for name, value in extra.items():
            path = (*prefix, name)
            if isinstance(value, dict) and value:
                self._count_extra(value, path)
                continue
            shown = format_path(path)
            if shown not in self.stats.extra_fields:
                log.warning(
                    "source %s: messages carry %s, which the payload declaration does not name; "
                    "it is kept in %r (declare it in sources.yaml to type it)",
                    self.normalizer.source.name,
                    shown,
                    self.normalizer.payload.extra_field,
                )
            self.stats.extra_fields[shown] += 1

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
            "bridge stopped: %d received, %d forwarded, %d dead-lettered (%s), undeclared values kept: %s",
            self.stats.received,
            self.stats.forwarded,
            self.stats.dead_lettered,
            dict(self.stats.reasons),
            dict(self.stats.extra_fields) or "none",
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
