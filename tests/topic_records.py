"""Every record of a Kafka topic, from its start to its end as of now, as (key, JSON value) pairs. Shared by
the tests that check what the bridge or a producer put on a topic. ``tests/`` is on ``sys.path`` through its
``conftest.py``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from lakehouse.config import Settings


def consume(settings: Settings, topic: str, timeout: float = 60.0) -> list[tuple[str | None, dict[str, Any]]]:
    """The topic's records in partition order (keys decoded as UTF-8, values parsed as JSON)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[tuple[str | None, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(
                    (r.key.decode() if r.key is not None else None, json.loads(r.value)) for r in batch
                )
        return records
    finally:
        consumer.close()


def values(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """The topic's record values (see :func:`consume`)."""
    return [value for _, value in consume(settings, topic)]
