"""Bronze IoT telemetry → silver: parse, dedupe by (device_id, seq), bound lateness, find offline devices.

Bronze holds the bridge's normalised records exactly as Kafka delivered them (key = device id), including the
duplicates an at-least-once bridge produces after a restart. Every bronze row ends in exactly one place::

    bronze rows = silver rows + quarantined rows + duplicates removed

The job streams bronze (Delta) with ``availableNow`` and handles each micro-batch in ``foreachBatch``:

1. parse the record with an explicit schema (:data:`TELEMETRY_RECORD`); the first rule it breaks is its
   quarantine ``reason``;
2. drop re-deliveries of a reading already in silver or earlier in the batch (same ``device_id`` and ``seq``);
3. accept out-of-order readings within a watermark *per device* (device clocks are skewed, so one fleet-wide
   watermark would punish the devices whose clock is behind): a reading older than the newest device time of
   its device seen before it (in Kafka order or in silver) minus the allowed delay is quarantined as
   ``late_beyond_watermark``;
4. append to silver and quarantine as idempotent Delta writes (``txnAppId``/``txnVersion``).

After the stream, :func:`offline_intervals` rebuilds the device offline table from silver: a gap in device
time longer than ``gap_factor`` × the device's expected interval (given, or the median gap of the device).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Final

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.clickstream import BRONZE_EVENTS
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.silver.batches import (
    RECONCILIATION,
    Reconciliation,
    add_missing_columns,
    drain_bronze,
    reconcile_totals,
    run_counts,
    txn_app_id,
    with_quality_fields,
    write_outcomes,
)
from lakehouse.tables import ensure_table

log = logging.getLogger(__name__)

DEFAULT_WATERMARK: Final = "15 minutes"
DEFAULT_GAP_FACTOR: Final = 5.0
QUARANTINE_REASONS: Final = (
    "malformed_json",
    "missing_device_id",
    "missing_seq",
    "invalid_device_time",
    "late_beyond_watermark",
)
_MEASURES: Final = ("temperature_c", "humidity_pct", "co2_ppm", "battery_pct", "light_lux")

TELEMETRY_RECORD: StructType = StructType(
    [
        StructField("device_id", StringType()),
        StructField("seq", LongType()),
        StructField("device_time", StringType()),
        StructField("received_at", StringType()),
        *[StructField(name, DoubleType()) for name in _MEASURES],
        StructField("firmware", StringType()),
        StructField("site", StringType()),
        StructField("mqtt_topic", StringType()),
    ]
)

SILVER_TELEMETRY: StructType = StructType(
    [
        StructField("device_id", StringType(), False),
        StructField("seq", LongType(), False),
        StructField("device_time", TimestampType(), False),
        StructField("received_at", TimestampType()),
        StructField("event_date", DateType()),
        *[StructField(name, DoubleType()) for name in _MEASURES],
        StructField("firmware", StringType()),
        StructField("site", StringType()),
        StructField("mqtt_topic", StringType()),
        StructField("source_partition", IntegerType()),
        StructField("source_offset", LongType()),
        StructField("ingested_at", TimestampType()),
    ]
)

TELEMETRY_QUARANTINE: StructType = StructType(
    [
        StructField("value", StringType()),
        StructField("reason", StringType(), False),
        StructField("device_id", StringType()),
        StructField("seq", LongType()),
        StructField("source_partition", IntegerType()),
        StructField("source_offset", LongType()),
        StructField("batch_id", LongType(), False),
        StructField("quarantined_at", TimestampType(), False),
    ]
)

DEVICE_OFFLINE: StructType = StructType(
    [
        StructField("device_id", StringType(), False),
        StructField("offline_from", TimestampType(), False),
        StructField("online_at", TimestampType(), False),
        StructField("gap_seconds", DoubleType(), False),
        StructField("expected_interval_s", DoubleType(), False),
        StructField("detected_at", TimestampType(), False),
    ]
)


@dataclass(frozen=True)
class TelemetryTables:
    """Where the clean-telemetry job reads and writes."""

    bronze: str
    silver: str
    quarantine: str
    reconciliation: str
    offline: str
    checkpoint: str

    @classmethod
    def from_settings(cls, settings: Settings, bronze: str = "iot_telemetry") -> TelemetryTables:
        return cls(
            bronze=settings.table_path("bronze", bronze),
            silver=settings.table_path("silver", "telemetry"),
            quarantine=settings.table_path("silver", "telemetry_quarantine"),
            reconciliation=settings.table_path("silver", "telemetry_reconciliation"),
            offline=settings.table_path("silver", "device_offline"),
            checkpoint=settings.checkpoint_path("silver_telemetry"),
        )


def parse_telemetry(bronze: DataFrame) -> DataFrame:
    """Parse bronze payloads into silver's typed columns plus ``reason`` (null = valid) and ``value``."""
    missing = {"value", "partition", "offset", "ingested_at"} - set(bronze.columns)
    if missing:
        raise DataError(f"parse_telemetry needs bronze columns; missing {sorted(missing)}")
    p = F.from_json(F.col("value"), TELEMETRY_RECORD)
    parsed = bronze.select(
        F.col("value"),
        F.col("partition").cast("int").alias("source_partition"),
        F.col("offset").cast("long").alias("source_offset"),
        F.col("ingested_at"),
        p.alias("p"),
    )
    r = F.col("p")
    device_time = F.try_to_timestamp(r["device_time"])
    reason: Column = (
        F.when(F.json_object_keys(F.col("value")).isNull(), F.lit("malformed_json"))
        .when(F.coalesce(F.trim(r["device_id"]), F.lit("")) == "", F.lit("missing_device_id"))
        .when(r["seq"].isNull() | (r["seq"] < 0), F.lit("missing_seq"))
        .when(device_time.isNull(), F.lit("invalid_device_time"))
    )
    return parsed.select(
        F.col("value"),
        reason.alias("reason"),
        r["device_id"].alias("device_id"),
        r["seq"].alias("seq"),
        device_time.alias("device_time"),
        F.try_to_timestamp(r["received_at"]).alias("received_at"),
        F.to_date(device_time).alias("event_date"),
        *[r[name].alias(name) for name in _MEASURES],
        r["firmware"].alias("firmware"),
        r["site"].alias("site"),
        r["mqtt_topic"].alias("mqtt_topic"),
        F.col("source_partition"),
        F.col("source_offset"),
        F.col("ingested_at"),
    )


def mark_duplicates_and_late(parsed: DataFrame, silver: DataFrame, delay: str) -> DataFrame:
    """Add ``outcome`` (``insert``, ``duplicate`` or ``quarantine``), setting ``reason`` for late readings.

    Args:
        parsed: the output of :func:`parse_telemetry` for one micro-batch.
        silver: silver as it is (at least ``device_id``, ``seq``, ``device_time``).
        delay: the allowed lateness per device, e.g. ``"15 minutes"``.
    """
    valid = F.col("reason").isNull()
    first_seen = Window.partitionBy("device_id", "seq").orderBy("source_partition", "source_offset")
    before = (
        Window.partitionBy("device_id")
        .orderBy("source_partition", "source_offset")
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    known = silver.select(F.col("device_id").alias("_k_device"), F.col("seq").alias("_k_seq")).distinct()
    carried = silver.groupBy(F.col("device_id").alias("_c_device")).agg(
        F.max("device_time").alias("_carried_max")
    )
    marked = (
        parsed.withColumn("_rank", F.when(valid, F.row_number().over(first_seen)))
        .withColumn("_seen_max", F.max(F.when(valid, F.col("device_time"))).over(before))
        .join(known, (F.col("device_id") == F.col("_k_device")) & (F.col("seq") == F.col("_k_seq")), "left")
        .join(carried, F.col("device_id") == F.col("_c_device"), "left")
    )
    newest_before = F.greatest(F.col("_seen_max"), F.col("_carried_max"))
    is_late = F.col("device_time") < newest_before - F.expr(f"INTERVAL {delay}")
    duplicate = valid & ((F.col("_rank") > 1) | F.col("_k_device").isNotNull())
    late = valid & ~duplicate & F.coalesce(is_late, F.lit(False))
    return marked.select(
        *[c for c in parsed.columns if c != "reason"],
        F.when(late, F.lit("late_beyond_watermark")).otherwise(F.col("reason")).alias("reason"),
        F.when(duplicate, F.lit("duplicate"))
        .when(valid & ~late, F.lit("insert"))
        .otherwise(F.lit("quarantine"))
        .alias("outcome"),
    )


def offline_intervals(
    silver: DataFrame, *, gap_factor: float = DEFAULT_GAP_FACTOR, expected_interval_s: float | None = None
) -> DataFrame:
    """Device offline intervals: consecutive readings (in device time) further apart than expected.

    Args:
        silver: silver telemetry (``device_id``, ``seq``, ``device_time``).
        gap_factor: a gap longer than this many expected intervals is an offline interval.
        expected_interval_s: the reporting interval of every device; None → each device's median gap.

    Returns:
        :data:`DEVICE_OFFLINE` rows, one per interval.
    """
    if gap_factor <= 1:
        raise ConfigError(f"gap_factor must be greater than 1 (got {gap_factor})")
    order = Window.partitionBy("device_id").orderBy("device_time", "seq")
    gaps = (
        silver.select("device_id", "seq", "device_time")
        .withColumn("offline_from", F.lag("device_time").over(order))
        .where(F.col("offline_from").isNotNull())
        .withColumn(
            "gap_seconds",
            (F.unix_micros(F.col("device_time")) - F.unix_micros(F.col("offline_from"))) / F.lit(1_000_000.0),
        )
    )
    if expected_interval_s is not None:
        if expected_interval_s <= 0:
            raise ConfigError(f"expected_interval_s must be positive (got {expected_interval_s})")
        expected = gaps.withColumn("expected_interval_s", F.lit(float(expected_interval_s)))
    else:
        medians = gaps.groupBy(F.col("device_id").alias("_m_device")).agg(
            F.percentile_approx("gap_seconds", 0.5).alias("expected_interval_s")
        )
        expected = gaps.join(medians, F.col("device_id") == F.col("_m_device"))
    return expected.where(
        (F.col("expected_interval_s") > 0)
        & (F.col("gap_seconds") > F.col("expected_interval_s") * F.lit(float(gap_factor)))
    ).select(
        F.col("device_id"),
        F.col("offline_from"),
        F.col("device_time").alias("online_at"),
        F.col("gap_seconds").cast("double").alias("gap_seconds"),
        F.col("expected_interval_s").cast("double").alias("expected_interval_s"),
        F.current_timestamp().alias("detected_at"),
    )


def process_batch(
    batch: DataFrame,
    batch_id: int,
    *,
    tables: TelemetryTables,
    app_id: str,
    run_id: str,
    delay: str,
    settings: Settings | None = None,
) -> None:
    """Handle one micro-batch of bronze rows (called by ``foreachBatch``; safe to replay).

    With ``settings`` the ``silver.telemetry`` expectation suite runs on the rows about to be inserted.
    """
    spark = batch.sparkSession
    silver = spark.read.format("delta").load(tables.silver)
    marked = mark_duplicates_and_late(parse_telemetry(batch), silver, delay)
    # Materialise once: the writes below change silver, which the duplicate check reads lazily.
    marked = marked.localCheckpoint(eager=True)
    stats = write_outcomes(
        marked,
        batch_id,
        run_id=run_id,
        app_id=app_id,
        silver=tables.silver,
        silver_columns=[field.name for field in SILVER_TELEMETRY.fields],
        quarantine=tables.quarantine,
        quarantine_columns=["value", "reason", "device_id", "seq", "source_partition", "source_offset"],
        reconciliation=tables.reconciliation,
        settings=settings,
        table="silver.telemetry" if settings is not None else None,
    )
    log.info("silver telemetry batch %d: %s", batch_id, stats.asDict())


@dataclass(frozen=True)
class TelemetryReport:
    """What one run of the clean-telemetry job did, plus the table totals after it."""

    run_id: str
    batches: int
    bronze_rows: int
    inserted: int
    quarantined: int
    duplicates: int
    late: int
    offline_intervals: int
    totals: Reconciliation
    dropped: int = 0


def reconcile(spark: SparkSession, tables: TelemetryTables) -> Reconciliation:
    """Bronze, silver, quarantine, duplicate and dropped totals from the tables themselves (one query)."""
    return reconcile_totals(spark, tables)


def clean_telemetry(
    spark: SparkSession,
    settings: Settings,
    *,
    tables: TelemetryTables | None = None,
    watermark: str = DEFAULT_WATERMARK,
    gap_factor: float = DEFAULT_GAP_FACTOR,
    expected_interval_s: float | None = None,
    run_id: str | None = None,
    quality: bool = True,
) -> TelemetryReport:
    """Bring silver telemetry up to date with bronze (``availableNow``), then rebuild the offline table.

    Args:
        spark: a session from :func:`lakehouse.spark.get_spark`.
        settings: the environment (paths).
        tables: override the table locations (tests).
        watermark: the allowed lateness per device, e.g. ``"15 minutes"``.
        gap_factor: a gap longer than this many expected intervals is an offline interval.
        expected_interval_s: the devices' reporting interval; None → each device's median gap.
        run_id: the run (default a new UUID); validation results and quarantine rows carry it.
        quality: run the ``silver.telemetry`` expectation suite on every micro-batch.

    Returns:
        This run's counts and the reconciled table totals.

    Raises:
        QualityError: a ``fail`` rule of the suite failed (results persisted, the batch not written).
        DataError: the streaming query failed.
    """
    tables = tables or TelemetryTables.from_settings(settings)
    ensure_table(spark, tables.bronze, BRONZE_EVENTS, partition_by=["ingest_date"])
    ensure_table(spark, tables.silver, SILVER_TELEMETRY, partition_by=["event_date"])
    ensure_table(spark, tables.quarantine, with_quality_fields(TELEMETRY_QUARANTINE))
    ensure_table(spark, tables.reconciliation, RECONCILIATION)
    ensure_table(spark, tables.offline, DEVICE_OFFLINE)
    add_missing_columns(spark, tables.quarantine, with_quality_fields(TELEMETRY_QUARANTINE))
    add_missing_columns(spark, tables.reconciliation, RECONCILIATION)
    run_id = run_id or str(uuid.uuid4())
    app_id = txn_app_id(tables.checkpoint, "silver-telemetry")
    checked_by = settings if quality else None

    def handle(batch: DataFrame, batch_id: int) -> None:
        process_batch(
            batch, batch_id, tables=tables, app_id=app_id, run_id=run_id, delay=watermark, settings=checked_by
        )

    drain_bronze(spark, tables, handle, f"silver_telemetry_{settings.env_name}")
    silver = spark.read.format("delta").load(tables.silver)
    offline = offline_intervals(silver, gap_factor=gap_factor, expected_interval_s=expected_interval_s)
    offline.write.format("delta").mode("overwrite").save(tables.offline)
    return TelemetryReport(
        run_id=run_id,
        **run_counts(spark, tables.reconciliation, run_id),
        offline_intervals=spark.read.format("delta").load(tables.offline).count(),
        totals=reconcile(spark, tables),
    )
