"""Stream processors between topics (the Kafka Streams role): consume, enrich or route, produce, commit.

A Kafka source that declares a ``processor`` section (``sources.yaml``; :mod:`lakehouse.contracts.processor`)
gets one: :class:`TopicProcessor` reads the source's topic in a consumer group, adds the declared ``derive``
fields (and a processing-time ``stamp``) to each record and produces it, keyed, to the declared ``topic``. A
record that is not a JSON object, or breaks one of the declared ``require`` rules, goes unchanged to the
``dead_letter_topic`` with its ``reason`` (and where it came from) in the record headers. The demo's
clickstream enrichment (a sales region and a device class per event) is such a declaration; nothing here
knows it.

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
from typing import Any

from lakehouse import kafka_clients
from lakehouse.config import Settings, TopicSettings
from lakehouse.contracts.processor import ProcessorSpec, derive, holds, value_at
from lakehouse.errors import ConfigError, ServiceError
from lakehouse.sources.registry import KafkaSource, Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processed:
    """The outcome for one record: the enriched record, or the reason it goes to the dead-letter topic."""

    record: dict[str, Any] | None
    reason: str | None = None


def process_record(
    spec: ProcessorSpec, payload: bytes | str | None, *, now_ms: int | None = None
) -> Processed:
    """Apply a declared processor to one payload (pure: no I/O).

    A payload that is empty, not JSON (bad bytes, too deeply nested to parse) or not a JSON object is
    dead-lettered as ``empty_payload``, ``malformed_json`` or ``not_an_object``; then the ``require`` rules
    run in order and the first broken one names the reason. A good record gets every ``derive`` field and,
    when the spec names a ``stamp``, the processing time in epoch milliseconds.

    Example:
        >>> spec = ProcessorSpec.model_validate({"topic": "o", "dead_letter_topic": "d",
        ...     "require": [{"reason": "missing_id", "field": "id", "present": True}],
        ...     "derive": {"region": {"lookup": "country", "map": {"de": "emea"}, "default": "other"}}})
        >>> process_record(spec, b'{"id": 1, "country": "DE"}', now_ms=0).record
        {'id': 1, 'country': 'DE', 'region': 'emea', 'processed_at': 0}
        >>> process_record(spec, b'{"country": "DE"}').reason
        'missing_id'
    """
    if payload is None or not payload:
        return Processed(None, "empty_payload")
    try:
        record = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: thousands of nested brackets; the record is kept, whole, in the dead letter
        return Processed(None, "malformed_json")
    if not isinstance(record, dict):
        return Processed(None, "not_an_object")
    for rule in spec.require:
        if not holds(rule, record):
            return Processed(None, rule.reason)
    for name, how in spec.derive.items():
        record[name] = derive(how, record)
    if spec.stamp:
        record[spec.stamp] = int(time.time() * 1000) if now_ms is None else now_ms
    return Processed(record)


@dataclass
class ProcessorReport:
    """What a processor run did."""

    consumed: int = 0
    enriched: int = 0
    dead_lettered: int = 0
    batches: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessorConfig:
    """What one processor runs: its declaration, the topic it reads, its group and client settings."""

    bootstrap_servers: str
    source_topic: str
    spec: ProcessorSpec
    group_id: str
    max_poll_records: int = 500
    poll_timeout_ms: int = 500

    @property
    def output_topic(self) -> str:
        return self.spec.topic

    @property
    def dead_letter_topic(self) -> str:
        return self.spec.dead_letter_topic

    @classmethod
    def for_source(cls, settings: Settings, source: KafkaSource, **overrides: Any) -> ProcessorConfig:
        """The processor a Kafka source declares.

        Raises:
            ConfigError: the source declares no ``processor``.
        """
        if source.processor is None:
            raise ConfigError(
                f"source {source.name!r} declares no processor: add a `processor:` section to its entry "
                "in sources.yaml (see lakehouse.contracts.processor)"
            )
        values: dict[str, Any] = {
            "bootstrap_servers": settings.kafka.bootstrap_servers,
            "source_topic": source.topic,
            "spec": source.processor,
            "group_id": source.processor.group_id or f"lakehouse-processor-{source.name}",
        }
        return cls(**{**values, **overrides})


def declared_processors(registry: Registry) -> dict[str, KafkaSource]:
    """The Kafka sources that declare a processor, by name, in file order."""
    return {
        name: source
        for name, source in registry.sources.items()
        if isinstance(source, KafkaSource) and source.processor is not None
    }


def ensure_output_topics(config: ProcessorConfig) -> list[str]:
    """Create the output (as many partitions as the source) and dead-letter topics if missing.

    Raises:
        ServiceError: the source topic does not exist, or no broker answers.
    """
    partitions = kafka_clients.partition_count(config.bootstrap_servers, config.source_topic)
    return kafka_clients.ensure_topics(
        config.bootstrap_servers,
        {
            config.output_topic: TopicSettings(partitions=partitions),
            config.dead_letter_topic: TopicSettings(partitions=1),
        },
        client_id="lakehouse-processor",
    )


class TopicProcessor:
    """Consumer → declared processor → producer with manual commits after acknowledged sends (at-least-once).

    Example:
        >>> config = ProcessorConfig.for_source(settings, registry.get("clickstream"))  # doctest: +SKIP
        >>> report = TopicProcessor(config).run(max_idle_seconds=10)                    # doctest: +SKIP
    """

    def __init__(self, config: ProcessorConfig) -> None:
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
        spec = self.config.spec
        outcome = process_record(spec, record.value)
        if outcome.record is not None:
            key = record.key
            if key is None and spec.key is not None:
                value = value_at(outcome.record, spec.key.split("."))
                key = None if value is None else str(value).encode()
            value = json.dumps(outcome.record, separators=(",", ":")).encode()
            return self.producer.send(self.config.output_topic, key=key, value=value), None
        reason = outcome.reason or "unknown"
        headers = [
            ("reason", reason.encode()),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        future = self.producer.send(
            self.config.dead_letter_topic, key=record.key, value=record.value, headers=headers
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
                    f"producing to {self.config.output_topic}/{self.config.dead_letter_topic} failed: {exc}; "
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
        log.info("processor %s → %s: %s", self.config.source_topic, self.config.output_topic, report)
        return report

    def close(self) -> None:
        """Flush the producer and leave the consumer group."""
        try:
            self.producer.close(timeout=10)
        finally:
            self.consumer.close(autocommit=False)
