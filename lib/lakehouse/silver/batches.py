"""What every silver micro-batch job shares: split marked rows by outcome, write each idempotently, audit it.

A job marks each bronze row of a micro-batch with ``outcome`` (``insert``, ``duplicate`` or
``quarantine``) and ``reason``; :func:`write_outcomes` then appends the inserts to silver, the quarantined
rows (raw payload and reason) to the quarantine table and one audit row to the reconciliation table — all
three with Delta's ``txnAppId``/``txnVersion``, so a replayed micro-batch is never written twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from lakehouse.errors import DataError

RECONCILIATION: StructType = StructType(
    [
        StructField("run_id", StringType(), False),
        StructField("batch_id", LongType(), False),
        StructField("bronze_rows", LongType(), False),
        StructField("inserted", LongType(), False),
        StructField("quarantined", LongType(), False),
        StructField("duplicates", LongType(), False),
        StructField("late", LongType(), False),
        StructField("processed_at", TimestampType(), False),
    ]
)
_COUNTS = ("bronze_rows", "inserted", "quarantined", "duplicates", "late")


def first_row(frame: DataFrame) -> Row:
    """The single row of an aggregate (which always has one)."""
    row = frame.first()
    if row is None:
        raise DataError("an aggregate returned no row")
    return row


def txn_app_id(checkpoint: str, prefix: str) -> str:
    """A stable id for idempotent writes, born with the checkpoint (a new checkpoint gets a new id)."""
    marker = Path(checkpoint) / "lakehouse_txn_app_id"
    marker.parent.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(f"{prefix}-{uuid.uuid4()}")
    return marker.read_text().strip()


def write_outcomes(
    marked: DataFrame,
    batch_id: int,
    *,
    run_id: str,
    app_id: str,
    silver: str,
    silver_columns: Sequence[str],
    quarantine: str,
    quarantine_columns: Sequence[str],
    reconciliation: str,
) -> Row:
    """Write one marked micro-batch to silver, quarantine and the reconciliation audit; return its counts.

    Args:
        marked: rows with ``outcome`` and ``reason`` (and the columns named below), already materialised
            (``localCheckpoint``) so that the writes cannot change what the marking read.
        batch_id: the micro-batch id (the Delta ``txnVersion``).
        run_id: the job run, recorded in the audit row.
        app_id: the Delta ``txnAppId`` (see :func:`txn_app_id`).
        silver, quarantine, reconciliation: the table paths.
        silver_columns: the silver table's columns, in order.
        quarantine_columns: the columns kept with each quarantined row (before batch id and time).

    Returns:
        The counts: bronze_rows, inserted, quarantined, duplicates, late.
    """
    txn = {"txnAppId": app_id, "txnVersion": str(batch_id)}
    outcome = F.col("outcome")
    stats = first_row(
        marked.agg(
            F.count(F.lit(1)).alias("bronze_rows"),
            F.count(F.when(outcome == "insert", 1)).alias("inserted"),
            F.count(F.when(outcome == "quarantine", 1)).alias("quarantined"),
            F.count(F.when(outcome == "duplicate", 1)).alias("duplicates"),
            F.count(F.when(F.col("reason") == "late_beyond_watermark", 1)).alias("late"),
        )
    )
    inserts = marked.where(outcome == "insert").select(*silver_columns)
    inserts.write.format("delta").mode("append").options(**txn).save(silver)
    quarantined = marked.where(outcome == "quarantine").select(
        *quarantine_columns,
        F.lit(batch_id).cast("long").alias("batch_id"),
        F.current_timestamp().alias("quarantined_at"),
    )
    quarantined.write.format("delta").mode("append").options(**txn).save(quarantine)
    audit_row = (run_id, batch_id, *(int(stats[name]) for name in _COUNTS), datetime.now(UTC))
    audit = marked.sparkSession.createDataFrame([audit_row], RECONCILIATION)
    audit.write.format("delta").mode("append").options(**txn).save(reconciliation)
    return stats
