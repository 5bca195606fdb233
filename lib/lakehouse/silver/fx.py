"""Bronze FX records (raw JSON from the HTTP connector) → silver ``fx_rates``: typed, deduped, quarantined.

Reference data is small (the whole ECB history is ~220,000 rows), so silver is recomputed from bronze on
every run and overwritten: the result is a pure function of bronze, a rerun changes nothing, and there is no
checkpoint to lose. Every bronze row ends in exactly one place::

    bronze rows = silver rows + quarantined rows + duplicates removed

A row is quarantined with the first rule it breaks (``malformed_json``, ``invalid_date``,
``invalid_currency``, ``invalid_rate``, ``non_positive_rate``); among valid rows of one (date, currency) the
most recently fetched wins and the others count as duplicates.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Final

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, DoubleType, StringType, StructField, StructType, TimestampType

from lakehouse.config import Settings
from lakehouse.errors import DataError
from lakehouse.gold.sessions import conform, require_columns
from lakehouse.silver.batches import Reconciliation

log = logging.getLogger(__name__)

SILVER_FX_RATES: Final = StructType(
    [
        StructField("date", DateType(), False),
        StructField("currency", StringType(), False),
        StructField("rate_per_eur", DoubleType(), False),
        StructField("fetched_at", TimestampType()),
        StructField("batch_id", StringType()),
    ]
)

FX_QUARANTINE: Final = StructType(
    [
        StructField("record", StringType()),
        StructField("reason", StringType(), False),
        StructField("dedupe_key", StringType()),
        StructField("batch_id", StringType()),
        StructField("fetched_at", TimestampType()),
    ]
)

# Parse every field as text: a rate that is not a number must reach the rules, not vanish as a null.
_RAW_FX: Final = StructType(
    [
        StructField("date", StringType()),
        StructField("currency", StringType()),
        StructField("rate_per_eur", StringType()),
    ]
)
_BRONZE_COLUMNS: Final = ("record", "dedupe_key", "fetched_at", "batch_id")


@dataclass(frozen=True)
class FxTables:
    """Where the FX jobs read and write."""

    bronze: str
    silver: str
    quarantine: str

    @classmethod
    def from_settings(cls, settings: Settings, bronze: str = "fx_rates") -> FxTables:
        return cls(
            bronze=settings.table_path("bronze", bronze),
            silver=settings.table_path("silver", "fx_rates"),
            quarantine=settings.table_path("silver", "fx_rates_quarantine"),
        )


class FxCleanReport(Reconciliation):
    """Counts of one FX run; they must reconcile (bronze = silver + quarantined + duplicates + dropped)."""


def _reason(record: Column, day: Column, currency: Column, rate: Column) -> Column:
    return (
        F.when(F.json_object_keys(record).isNull(), F.lit("malformed_json"))
        .when(day.isNull(), F.lit("invalid_date"))
        .when(currency.isNull() | ~currency.rlike("^[A-Z]{3}$"), F.lit("invalid_currency"))
        .when(rate.isNull() | F.isnan(rate), F.lit("invalid_rate"))
        .when(rate <= 0, F.lit("non_positive_rate"))
    )


def classify_fx(bronze: DataFrame) -> DataFrame:
    """Parse bronze FX records into typed columns plus ``reason`` (null = valid).

    Args:
        bronze: the HTTP bronze table (``record`` JSON, ``dedupe_key``, ``fetched_at``, ``batch_id``).

    Returns:
        ``date`` (DATE, only ``yyyy-MM-dd``), ``currency`` (upper-cased, trimmed), ``rate_per_eur``
        (DOUBLE), ``reason`` and the bronze columns.

    Raises:
        DataError: a bronze column is missing.
    """
    require_columns(bronze, _BRONZE_COLUMNS, "bronze FX records")
    parsed = F.from_json(F.col("record"), _RAW_FX)
    day_text = F.trim(parsed["date"])
    day = F.when(day_text.rlike(r"^\d{4}-\d{2}-\d{2}$"), F.try_to_date(day_text, "yyyy-MM-dd")).cast("date")
    currency = F.upper(F.trim(parsed["currency"]))
    rate = F.col("_rate_text").try_cast("double")
    typed = bronze.select(
        *_BRONZE_COLUMNS,
        day.alias("date"),
        currency.alias("currency"),
        F.trim(parsed["rate_per_eur"]).alias("_rate_text"),
    ).withColumn("rate_per_eur", rate)
    return typed.select(
        "date",
        "currency",
        "rate_per_eur",
        _reason(F.col("record"), F.col("date"), F.col("currency"), F.col("rate_per_eur")).alias("reason"),
        *_BRONZE_COLUMNS,
    )


def mark_fx(bronze: DataFrame) -> DataFrame:
    """Classify bronze FX records and add ``outcome``: ``insert``, ``duplicate`` or ``quarantine``.

    Among valid rows of one (date, currency) the most recently fetched is the ``insert``; the others are
    ``duplicate``. Rows breaking a rule are ``quarantine`` (with ``reason``).
    """
    classified = classify_fx(bronze)
    valid = F.col("reason").isNull()
    newest_first = Window.partitionBy("date", "currency", valid).orderBy(
        F.col("fetched_at").desc_nulls_last(), F.col("batch_id").desc_nulls_last()
    )
    rank = F.row_number().over(newest_first)
    outcome = (
        F.when(~valid, F.lit("quarantine")).when(rank == 1, F.lit("insert")).otherwise(F.lit("duplicate"))
    )
    return classified.withColumn("outcome", outcome)


def clean_fx(bronze: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Silver rates (:data:`SILVER_FX_RATES`, one row per date and currency) and the quarantine
    (:data:`FX_QUARANTINE`) of bronze FX records."""
    marked = mark_fx(bronze)
    rates = conform(marked.where(F.col("outcome") == "insert"), SILVER_FX_RATES)
    quarantine = conform(marked.where(F.col("outcome") == "quarantine"), FX_QUARANTINE)
    return rates, quarantine


def _overwrite(df: DataFrame, path: str) -> None:
    # Silver is recomputed: replace the table; a schema change is refused (overwriteSchema stays false).
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "false").save(path)


def build_fx_rates(
    spark: SparkSession,
    tables: FxTables,
    *,
    settings: Settings | None = None,
    run_id: str | None = None,
) -> FxCleanReport:
    """Recompute silver ``fx_rates`` and its quarantine from bronze; return the reconciled counts.

    With ``settings`` the ``silver.fx_rates`` expectation suite runs on the rates before the overwrite:
    rows failing a ``quarantine`` rule join the quarantine (``reason`` = first rule broken), ``drop`` rows
    are counted, a failed ``fail`` rule raises before anything is written.

    Raises:
        DataError: bronze is missing (pull the rates first), or the counts do not reconcile.
        QualityError: a ``fail`` rule of the suite failed (results persisted, tables unchanged).
    """
    try:
        bronze = spark.read.format("delta").load(tables.bronze)
    except Exception as exc:  # AnalysisException over Connect and classic alike
        raise DataError(
            f"no bronze FX table at {tables.bronze} ({type(exc).__name__}): "
            "run `lakehouse api pull --source fx_rates` first"
        ) from exc
    # Materialise one classification of one bronze snapshot: the counts and both writes agree on it.
    marked = mark_fx(bronze).localCheckpoint(eager=True)
    counts = marked.groupBy("outcome").count().collect()
    by_outcome = {row["outcome"]: int(row["count"]) for row in counts}
    inserts = marked.where(F.col("outcome") == "insert")
    quarantine = conform(marked.where(F.col("outcome") == "quarantine"), FX_QUARANTINE)
    quarantined, dropped = by_outcome.get("quarantine", 0), 0
    if settings is not None:
        from lakehouse.quality import check_batch

        checked = check_batch(
            inserts.drop("reason", "outcome"),
            "silver.fx_rates",
            settings=settings,
            run_id=run_id or str(uuid.uuid4()),
            batch_id=0,
            materialised=True,
            rows=by_outcome.get("insert", 0),
        )
        inserts = checked.valid
        if checked.quarantined_count:
            quarantine = quarantine.unionByName(conform(checked.quarantined, FX_QUARANTINE))
        quarantined += checked.quarantined_count
        dropped = checked.dropped
    _overwrite(conform(inserts, SILVER_FX_RATES), tables.silver)
    _overwrite(quarantine, tables.quarantine)
    report = FxCleanReport(
        bronze_rows=sum(by_outcome.values()),
        # Counted from the table as written, so a lost or doubled write breaks the reconciliation.
        silver_rows=spark.read.format("delta").load(tables.silver).count(),
        quarantined=quarantined,
        duplicates=by_outcome.get("duplicate", 0),
        dropped=dropped,
    )
    log.info("silver fx_rates: %s", report)
    return report.check()
