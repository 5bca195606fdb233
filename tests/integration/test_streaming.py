"""Kafka → bronze → silver on the real broker and the real Spark Connect server."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from lakehouse.config import Settings, TopicSettings
from lakehouse.errors import ServiceError
from lakehouse.silver import engine
from lakehouse.silver.engine import SilverTable
from lakehouse.simulate import Flaws, generate_events, produce
from lakehouse.sources.kafka import ingest_available, start_ingest

pytestmark = pytest.mark.integration


def _new_topic(settings: Settings, partitions: int = 2) -> str:
    name = f"it-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


def _events(settings: Settings, tmp_path: Path) -> SilverTable:
    """The declared silver.events, reading and writing a private lake."""
    declared = engine.silver_table(settings, "silver.events")
    return dataclasses.replace(
        declared,
        path=str(tmp_path / "silver"),
        quarantine=str(tmp_path / "quarantine"),
        audit=str(tmp_path / "silver_batches"),
        checkpoints=str(tmp_path / "checkpoints" / "silver"),
        input_paths={label: str(tmp_path / "bronze") for label in declared.input_paths},
    )


def test_topics_have_the_configured_partitions_and_retention(stack: Settings) -> None:
    expected: TopicSettings = stack.kafka.topics["clickstream"]
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap_servers)
    try:
        (described,) = admin.describe_topics(["clickstream"])
        assert len(described["partitions"]) == expected.partitions
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "clickstream")])
        assert configs["topic"]["clickstream"]["retention.ms"]["value"] == str(expected.retention_ms)
    finally:
        admin.close()


def test_produce_bronze_silver_reconciles_with_the_simulator(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    topic = _new_topic(stack)
    events = list(generate_events(1500, seed=3, days=2, flaws=Flaws()))
    report = produce(events, bootstrap_servers=stack.kafka.bootstrap_servers, topic=topic)
    table = _events(stack, tmp_path)
    ingested = ingest_available(
        spark,
        stack,
        topic,
        table=str(tmp_path / "bronze"),
        checkpoint=str(tmp_path / "checkpoints" / "bronze"),
    )
    assert ingested.rows == report.sent == len(events)

    cleaned = engine.build_table(spark, stack, table.name, table=table).total
    kinds = report.by_kind
    assert cleaned.input_rows == len(events)
    assert cleaned.applied == kinds.get("valid", 0) + kinds.get("late", 0)
    assert cleaned.quarantined == kinds.get("malformed", 0) + kinds.get("very_late", 0)
    assert cleaned.duplicates == kinds.get("duplicate", 0)
    assert cleaned.late == kinds.get("very_late", 0)
    totals = engine.check_table(
        spark, table
    )  # raises unless input = applied + quarantined + duplicates + dropped
    assert totals["input_rows"] == len(events)
    reasons = {r["reason"] for r in spark.read.format("delta").load(table.quarantine).collect()}
    assert {"malformed_json", "late_beyond_watermark"} <= reasons

    # A second run finds nothing new and changes nothing.
    again = engine.build_table(spark, stack, table.name, table=table).total
    assert again.input_rows == 0 and engine.check_table(spark, table) == totals


def _bronze_offsets(spark: Any, table: str) -> list[tuple[int, int]]:
    return [(r["partition"], r["offset"]) for r in spark.read.format("delta").load(table).collect()]


def _wait_for_rows(spark: Any, table: str, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    rows = 0
    while time.monotonic() < deadline:
        try:
            rows = spark.read.format("delta").load(table).count()
        except Exception:
            rows = 0
        if rows >= at_least:
            return rows
        time.sleep(1)
    return rows


def test_ingest_stopped_and_restarted_mid_stream_loses_and_duplicates_nothing(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    topic = _new_topic(stack, partitions=2)
    small_batches = stack.model_copy(
        update={"streaming": stack.streaming.model_copy(update={"max_offsets_per_trigger": 300})}
    )
    table, checkpoint = str(tmp_path / "bronze"), str(tmp_path / "checkpoint")
    first = list(generate_events(3000, seed=5, days=1, flaws=Flaws.none()))
    produce(first, bootstrap_servers=stack.kafka.bootstrap_servers, topic=topic)

    query = start_ingest(
        spark,
        small_batches,
        topic,
        table=table,
        checkpoint=checkpoint,
        continuous=True,
        trigger_interval="1 second",
    )
    try:
        seen = _wait_for_rows(spark, table, at_least=300)
        assert 0 < seen < 3000, "the query should be stopped mid-stream"
    finally:
        query.stop()
    stopped_at = spark.read.format("delta").load(table).count()

    second = list(generate_events(700, seed=6, days=1, flaws=Flaws.none()))
    produce(second, bootstrap_servers=stack.kafka.bootstrap_servers, topic=topic)
    query = start_ingest(
        spark,
        small_batches,
        topic,
        table=table,
        checkpoint=checkpoint,
        continuous=True,
        trigger_interval="1 second",
    )
    try:
        total = _wait_for_rows(spark, table, at_least=3700)
    finally:
        query.stop()

    offsets = _bronze_offsets(spark, table)
    assert stopped_at < 3700
    assert total == 3700 == len(offsets)
    assert len(set(offsets)) == len(offsets), "a Kafka record landed twice"
    for partition in {p for p, _ in offsets}:
        got = sorted(o for p, o in offsets if p == partition)
        assert got == list(range(len(got))), f"partition {partition} has gaps"


def test_ingest_says_what_to_do_when_the_broker_is_down(stack: Settings, spark: Any, tmp_path: Path) -> None:
    down = stack.model_copy(
        update={"kafka": stack.kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})}
    )
    with pytest.raises(ServiceError, match="lakehouse up"):
        ingest_available(
            spark, down, "clickstream", table=str(tmp_path / "t"), checkpoint=str(tmp_path / "c")
        )


def test_continuous_mode_from_the_cli_streams_until_interrupted(stack: Settings, spark: Any) -> None:
    topic = _new_topic(stack)
    produce(
        generate_events(500, seed=8, days=1, flaws=Flaws.none()),
        bootstrap_servers=stack.kafka.bootstrap_servers,
        topic=topic,
    )
    lakehouse = str(Path(sys.executable).parent / "lakehouse")
    command = [lakehouse, "--env", stack.env_name, "ingest", "--topic", topic, "--continuous"]
    command += ["--trigger", "1 second"]
    # Ctrl-C as a terminal sends it: a test run started in the background (`make test &`) ignores SIGINT, and
    # its children would inherit that and never see the interrupt this test sends.
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        table = stack.table_path("bronze", topic)
        assert _wait_for_rows(spark, table, at_least=500) == 500
        produce(
            generate_events(200, seed=9, days=1, flaws=Flaws.none()),
            bootstrap_servers=stack.kafka.bootstrap_servers,
            topic=topic,
        )
        assert _wait_for_rows(spark, table, at_least=700) == 700, "the query did not pick up new events"
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "Ctrl-C stops" in output and "stopping" in output
    assert os.path.isdir(stack.checkpoint_path(f"bronze_{topic}"))
