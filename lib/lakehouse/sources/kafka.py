"""Kafka → bronze Delta with Structured Streaming.

One query definition serves both modes: the DAG runs it with ``availableNow`` (take what is in Kafka, stop)
and continuous mode runs the very same query with a processing-time trigger. The checkpoint plus Delta's
transactional sink make it exactly-once: stop it anywhere, start it again, nothing is lost or written twice.
Bronze keeps the payload exactly as it arrived — malformed ones included — with where and when it came from.

Key and value are kept as text every reader can take (Arrow, DuckDB, pandas and Parquet readers refuse
invalid UTF-8): byte sequences that are not UTF-8 become U+FFFD in ``key``/``value``, and the bytes as they
arrived go to ``key_bytes``/``value_bytes`` — null whenever the text is already exact, so a record's bytes are
always ``value_bytes`` if set, else ``value`` encoded as UTF-8. Silver quarantines such a record as
``invalid_utf8``; it can never fail a reader.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.query import StreamingQuery
from pyspark.sql.types import (
    BinaryType,
    DateType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.kafka_clients import require_broker
from lakehouse.tables import ensure_table, table_version

log = logging.getLogger(__name__)

# Bronze of any topic: the raw record as it arrived, plus where and when it came from.
# Nothing is parsed or dropped.
BRONZE_KAFKA: Final = StructType(
    [
        StructField("key", StringType()),
        StructField("value", StringType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("kafka_timestamp", TimestampType()),
        StructField("ingested_at", TimestampType()),
        StructField("ingest_date", DateType()),
        StructField("key_bytes", BinaryType()),
        StructField("value_bytes", BinaryType()),
    ]
)


@dataclass(frozen=True)
class IngestReport:
    """What one ``availableNow`` run added to bronze."""

    topic: str
    table: str
    rows: int
    batches: int
    end_offsets: dict[str, int]
    table_version: int


def kafka_source(
    spark: SparkSession,
    bootstrap_servers: str,
    topic: str,
    *,
    max_offsets_per_trigger: int | None = None,
    starting_offsets: str = "earliest",
) -> DataFrame:
    """A streaming DataFrame over a Kafka topic (Spark's Kafka source columns)."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", starting_offsets)
        .option("failOnDataLoss", "false")
        .option("includeHeaders", "false")
    )
    if max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(max_offsets_per_trigger))
    return reader.load()


def to_bronze(records: DataFrame) -> DataFrame:
    """Kafka source rows → :data:`BRONZE_KAFKA`: raw key and payload, topic, partition, offset, times.

    Example:
        >>> bronze = to_bronze(kafka_source(spark, "127.0.0.1:9092", "clickstream"))  # doctest: +SKIP
    """
    missing = {"key", "value", "topic", "partition", "offset", "timestamp"} - set(records.columns)
    if missing:
        raise ConfigError(f"to_bronze needs Kafka source columns; missing {sorted(missing)}")
    ingested_at = F.current_timestamp()
    key, value = F.col("key").cast("string"), F.col("value").cast("string")
    return records.select(
        F.make_valid_utf8(key).alias("key"),
        F.make_valid_utf8(value).alias("value"),
        F.col("topic"),
        F.col("partition").cast("int").alias("partition"),
        F.col("offset").cast("long").alias("offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        ingested_at.alias("ingested_at"),
        F.to_date(ingested_at).alias("ingest_date"),
        F.when(~F.is_valid_utf8(key), F.col("key")).alias("key_bytes"),
        F.when(~F.is_valid_utf8(value), F.col("value")).alias("value_bytes"),
    )


def start_ingest(
    spark: SparkSession,
    settings: Settings,
    topic: str,
    *,
    table: str | None = None,
    checkpoint: str | None = None,
    continuous: bool = False,
    trigger_interval: str | None = None,
) -> StreamingQuery:
    """Start the Kafka → bronze query for ``topic``.

    Args:
        spark: a session from :func:`lakehouse.spark.get_spark`.
        settings: the environment (broker, paths, trigger interval).
        topic: the Kafka topic; bronze table ``bronze/<topic>`` unless ``table`` is given.
        table: the Delta path to append to.
        checkpoint: the checkpoint folder (the query's identity: reuse it to resume exactly where it stopped).
        continuous: False → ``availableNow`` (drain and stop); True → processing-time trigger.
        trigger_interval: overrides ``settings.streaming.trigger_interval`` in continuous mode.

    Returns:
        The running query.
    """
    require_broker(settings.kafka.bootstrap_servers)
    table = table or settings.table_path("bronze", topic)
    checkpoint = checkpoint or settings.checkpoint_path(f"bronze_{topic}")
    ensure_table(spark, table, BRONZE_KAFKA, partition_by=["ingest_date"])
    source = kafka_source(
        spark,
        settings.kafka.bootstrap_servers,
        topic,
        max_offsets_per_trigger=settings.streaming.max_offsets_per_trigger,
    )
    writer = (
        to_bronze(source)
        .writeStream.format("delta")
        .outputMode("append")
        .option("checkpointLocation", checkpoint)
        .option("mergeSchema", "true")  # a bronze table from before key_bytes/value_bytes gains them
        .partitionBy("ingest_date")
        .queryName(f"bronze_{topic}_{settings.env_name}")
    )
    if continuous:
        writer = writer.trigger(processingTime=trigger_interval or settings.streaming.trigger_interval)
    else:
        writer = writer.trigger(availableNow=True)
    log.info("starting %s ingest of %s into %s", "continuous" if continuous else "availableNow", topic, table)
    return writer.start(table)


def _end_offsets(progress: list[Any]) -> dict[str, int]:
    """Highest end offset per partition over a query's progress reports."""
    offsets: dict[str, int] = {}
    for entry in progress:
        for source in entry.sources:
            end = json.loads(source.endOffset) if isinstance(source.endOffset, str) else source.endOffset
            for partitions in (end or {}).values():
                for partition, offset in partitions.items():
                    offsets[partition] = max(offsets.get(partition, 0), int(offset))
    return offsets


def _validate_slice(
    spark: SparkSession, settings: Settings, path: str, table: str, started: datetime, run_id: str | None
) -> None:
    from lakehouse.quality import check_batch, suite_path

    if not suite_path(settings, table).is_file():
        log.info("no quality suite for %s: the ingested slice is not validated", table)
        return
    # A second of slack: ingested_at comes from the Spark server's clock.
    since = started - timedelta(seconds=1)
    fresh = spark.read.format("delta").load(path).where(F.col("ingested_at") >= F.lit(since))
    check_batch(fresh, table, settings=settings, run_id=run_id or str(uuid.uuid4()), batch_id=0)


def ingest_available(
    spark: SparkSession,
    settings: Settings,
    topic: str,
    *,
    run_id: str | None = None,
    quality_table: str | None = None,
    **kwargs: Any,
) -> IngestReport:
    """Run the ingest query with ``availableNow``: everything in Kafka now lands in bronze, then it stops.

    Then the slice this run ingested (``ingested_at`` ≥ the run's start) is validated against the bronze
    suite (``quality_table``, default ``"bronze.<topic>"`` when that suite exists; warn/fail only).

    Raises:
        QualityError: a ``fail`` rule of the bronze suite failed on the new slice (results persisted).
    """
    started = datetime.now(UTC)
    query = start_ingest(spark, settings, topic, continuous=False, **kwargs)
    query.awaitTermination()
    exception = query.exception()
    if exception is not None:
        raise RuntimeError(f"bronze ingest of {topic} failed: {exception}")
    progress = list(query.recentProgress)
    rows = sum(int(p.numInputRows or 0) for p in progress)
    table = kwargs.get("table") or settings.table_path("bronze", topic)
    if rows:
        _validate_slice(spark, settings, table, quality_table or f"bronze.{topic}", started, run_id)
    return IngestReport(
        topic=topic,
        table=table,
        rows=rows,
        batches=sum(1 for p in progress if (p.numInputRows or 0) > 0),
        end_offsets=_end_offsets(progress),
        table_version=table_version(spark, table),
    )
