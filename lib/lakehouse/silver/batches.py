"""What every silver micro-batch job shares: split marked rows by outcome, write each idempotently, audit it.

A job marks each bronze row of a micro-batch with ``outcome`` (``insert``, ``duplicate`` or
``quarantine``) and ``reason``; :func:`write_outcomes` then runs the silver table's expectation suite on the
rows about to be inserted (failing rows are quarantined or dropped by each rule's action, a failed ``fail``
rule stops the batch), appends the inserts to silver, the quarantined rows (raw payload, reason and failed
rules) to the quarantine table and one audit row to the reconciliation table — all three with Delta's
``txnAppId``/``txnVersion``, so a replayed micro-batch is never written twice. :func:`drain_bronze` runs a
job's batch handler over everything new in bronze; :func:`run_counts` and :func:`reconcile_totals` say what
the run did and whether the tables still balance.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, Self, TypedDict

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.query import StreamingQuery
from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType, TimestampType

from lakehouse.config import Settings
from lakehouse.errors import DataError
from lakehouse.tables import delta_ref

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
        # Rows removed by a ``drop`` quality rule (null in audit rows written before quality checks).
        StructField("dropped", LongType(), True),
    ]
)
_COUNTS = ("bronze_rows", "inserted", "quarantined", "duplicates", "late", "dropped")
# Appended to every quarantine table: all rules a row broke and the run that set it aside.
QUARANTINE_QUALITY_FIELDS: tuple[StructField, ...] = (
    StructField("failed_rules", ArrayType(StringType(), True), True),
    StructField("run_id", StringType(), True),
)


def with_quality_fields(schema: StructType) -> StructType:
    """A quarantine schema extended with ``failed_rules`` and ``run_id`` (unless it has them)."""
    names = set(schema.fieldNames())
    return StructType([*schema.fields, *(f for f in QUARANTINE_QUALITY_FIELDS if f.name not in names)])


def await_stream(query: StreamingQuery, what: str) -> None:
    """Wait for an ``availableNow`` query; re-raise a quality stop as :class:`QualityError`.

    A ``QualityError`` raised inside ``foreachBatch`` reaches the client as the text of a streaming
    exception; its message is recovered so the caller sees which rule stopped the job.

    Raises:
        QualityError: a ``fail`` rule stopped the stream.
        DataError: the stream failed otherwise.
    """
    from lakehouse.quality.validate import QualityError

    try:
        query.awaitTermination()
        error: BaseException | None = query.exception()
    except Exception as exc:  # the Connect client raises StreamingQueryException here
        error = exc
    if error is None:
        return
    message = str(error)
    marker = message.find("QualityError: ")
    if marker >= 0:
        detail = message[marker + len("QualityError: ") :].splitlines()[0]
        raise QualityError(f"{what} stopped by its quality suite: {detail}") from error
    if "No space left on device" in message:  # said first: the JVM's trace buries it
        raise DataError(
            f"{what} failed: the disk is full (No space left on device). The batch did not complete and "
            f"is run again whole by the next build once there is space. {message}"
        ) from error
    raise DataError(f"{what} failed: {message}") from error


def add_missing_columns(spark: SparkSession, path: str, schema: StructType) -> None:
    """Evolve a table written before quality checks (e.g. no ``dropped``/``failed_rules``) to ``schema``."""
    existing = set(spark.read.format("delta").load(path).columns)
    missing = [f for f in schema.fields if f.name not in existing]
    if missing:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE {delta_ref(path)} ADD COLUMNS ({columns})")


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
    settings: Settings | None = None,
    table: str | None = None,
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
        quarantine_columns: the columns kept with each quarantined row (before batch id and time);
            ``reason`` among them is the first rule broken, ``failed_rules`` (all of them) and ``run_id``
            are added.
        settings, table: run ``table``'s expectation suite (e.g. ``"silver.events"``) on the inserts; rows
            are routed by each failed rule's action. Without them no suite runs.

    Returns:
        The counts: bronze_rows, inserted, quarantined, duplicates, late, dropped.

    Raises:
        QualityError: a ``fail`` rule of the suite failed (results are persisted, nothing of the batch is
            written).
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
    counts = {name: int(stats[name]) for name in _COUNTS if name != "dropped"}
    counts["dropped"] = 0
    tail = [
        F.lit(batch_id).cast("long").alias("batch_id"),
        F.current_timestamp().alias("quarantined_at"),
        F.lit(run_id).alias("run_id"),
    ]
    parse_quarantine = marked.where(outcome == "quarantine").select(
        *quarantine_columns, F.array(F.col("reason")).alias("failed_rules"), *tail
    )
    extra = [c for c in quarantine_columns if c not in silver_columns and c != "reason"]
    inserts = marked.where(outcome == "insert").select(*silver_columns, *extra)
    quarantined = parse_quarantine
    if settings is not None and table is not None and counts["inserted"] > 0:
        from lakehouse.quality.validate import check_batch

        # ``marked`` is materialised (see Args), so ids added to its inserts are stable without a checkpoint.
        checked = check_batch(
            inserts,
            table,
            settings=settings,
            run_id=run_id,
            batch_id=batch_id,
            materialised=True,
            rows=counts["inserted"],
        )
        inserts = checked.valid
        if checked.quarantined_count:
            quarantined = parse_quarantine.unionByName(
                checked.quarantined.select(*quarantine_columns, "failed_rules", *tail)
            )
        counts["inserted"] -= checked.quarantined_count + checked.dropped
        counts["quarantined"] += checked.quarantined_count
        counts["dropped"] = checked.dropped
    inserts.select(*silver_columns).write.format("delta").mode("append").options(**txn).save(silver)
    quarantined.write.format("delta").mode("append").options(**txn).option("mergeSchema", "true").save(
        quarantine
    )
    audit_row = (
        run_id,
        batch_id,
        *(counts[name] for name in _COUNTS[:5]),
        datetime.now(UTC),
        counts["dropped"],
    )
    audit = marked.sparkSession.createDataFrame([audit_row], RECONCILIATION)
    audit.write.format("delta").mode("append").options(**txn).option("mergeSchema", "true").save(
        reconciliation
    )
    return Row(**counts)


class ReconciledTables(Protocol):
    """Where a silver micro-batch job reads and writes (its tables' paths)."""

    @property
    def bronze(self) -> str: ...
    @property
    def silver(self) -> str: ...
    @property
    def quarantine(self) -> str: ...
    @property
    def reconciliation(self) -> str: ...


@dataclass(frozen=True)
class Reconciliation:
    """Table totals: bronze rows must equal silver + quarantined + duplicates removed + dropped."""

    bronze_rows: int
    silver_rows: int
    quarantined: int
    duplicates: int
    dropped: int = 0

    @property
    def balanced(self) -> bool:
        return self.bronze_rows == self.silver_rows + self.quarantined + self.duplicates + self.dropped

    def check(self) -> Self:
        """Raise :class:`DataError` unless the counts balance."""
        if not self.balanced:
            raise DataError(
                f"counts do not reconcile: bronze {self.bronze_rows} != silver {self.silver_rows} + "
                f"quarantined {self.quarantined} + duplicates {self.duplicates} + dropped {self.dropped}"
            )
        return self


def reconcile_totals(spark: SparkSession, tables: ReconciledTables) -> Reconciliation:
    """Bronze, silver, quarantine, duplicate and dropped totals from the tables themselves (one query)."""
    audit = delta_ref(tables.reconciliation)
    row = first_row(
        spark.sql(
            f"""
            SELECT (SELECT count(*) FROM {delta_ref(tables.bronze)}) AS bronze_rows,
                   (SELECT count(*) FROM {delta_ref(tables.silver)}) AS silver_rows,
                   (SELECT count(*) FROM {delta_ref(tables.quarantine)}) AS quarantined,
                   (SELECT coalesce(sum(duplicates), 0) FROM {audit}) AS duplicates,
                   (SELECT coalesce(sum(dropped), 0) FROM {audit}) AS dropped
            """
        )
    )
    return Reconciliation(
        bronze_rows=int(row["bronze_rows"]),
        silver_rows=int(row["silver_rows"]),
        quarantined=int(row["quarantined"]),
        duplicates=int(row["duplicates"]),
        dropped=int(row["dropped"]),
    )


class StreamedTables(ReconciledTables, Protocol):
    """A silver job's tables plus the checkpoint of its bronze stream."""

    @property
    def checkpoint(self) -> str: ...


def drain_bronze(
    spark: SparkSession, tables: StreamedTables, handle: Callable[[DataFrame, int], None], name: str
) -> None:
    """Run ``handle`` on every bronze row the job's checkpoint has not seen (``availableNow``) and wait.

    Args:
        spark: the session.
        tables: bronze is read as a Delta stream; the checkpoint remembers how far.
        handle: the ``foreachBatch`` function (a batch and its id; it must be safe to replay).
        name: the query's name, also used in errors.

    Raises:
        QualityError: a ``fail`` rule stopped a micro-batch.
        DataError: the query failed otherwise.
    """
    query = (
        spark.readStream.format("delta")
        .load(tables.bronze)
        .writeStream.foreachBatch(handle)
        .option("checkpointLocation", tables.checkpoint)
        .trigger(availableNow=True)
        .queryName(name)
        .start()
    )
    await_stream(query, name)


class RunCounts(TypedDict):
    """What one run of a silver job did, summed over its micro-batches' audit rows."""

    batches: int
    bronze_rows: int
    inserted: int
    quarantined: int
    duplicates: int
    late: int
    dropped: int


def run_counts(spark: SparkSession, reconciliation: str, run_id: str) -> RunCounts:
    """One run's micro-batch count and its summed per-batch counts (``bronze_rows`` … ``dropped``)."""
    audit = spark.read.format("delta").load(reconciliation).where(F.col("run_id") == run_id)
    row = first_row(
        audit.agg(
            F.count(F.lit(1)).alias("batches"),
            *[F.coalesce(F.sum(name), F.lit(0)).alias(name) for name in _COUNTS],
        )
    )
    return RunCounts(
        batches=int(row["batches"]),
        bronze_rows=int(row["bronze_rows"]),
        inserted=int(row["inserted"]),
        quarantined=int(row["quarantined"]),
        duplicates=int(row["duplicates"]),
        late=int(row["late"]),
        dropped=int(row["dropped"]),
    )
