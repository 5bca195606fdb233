"""Stream processors between topics (the Kafka Streams role): consume, enrich or route, produce, commit.

:class:`ClickstreamEnricher` reads the clickstream topic in a consumer group, adds a geo ``region`` (from the
country) and a ``device_class`` (from platform, device type and OS) to each event and produces it, keyed, to
``clickstream.enriched``. A record it cannot enrich goes unchanged to ``clickstream.dlq`` with its ``reason``
(and where it came from) in the record headers.

Delivery is **at-least-once**: offsets are committed manually, only after every record produced for the
polled batch has been acknowledged by the broker (``acks=all``). A crash between produce and commit re-reads
the batch after a restart, so a record may appear twice downstream (same key, same content) but is never lost.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from lakehouse import kafka_clients
from lakehouse.clickstream import EVENT_TYPES, SUPPORTED_SCHEMA_VERSIONS
from lakehouse.clickstream import TOPIC as CLICKSTREAM_TOPIC
from lakehouse.config import Settings, TopicSettings
from lakehouse.errors import ServiceError

log = logging.getLogger(__name__)

ENRICHED_TOPIC: Final = "clickstream.enriched"
DLQ_TOPIC: Final = "clickstream.dlq"
GROUP_ID: Final = "lakehouse-enrich-clickstream"

# Country → sales region. Unknown countries get "other" (the record is still good).
REGIONS: Final[Mapping[str, str]] = {
    "DE": "emea",
    "FR": "emea",
    "NL": "emea",
    "ES": "emea",
    "GB": "emea",
    "IT": "emea",
    "US": "north_america",
    "CA": "north_america",
    "MX": "latam",
    "BR": "latam",
    "AR": "latam",
    "JP": "apac",
    "IN": "apac",
    "AU": "apac",
    "CN": "apac",
}
UNKNOWN_REGION: Final = "other"

_APP_PLATFORMS: Final = {"ios", "android"}
_TABLET_HINTS: Final = ("tablet", "ipad")


def device_class(platform: str | None, device_type: str | None, os_name: str | None) -> str:
    """``mobile_app``, ``tablet_app``, ``mobile_web``, ``tablet_web``, ``desktop_web`` or ``unknown``.

    Example:
        >>> device_class("ios", "mobile", "iOS"), device_class("web", "desktop", "Windows")
        ('mobile_app', 'desktop_web')
    """
    platform = (platform or "").lower()
    kind = (device_type or "").lower()
    os_lower = (os_name or "").lower()
    tablet = any(hint in kind or hint in os_lower for hint in _TABLET_HINTS)
    if platform in _APP_PLATFORMS:
        return "tablet_app" if tablet else "mobile_app"
    if platform == "web":
        if tablet:
            return "tablet_web"
        if kind == "mobile" or os_lower in {"ios", "android"}:
            return "mobile_web"
        if kind == "desktop" or os_lower in {"windows", "macos", "linux", "chromeos"}:
            return "desktop_web"
    return "unknown"


@dataclass(frozen=True)
class Enriched:
    """The outcome for one record: the enriched event, or the reason it goes to the dead-letter topic."""

    event: dict[str, Any] | None
    reason: str | None = None


def enrich_event(payload: bytes | str | None) -> Enriched:
    """Parse and enrich one clickstream payload (pure: no I/O).

    Adds ``region``, ``device_class`` and ``enriched_at`` (epoch ms). The payload is dead-lettered with a
    reason when it is not a JSON object, has an unsupported ``schema_version``, no ``event_id`` or an unknown
    ``event_type``.

    Example:
        >>> payload = b'{"schema_version": 1, "event_id": "e1", "event_type": "search", "country": "de"}'
        >>> enrich_event(payload).event["region"]
        'emea'
        >>> enrich_event(b"{oops").reason
        'malformed_json'
    """
    if payload is None:
        return Enriched(None, "empty_payload")
    try:
        event = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return Enriched(None, "malformed_json")
    if not isinstance(event, dict):
        return Enriched(None, "not_an_object")
    if event.get("schema_version") not in SUPPORTED_SCHEMA_VERSIONS:
        return Enriched(None, "unsupported_schema_version")
    if not str(event.get("event_id") or "").strip():
        return Enriched(None, "missing_event_id")
    if event.get("event_type") not in EVENT_TYPES:
        return Enriched(None, "invalid_event_type")
    device = event["device"] if isinstance(event.get("device"), dict) else {}
    country = str(event.get("country") or "").upper()
    event["region"] = REGIONS.get(country, UNKNOWN_REGION)
    event["device_class"] = device_class(event.get("platform"), device.get("type"), device.get("os"))
    event["enriched_at"] = int(time.time() * 1000)
    return Enriched(event)


@dataclass
class ProcessorReport:
    """What a processor run did."""

    consumed: int = 0
    enriched: int = 0
    dead_lettered: int = 0
    batches: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EnricherConfig:
    """Topics, group and client settings of the enrichment processor."""

    bootstrap_servers: str
    source_topic: str = CLICKSTREAM_TOPIC
    enriched_topic: str = ENRICHED_TOPIC
    dlq_topic: str = DLQ_TOPIC
    group_id: str = GROUP_ID
    max_poll_records: int = 500
    poll_timeout_ms: int = 500

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EnricherConfig:
        return cls(bootstrap_servers=settings.kafka.bootstrap_servers, **overrides)


def ensure_output_topics(config: EnricherConfig) -> list[str]:
    """Create the enriched (as many partitions as the source) and dead-letter topics if missing.

    Raises:
        ServiceError: the source topic does not exist, or no broker answers.
    """
    partitions = kafka_clients.partition_count(config.bootstrap_servers, config.source_topic)
    return kafka_clients.ensure_topics(
        config.bootstrap_servers,
        {
            config.enriched_topic: TopicSettings(partitions=partitions),
            config.dlq_topic: TopicSettings(partitions=1),
        },
        client_id="lakehouse-processor",
    )


class ClickstreamEnricher:
    """Consumer → enrich → producer with manual commits after acknowledged sends (at-least-once).

    Example:
        >>> enricher = ClickstreamEnricher(EnricherConfig("127.0.0.1:9092"))  # doctest: +SKIP
        >>> report = enricher.run(max_idle_seconds=10)                        # doctest: +SKIP
    """

    def __init__(self, config: EnricherConfig) -> None:
        ensure_output_topics(config)
        self.config = config
        self._stop = threading.Event()
        self.consumer = kafka_clients.consumer(
            config.bootstrap_servers,
            f"{config.group_id}-consumer",
            config.source_topic,
            group_id=config.group_id,
            auto_offset_reset="earliest",
            max_poll_records=config.max_poll_records,
        )
        self.producer = kafka_clients.producer(config.bootstrap_servers, f"{config.group_id}-producer")

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit it and return (safe from a signal handler)."""
        self._stop.set()

    def _send(self, record: Any) -> tuple[Any, str | None]:
        outcome = enrich_event(record.value)
        if outcome.event is not None:
            key = record.key or str(outcome.event["event_id"]).encode()
            value = json.dumps(outcome.event, separators=(",", ":")).encode()
            return self.producer.send(self.config.enriched_topic, key=key, value=value), None
        reason = outcome.reason or "unknown"
        headers = [
            ("reason", reason.encode()),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        future = self.producer.send(
            self.config.dlq_topic, key=record.key, value=record.value, headers=headers
        )
        return future, reason

    def process(self, records: Mapping[Any, list[Any]], report: ProcessorReport) -> None:
        """Enrich or dead-letter one polled batch, wait for every ack, then commit its offsets.

        Raises:
            ServiceError: a send failed; nothing of the batch is committed, so it is re-read on restart.
        """
        from kafka.structs import OffsetAndMetadata

        futures = []
        offsets = {}
        for partition, batch in records.items():
            for record in batch:
                future, reason = self._send(record)
                futures.append(future)
                report.consumed += 1
                if reason is None:
                    report.enriched += 1
                else:
                    report.dead_lettered += 1
                    report.reasons[reason] = report.reasons.get(reason, 0) + 1
            if batch:
                offsets[partition] = OffsetAndMetadata(batch[-1].offset + 1, "", -1)
        self.producer.flush()
        for future in futures:
            try:
                future.get(timeout=30)
            except Exception as exc:
                raise ServiceError(
                    f"producing to {self.config.enriched_topic}/{self.config.dlq_topic} failed: {exc}; "
                    "the batch is not committed and will be re-read on restart"
                ) from exc
        if offsets:
            self.consumer.commit(offsets)
            report.batches += 1

    def run(
        self,
        *,
        max_idle_seconds: float | None = None,
        max_records: int | None = None,
        on_batch: Callable[[ProcessorReport], None] | None = None,
    ) -> ProcessorReport:
        """Process until :meth:`stop`, ``max_idle_seconds`` without records, or ``max_records`` consumed.

        The batch in hand is always finished and committed before returning; then the clients close.
        """
        report = ProcessorReport()
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                records = self.consumer.poll(
                    timeout_ms=self.config.poll_timeout_ms,
                    max_records=self.config.max_poll_records
                    if max_records is None
                    else max(1, min(self.config.max_poll_records, max_records - report.consumed)),
                )
                if records or not self.consumer.assignment():
                    # Idle time counts only once the group has assigned partitions (joining takes a while).
                    idle_since = time.monotonic()
                if records:
                    self.process(records, report)
                    if on_batch is not None:
                        on_batch(report)
                if max_records is not None and report.consumed >= max_records:
                    break
                if max_idle_seconds is not None and time.monotonic() - idle_since >= max_idle_seconds:
                    break
        finally:
            self.close()
        log.info("enrich-clickstream: %s", report)
        return report

    def close(self) -> None:
        """Flush the producer and leave the consumer group."""
        try:
            self.producer.close(timeout=10)
        finally:
            self.consumer.close(autocommit=False)
