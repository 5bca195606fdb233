"""The fuzz corpus through the real broker: Kafka → bronze (Structured Streaming) → silver.events, every
input accounted for by its partition and offset as its category expects (``tests/data/fuzz``).

``make test`` sends a few inputs of each category; ``make fuzz`` sends the full corpus
(``LAKEHOUSE_FUZZ_PER_CATEGORY=600``: 10,200 inputs) and prints the figures.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from fuzz_cases import clickstream_corpus, events_in, expectations, outcomes, unexpected
from lakehouse.config import Settings
from lakehouse.silver import engine
from lakehouse.simulate.fuzz import send, summary
from lakehouse.sources.kafka import ingest_available

pytestmark = pytest.mark.integration

PER_CATEGORY = int(os.environ.get("LAKEHOUSE_FUZZ_PER_CATEGORY", "3"))


def test_every_fuzz_input_sent_to_kafka_is_accounted_for(stack: Settings, spark: Any, tmp_path: Path) -> None:
    cases = clickstream_corpus(stack, PER_CATEGORY)
    topic = f"fuzz-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name=topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    placed = send(cases, bootstrap_servers=stack.kafka.bootstrap_servers, topic=topic)

    bronze = str(tmp_path / "bronze")
    ingested = ingest_available(spark, stack, topic, table=bronze, checkpoint=str(tmp_path / "cp-bronze"))
    assert ingested.rows == len(cases)  # nothing lost on the way in, nothing stopped the ingest
    table = events_in(stack, tmp_path, bronze)
    total = engine.build_table(spark, stack, table.name, table=table).total
    engine.check_table(spark, table)  # raises unless input = applied + quarantined + duplicates + dropped

    found = outcomes(spark, table, cases, placed)
    assert unexpected(cases, found, expectations(stack, "clickstream", table)) == {}
    residual = sum(1 for o in found.values() if o == "duplicate")
    assert residual == total.duplicates + total.dropped
    silver_ids = spark.read.format("delta").load(table.path).groupBy("event_id").count().where("count > 1")
    assert silver_ids.count() == 0  # no event twice in silver
    by_outcome = Counter(o.split(":")[0] for o in found.values())
    accounted = by_outcome["silver"] + by_outcome["quarantine"] + total.duplicates + total.dropped
    assert accounted == len(cases)
    print(
        f"\nfuzz corpus: sent {len(cases)} ({len(summary(cases))} categories), bronze {ingested.rows}, "
        f"silver {by_outcome['silver']}, quarantined {by_outcome['quarantine']}, duplicates {total.duplicates}, "
        f"dropped {total.dropped}, accounted {accounted}, lost {len(cases) - accounted}, "
        f"twice in silver {silver_ids.count()}; by category {summary(cases)}"
    )
    again = engine.build_table(spark, stack, table.name, table=table).total
    assert again.input_rows == 0  # a rebuild finds nothing new: the corpus did not leave work behind
