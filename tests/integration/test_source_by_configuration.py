"""A new source of a known kind lands in bronze with no code change: one registry entry, nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from lakehouse.config import Settings
from lakehouse.dag import ploomber_env
from lakehouse.stack import ensure_topics

pytestmark = pytest.mark.integration


def test_a_kafka_source_added_to_the_registry_lands_in_bronze(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    topic, bronze = f"partner.orders.{suffix}", f"partner_orders_{suffix}"
    registry = tmp_path / "sources.yaml"
    registry.write_text(
        (stack.root / "sources.yaml").read_text()
        + f"  partner_orders:\n    kind: kafka\n    topic: {topic}\n    partitions: 2\n"
        + f"    bronze: {bronze}\n    key: [order_id]\n"
    )
    env = {**ploomber_env(stack), "LAKEHOUSE_SOURCES": str(registry)}
    os.environ["LAKEHOUSE_SOURCES"] = str(registry)
    try:
        assert topic in ensure_topics(stack)  # the topic, too, comes from the registry
    finally:
        del os.environ["LAKEHOUSE_SOURCES"]

    producer = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap_servers, acks="all")
    for order in range(40):
        producer.send(topic, key=str(order).encode(), value=json.dumps({"order_id": order}).encode())
    producer.flush()
    producer.close()

    papermill = str(Path(sys.executable).parent / "papermill")
    result = subprocess.run(
        [papermill, "notebooks/bronze/ingest_events.ipynb", str(tmp_path / "out.ipynb"),
         "-p", "lakehouse_env", stack.env_name, "-p", "topic", topic],
        cwd=stack.root, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    landed = spark.read.format("delta").load(stack.table_path("bronze", bronze))
    assert landed.count() == 40
    assert {row["topic"] for row in landed.select("topic").distinct().collect()} == {topic}
