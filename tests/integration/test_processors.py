"""A declared topic processor on the real broker (the demo's clickstream declaration, on topics of its own):
every good record enriched, every bad one dead-lettered, nothing lost across a restart — including a crash
between produce and commit."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from lakehouse.config import Settings
from lakehouse.sources.registry import KafkaSource, load_registry
from lakehouse.streaming.processors import ProcessorConfig, TopicProcessor

pytestmark = pytest.mark.integration

BAD = [
    (b"{not json", "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (
        json.dumps({"schema_version": 9, "event_id": "x", "event_type": "search"}).encode(),
        "unsupported_schema_version",
    ),
    (json.dumps({"schema_version": 1, "event_type": "search"}).encode(), "missing_event_id"),
    (
        json.dumps({"schema_version": 2, "event_id": "y", "event_type": "teleport"}).encode(),
        "invalid_event_type",
    ),
]


def _event(index: int) -> dict[str, Any]:
    platforms = [("web", "desktop", "Windows"), ("ios", "mobile", "iOS"), ("android", "tablet", "Android")]
    platform, kind, os_name = platforms[index % 3]
    return {
        "schema_version": 1 + index % 2,
        "event_id": f"ev-{index:04d}",
        "event_type": "page_view",
        "ts": 1_730_419_200_000 + index,
        "user_id": f"u-{index % 7}",
        "session_id": f"s-{index % 11}",
        "platform": platform,
        "device": {"type": kind, "os": os_name, "app_version": None},
        "country": ["de", "US", "BR", "JP", "ZZ"][index % 5],
    }


def _topics(settings: Settings) -> ProcessorConfig:
    suffix = uuid.uuid4().hex[:8]
    source = f"proc-src-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name=source, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    declared = load_registry(settings).get("clickstream")
    assert isinstance(declared, KafkaSource) and declared.processor is not None
    spec = declared.processor.model_copy(
        update={"topic": f"proc-out-{suffix}", "dead_letter_topic": f"proc-dlq-{suffix}"}
    )
    return ProcessorConfig(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        source_topic=source,
        spec=spec,
        group_id=f"proc-{suffix}",
        max_poll_records=20,
        poll_timeout_ms=300,
    )


def _produce(settings: Settings, topic: str, good: int) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    try:
        for index in range(good):
            producer.send(topic, key=f"ev-{index:04d}".encode(), value=json.dumps(_event(index)).encode())
            if index % 25 == 0 and index // 25 < len(BAD):
                payload, _ = BAD[index // 25]
                producer.send(topic, key=b"bad", value=payload)
        producer.flush()
    finally:
        producer.close()


def _read_all(settings: Settings, topic: str, expected: int) -> list[Any]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    records: list[Any] = []
    try:
        for _ in range(20):  # bounded: stop once nothing more arrives for 3 s
            batch = list(consumer)
            records.extend(batch)
            if not batch and len(records) >= expected:
                break
    finally:
        consumer.close()
    return records


def test_the_declared_processor_enriches_good_records_and_dead_letters_bad_ones(stack: Settings) -> None:
    config = _topics(stack)
    _produce(stack, config.source_topic, good=120)
    report = TopicProcessor(config).run(max_idle_seconds=3)
    assert (report.enriched, report.dead_lettered) == (120, len(BAD))

    enriched = _read_all(stack, config.output_topic, 120)
    events = {json.loads(r.value)["event_id"]: (r.key, json.loads(r.value)) for r in enriched}
    assert sorted(events) == [f"ev-{i:04d}" for i in range(120)]
    key, first = events["ev-0000"]
    assert key == b"ev-0000"
    assert (first["region"], first["device_class"]) == ("emea", "desktop_web")
    assert {e["region"] for _, e in events.values()} == {"emea", "north_america", "latam", "apac", "other"}
    assert events["ev-0002"][1]["device_class"] == "tablet_app"

    dead = _read_all(stack, config.dead_letter_topic, len(BAD))
    found = sorted((r.value, dict(r.headers)["reason"].decode()) for r in dead)
    assert found == sorted(BAD)
    assert all(dict(r.headers)["source_topic"].decode() == config.source_topic for r in dead)


def test_a_restart_mid_way_loses_nothing(stack: Settings) -> None:
    config = _topics(stack)
    _produce(stack, config.source_topic, good=200)

    first = TopicProcessor(config).run(max_records=60)  # a clean stop after 60 records
    assert 0 < first.consumed < 205

    # A crash after producing a batch but before committing it: the batch must be re-read, not lost.
    crashing = TopicProcessor(config)

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("simulated crash before commit")

    crashing.consumer.commit = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.run(max_idle_seconds=3)

    last = TopicProcessor(config).run(max_idle_seconds=3)
    assert first.consumed + last.consumed == 205  # the crashed batch is processed again

    enriched = _read_all(stack, config.output_topic, 200)
    ids = [json.loads(r.value)["event_id"] for r in enriched]
    assert set(ids) == {f"ev-{i:04d}" for i in range(200)}
    assert len(ids) > 200  # at-least-once: the crashed batch shows up twice downstream
    dead = _read_all(stack, config.dead_letter_topic, len(BAD))
    assert {dict(r.headers)["reason"].decode() for r in dead} == {reason for _, reason in BAD}
