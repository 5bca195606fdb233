"""Bronze clickstream → silver events: parse, type, validate, deduplicate, bound lateness, quarantine.

Every bronze row ends in exactly one place, so the counts reconcile::

    bronze rows = silver rows + quarantined rows + duplicates removed + rows dropped by quality rules

The job streams bronze (Delta) with ``availableNow`` and handles each micro-batch in ``foreachBatch``:

1. classify each payload; the first rule it breaks is its quarantine ``reason``;
2. drop re-deliveries of an event already in silver or earlier in the batch (counted, not kept twice);
3. bound lateness with a watermark: an event older than (the newest event time seen before it, in its
   Kafka partition or in silver) minus the allowed delay is quarantined as ``late_beyond_watermark``;
4. run the ``silver.events`` expectation suite on the new events: rows failing a ``quarantine`` rule join
   the quarantine, rows failing a ``drop`` rule are counted and removed, a failed ``fail`` rule stops the job
   with :class:`~lakehouse.quality.QualityError`;
5. append new events to silver and the rest to ``events_quarantine``, both as idempotent Delta writes
   (``txnAppId``/``txnVersion``), so a replayed micro-batch is never written twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse.clickstream import (
    EVENT_TYPES,
    QUARANTINE,
    RAW_EVENT,
    SILVER_EVENTS,
    SUPPORTED_SCHEMA_VERSIONS,
)
from lakehouse.config import Settings
from lakehouse.errors import DataError
from lakehouse.privacy.tokenize import token_column
from lakehouse.silver.batches import (
    RECONCILIATION,
    Reconciliation,
    add_missing_columns,
    drain_bronze,
    first_row,
    reconcile_totals,
    run_counts,
    txn_app_id,
    with_quality_fields,
    write_outcomes,
)
from lakehouse.tables import ensure_table

log = logging.getLogger(__name__)

# Epoch-millisecond bounds of a plausible client clock (2000-01-01 .. 2100-01-01).
_MIN_TS, _MAX_TS = 946_684_800_000, 4_102_444_800_000


@dataclass(frozen=True)
class CleanTables:
    """Where the clean-events job reads and writes."""

    bronze: str
    silver: str
    quarantine: str
    reconciliation: str
    checkpoint: str

    @classmethod
    def from_settings(cls, settings: Settings) -> CleanTables:
        return cls(
            bronze=settings.table_path("bronze", "clickstream"),
            silver=settings.table_path("silver", "events"),
            quarantine=settings.table_path("silver", "events_quarantine"),
            reconciliation=settings.table_path("silver", "events_reconciliation"),
            checkpoint=settings.checkpoint_path("silver_events"),
        )


def _reason(parsed: Column, value: Column, event_time: Column, revenue: Column, currency: Column) -> Column:
    """The first rule a payload breaks (null when it breaks none)."""
    version = parsed["schema_version"]
    return (
        F.when(F.json_object_keys(value).isNull(), F.lit("malformed_json"))
        .when(
            version.isNull() | ~version.isin(*SUPPORTED_SCHEMA_VERSIONS), F.lit("unsupported_schema_version")
        )
        .when(F.coalesce(F.trim(parsed["event_id"]), F.lit("")) == "", F.lit("missing_event_id"))
        .when(F.coalesce(F.trim(parsed["user_id"]), F.lit("")) == "", F.lit("missing_user_id"))
        .when(
            parsed["event_type"].isNull() | ~parsed["event_type"].isin(*EVENT_TYPES),
            F.lit("invalid_event_type"),
        )
        .when(event_time.isNull(), F.lit("invalid_timestamp"))
        .when(revenue < 0, F.lit("negative_revenue"))
        .when((parsed["event_type"] == "purchase") & revenue.isNull(), F.lit("missing_revenue"))
        .when((parsed["event_type"] == "purchase") & currency.isNull(), F.lit("missing_currency"))
    )


def _default_key() -> str:
    from lakehouse.config import load_settings

    return load_settings().privacy.tokenization_key


def classify(bronze: DataFrame, *, tokenization_key: str | None = None) -> DataFrame:
    """Parse bronze payloads into silver's typed columns plus ``reason`` (null = valid) and ``value``.

    Both payload versions are normalised: v1 ``ts`` (epoch ms) and v2 ``event_time`` (ISO-8601) become
    ``event_time``; v1 ``revenue``/``currency`` and v2 ``amount`` become ``revenue``/``currency``.
    ``client_ip`` is PII: it leaves as its HMAC token (:func:`lakehouse.privacy.tokenize.token_column`,
    as the ``silver.events`` contract says), never in clear.

    Args:
        bronze: bronze clickstream rows (``value``, ``partition``, ``offset``, ``ingested_at``).
        tokenization_key: ``settings.privacy.tokenization_key`` (default: from the current environment).
    """
    missing = {"value", "partition", "offset", "ingested_at"} - set(bronze.columns)
    if missing:
        raise DataError(f"classify needs bronze columns; missing {sorted(missing)}")
    key = tokenization_key if tokenization_key is not None else _default_key()
    p = F.from_json(F.col("value"), RAW_EVENT)
    ts = p["ts"]
    ts_ok = ts.between(_MIN_TS, _MAX_TS)
    event_time = F.when(p["schema_version"] == 1, F.when(ts_ok, F.timestamp_millis(F.when(ts_ok, ts))))
    event_time = event_time.when(p["schema_version"] == 2, F.try_to_timestamp(p["event_time"]))
    revenue = F.coalesce(p["amount"]["value"], p["revenue"])
    currency = F.coalesce(p["amount"]["currency"], p["currency"])
    parsed = bronze.select(
        F.col("value"),
        F.col("partition").cast("int").alias("source_partition"),
        F.col("offset").cast("long").alias("source_offset"),
        F.col("ingested_at"),
        p.alias("p"),
        event_time.alias("event_time"),
        revenue.alias("revenue"),
        F.upper(currency).alias("currency"),
    )
    p = F.col("p")
    reason = _reason(p, F.col("value"), F.col("event_time"), F.col("revenue"), F.col("currency"))
    return parsed.select(
        F.col("value"),
        reason.alias("reason"),
        p["event_id"].alias("event_id"),
        p["event_type"].alias("event_type"),
        F.col("event_time"),
        F.to_date("event_time").alias("event_date"),
        p["user_id"].alias("user_id"),
        p["session_id"].alias("client_session_id"),
        p["platform"].alias("platform"),
        p["device"]["type"].alias("device_type"),
        p["device"]["os"].alias("os"),
        p["device"]["app_version"].alias("app_version"),
        F.upper(p["country"]).alias("country"),
        p["channel"].alias("channel"),
        p["page"].alias("page"),
        p["product_id"].alias("product_id"),
        p["search_query"].alias("search_query"),
        p["quantity"].cast("int").alias("quantity"),
        p["price"].alias("price"),
        F.col("revenue"),
        F.col("currency"),
        p["order_id"].alias("order_id"),
        p["schema_version"].cast("int").alias("schema_version"),
        F.col("source_partition"),
        F.col("source_offset"),
        F.col("ingested_at"),
        token_column(p["client_ip"], key).alias("client_ip"),
    )


def mark_duplicates_and_late(
    classified: DataFrame, known_ids: DataFrame, carried_max: object, delay: str
) -> DataFrame:
    """Add ``outcome``: ``insert``, ``duplicate`` or ``quarantine`` (setting ``reason`` for late events).

    Args:
        classified: the output of :func:`classify` for one micro-batch.
        known_ids: one column ``event_id`` of events already in silver.
        carried_max: the newest event time already in silver (None when silver is empty).
        delay: the allowed lateness, e.g. ``"1 hour"``.
    """
    valid = F.col("reason").isNull()
    first_seen = Window.partitionBy("event_id").orderBy("source_partition", "source_offset")
    before = (
        Window.partitionBy("source_partition")
        .orderBy("source_offset")
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    known = known_ids.select(F.col("event_id").alias("_known_id")).distinct()
    marked = (
        classified.withColumn("_rank", F.when(valid, F.row_number().over(first_seen)))
        .withColumn("_seen_max", F.max(F.when(valid, F.col("event_time"))).over(before))
        .join(known, F.col("event_id") == F.col("_known_id"), "left")
    )
    newest_before = F.greatest(F.col("_seen_max"), F.lit(carried_max).cast("timestamp"))
    is_late = F.col("event_time") < newest_before - F.expr(f"INTERVAL {delay}")
    duplicate = valid & ((F.col("_rank") > 1) | F.col("_known_id").isNotNull())
    late = valid & ~duplicate & F.coalesce(is_late, F.lit(False))
    return marked.select(
        *[c for c in classified.columns if c != "reason"],
        F.when(late, F.lit("late_beyond_watermark")).otherwise(F.col("reason")).alias("reason"),
        F.when(duplicate, F.lit("duplicate"))
        .when(valid & ~late, F.lit("insert"))
        .otherwise(F.lit("quarantine"))
        .alias("outcome"),
    )


def process_batch(
    batch: DataFrame,
    batch_id: int,
    *,
    tables: CleanTables,
    app_id: str,
    run_id: str,
    delay: str,
    settings: Settings | None = None,
) -> None:
    """Handle one micro-batch of bronze rows (called by ``foreachBatch``; safe to replay).

    With ``settings`` the ``silver.events`` expectation suite runs on the rows about to be inserted.
    """
    spark = batch.sparkSession
    silver = spark.read.format("delta").load(tables.silver)
    carried_max = first_row(silver.agg(F.max("event_time")))[0]
    marked = mark_duplicates_and_late(classify(batch), silver.select("event_id"), carried_max, delay)
    # Materialise once: the writes below change silver, which the duplicate check reads lazily.
    marked = marked.localCheckpoint(eager=True)
    stats = write_outcomes(
        marked,
        batch_id,
        run_id=run_id,
        app_id=app_id,
        silver=tables.silver,
        silver_columns=[field.name for field in SILVER_EVENTS.fields],
        quarantine=tables.quarantine,
        quarantine_columns=["value", "reason", "event_id", "source_partition", "source_offset"],
        reconciliation=tables.reconciliation,
        settings=settings,
        table="silver.events" if settings is not None else None,
    )
    log.info("silver batch %d: %s", batch_id, stats.asDict())


@dataclass(frozen=True)
class CleanReport:
    """What one run of the clean-events job did, plus the table totals after it."""

    run_id: str
    batches: int
    bronze_rows: int
    inserted: int
    quarantined: int
    duplicates: int
    late: int
    totals: Reconciliation
    dropped: int = 0


def reconcile(spark: SparkSession, tables: CleanTables) -> Reconciliation:
    """Bronze, silver, quarantine, duplicate and dropped totals from the tables themselves (one query)."""
    return reconcile_totals(spark, tables)


def clean_events(
    spark: SparkSession,
    settings: Settings,
    *,
    tables: CleanTables | None = None,
    watermark: str | None = None,
    run_id: str | None = None,
    quality: bool = True,
) -> CleanReport:
    """Bring silver up to date with bronze (``availableNow``) and return what happened.

    Args:
        spark: a session from :func:`lakehouse.spark.get_spark`.
        settings: the environment (paths, default watermark).
        tables: override the table locations (tests).
        watermark: the allowed lateness, e.g. ``"1 hour"``; default ``settings.streaming.watermark``.
        run_id: the run (default a new UUID); validation results and quarantine rows carry it.
        quality: run the ``silver.events`` expectation suite on every micro-batch.

    Returns:
        This run's counts and the reconciled table totals.

    Raises:
        QualityError: a ``fail`` rule failed (results persisted, the batch not written).
        DataError: the stream failed otherwise.
    """
    tables = tables or CleanTables.from_settings(settings)
    delay = watermark or settings.streaming.watermark
    ensure_table(spark, tables.silver, SILVER_EVENTS, partition_by=["event_date"])
    ensure_table(spark, tables.quarantine, with_quality_fields(QUARANTINE))
    ensure_table(spark, tables.reconciliation, RECONCILIATION)
    add_missing_columns(spark, tables.silver, SILVER_EVENTS)  # e.g. client_ip, added with the PII tokens
    add_missing_columns(spark, tables.quarantine, with_quality_fields(QUARANTINE))
    add_missing_columns(spark, tables.reconciliation, RECONCILIATION)
    run = run_id or str(uuid.uuid4())
    app_id = txn_app_id(tables.checkpoint, "silver-events")
    checked_by = settings if quality else None

    def handle(batch: DataFrame, batch_id: int) -> None:
        process_batch(
            batch, batch_id, tables=tables, app_id=app_id, run_id=run, delay=delay, settings=checked_by
        )

    drain_bronze(spark, tables, handle, f"silver_events_{settings.env_name}")
    return CleanReport(
        run_id=run, totals=reconcile(spark, tables), **run_counts(spark, tables.reconciliation, run)
    )
