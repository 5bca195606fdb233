"""Bronze retail (CDC records, incremental extracts) → silver current state and the customer SCD2 dimension.

**Current state** (``silver/retail_<table>``): one row per primary key with the table's typed columns plus
``_deleted`` (a tombstone), ``_lsn`` (the CDC change LSN; null for extracted rows), ``_source`` and
``_merged_at``. Both paths feed the same table, ordered by the row's ``updated_at`` — the trigger-maintained
version every row carries (see :mod:`lakehouse.sources.postgres`):

* CDC bronze: wal2json records parsed with :data:`CDC_CHANGE`; malformed ones go to
  ``retail_cdc_quarantine`` with the reason; per key the latest ``(commit_lsn, lsn)`` of a micro-batch wins;
  a delete keeps a tombstone, so a re-delivered older insert cannot bring a deleted row back;
* extract bronze: rows upserted by key (a watermark extract cannot see deletes).

The MERGE only writes when the incoming version is newer than the stored one, so re-applying the same bronze
rows — a replayed micro-batch, a CDC re-delivery after a crash — changes nothing. Read the current state with
:func:`current_state` (it leaves out tombstones and the bookkeeping columns).

**dim_customer** (``silver/dim_customer``): SCD Type 2 over name, email, country and segment —
``customer_key`` (a surrogate: a hash of customer id and ``valid_from``, stable across rebuilds),
``valid_from``/``valid_to`` (null while current) and ``is_current``. Versions newer than the current row
close it and open new rows; versions not newer than the current row are ignored (idempotent).
"""

from __future__ import annotations

import logging
import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import Final

from pyspark.sql import Column, DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.privacy.tokenize import tokenize_columns
from lakehouse.silver.batches import add_missing_columns, await_stream
from lakehouse.silver.engine import cdc_value as _field
from lakehouse.silver.engine import lsn_number
from lakehouse.sources.postgres import RETAIL_TABLES, RetailTable
from lakehouse.sources.registry import PostgresTableSource
from lakehouse.tables import delta_ref, ensure_table

log = logging.getLogger(__name__)

_COLUMN = StructType(
    [
        StructField("name", StringType()),
        StructField("type", StringType()),
        StructField("value", StringType()),  # any JSON value, kept as its JSON text
    ]
)
CDC_CHANGE: Final = StructType(
    [
        StructField("action", StringType()),
        StructField("lsn", StringType()),
        StructField("commit_lsn", StringType()),
        StructField("timestamp", StringType()),
        StructField("schema", StringType()),
        StructField("table", StringType()),
        StructField("columns", ArrayType(_COLUMN)),
        StructField("identity", ArrayType(_COLUMN)),
        StructField(
            "pk",
            ArrayType(StructType([StructField("name", StringType()), StructField("type", StringType())])),
        ),
        StructField("slot", StringType()),
    ]
)
QUARANTINE: Final = StructType(
    [
        StructField("value", StringType()),
        StructField("reason", StringType(), False),
        StructField("table", StringType()),
        StructField("lsn", StringType()),
        StructField("source_partition", IntegerType()),
        StructField("source_offset", LongType()),
        StructField("batch_id", LongType()),
        StructField("quarantined_at", TimestampType()),
        # Rows a suite rule quarantined carry every rule they broke; parse rejects carry [reason].
        StructField("failed_rules", ArrayType(StringType(), True), True),
        StructField("run_id", StringType(), True),
    ]
)
MERGE_LOG: Final = StructType(
    [
        StructField("run_id", StringType(), False),
        StructField("feed", StringType(), False),
        StructField("batch_id", LongType(), False),
        StructField("bronze_rows", LongType(), False),
        StructField("changes", LongType(), False),
        StructField("quarantined", LongType(), False),
        StructField("processed_at", TimestampType(), False),
    ]
)
DIM_ATTRIBUTES: Final = ("name", "email", "country", "segment")
# Tokenized in silver (retail_customers, dim_customer) as catalog/silver/*.yaml say: HMAC tokens are
# deterministic, so an email change still changes the token and SCD2 still opens a new version.
CUSTOMER_PII: Final = ("name", "email")
DIM_CUSTOMER: Final = StructType(
    [
        StructField("customer_key", LongType(), False),
        StructField("customer_id", LongType(), False),
        *(StructField(name, StringType()) for name in DIM_ATTRIBUTES),
        StructField("valid_from", TimestampType(), False),
        StructField("valid_to", TimestampType()),
        StructField("is_current", BooleanType(), False),
    ]
)
_META: Final = (
    ("_deleted", "boolean"),
    ("_lsn", "bigint"),
    ("_source", "string"),
    ("_merged_at", "timestamp"),
)
_ACTIONS: Final = ("I", "U", "D")


def current_schema(table: RetailTable) -> StructType:
    """The silver current-state schema of a retail table: its columns plus the bookkeeping columns."""
    schema = StructType.fromDDL(", ".join(f"{name} {kind}" for name, kind in (*table.columns, *_META)))
    if not isinstance(schema, StructType):  # fromDDL of a column list is always a struct
        raise DataError(f"bad schema for {table.name}")
    return schema


@dataclass(frozen=True)
class RetailSilverTables:
    """Where the retail silver jobs write."""

    current: dict[str, str]
    dim_customer: str
    quarantine: str
    merge_log: str
    checkpoints: str
    # HMAC key for the customer PII columns (settings.privacy.tokenization_key); None leaves them in clear,
    # which only tests that build the tables by hand should do.
    tokenization_key: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RetailSilverTables:
        return cls(
            current={name: settings.table_path("silver", f"retail_{name}") for name in RETAIL_TABLES},
            dim_customer=settings.table_path("silver", "dim_customer"),
            quarantine=settings.table_path("silver", "retail_cdc_quarantine"),
            merge_log=settings.table_path("silver", "retail_merge_log"),
            checkpoints=settings.checkpoint_path("silver_retail"),
            tokenization_key=settings.privacy.tokenization_key,
        )

    def protect(self, changes: DataFrame, table: RetailTable) -> DataFrame:
        """Tokenize the customer PII columns (:data:`CUSTOMER_PII`) of customer changes; others pass."""
        if table.name != "customers" or self.tokenization_key is None:
            return changes
        return tokenize_columns(changes, CUSTOMER_PII, self.tokenization_key)

    def ensure(self, spark: SparkSession) -> None:
        for name, path in self.current.items():
            ensure_table(spark, path, current_schema(RETAIL_TABLES[name]))
        ensure_table(spark, self.dim_customer, DIM_CUSTOMER)
        if not ensure_table(spark, self.quarantine, QUARANTINE):
            add_missing_columns(spark, self.quarantine, QUARANTINE)  # a table from before the suites
        ensure_table(spark, self.merge_log, MERGE_LOG)


# --- parsing CDC records ----------------------------------------------------------------------------------


def classify_cdc(bronze: DataFrame) -> DataFrame:
    """Parse CDC bronze rows: wal2json fields, LSNs as numbers, the row (new for I/U, old for D), ``reason``.

    ``reason`` (null = valid) is the first generic rule the record breaks: ``malformed_json``,
    ``unknown_action``, ``invalid_lsn``, ``unknown_table``, ``missing_row``. Per-table rules (key and
    typed values) are applied by :func:`typed_changes`.
    """
    missing = {"value", "partition", "offset"} - set(bronze.columns)
    if missing:
        raise DataError(f"classify_cdc needs bronze columns; missing {sorted(missing)}")
    p = F.from_json(F.col("value"), CDC_CHANGE)
    parsed = bronze.select(
        F.col("value"),
        F.col("partition").cast("int").alias("source_partition"),
        F.col("offset").cast("long").alias("source_offset"),
        p.alias("p"),
    )
    p = F.col("p")
    row = F.when(p["action"] == "D", p["identity"]).otherwise(p["columns"])
    lsn, commit = lsn_number(p["lsn"]), lsn_number(p["commit_lsn"])
    reason = (
        F.when(F.json_object_keys(F.col("value")).isNull() | p.isNull(), F.lit("malformed_json"))
        .when(p["action"].isNull() | ~p["action"].isin(*_ACTIONS), F.lit("unknown_action"))
        .when(lsn.isNull() | commit.isNull(), F.lit("invalid_lsn"))
        .when(p["table"].isNull() | ~p["table"].isin(*RETAIL_TABLES), F.lit("unknown_table"))
        .when(F.coalesce(F.size(row), F.lit(-1)) <= 0, F.lit("missing_row"))
    )
    return parsed.select(
        "value",
        "source_partition",
        "source_offset",
        reason.alias("reason"),
        p["action"].alias("action"),
        p["table"].alias("table"),
        p["lsn"].alias("lsn_text"),
        lsn.alias("lsn"),
        commit.alias("commit_lsn"),
        F.try_to_timestamp(p["timestamp"]).alias("committed_at"),
        row.alias("row"),
    )


def typed_changes(classified: DataFrame, table: RetailTable) -> DataFrame:
    """The valid changes of one table as its typed columns plus ``_deleted``, ``_lsn``, ``_commit_lsn``, and
    ``reason`` for records of the table that break its rules (``missing_key``, ``missing_version``,
    ``invalid_value:<column>``)."""
    rows = classified.where(F.col("reason").isNull() & (F.col("table") == table.name))
    texts = {name: _field(F.col("row"), name) for name, _ in table.columns}
    typed = {name: texts[name].try_cast(kind) for name, kind in table.columns}
    key_missing = reduce(operator.or_, [typed[k].isNull() for k in table.key])
    reason = F.when(key_missing, F.lit("missing_key")).when(
        typed["updated_at"].isNull(), F.lit("missing_version")
    )
    for name, _ in table.columns:
        reason = reason.when(texts[name].isNotNull() & typed[name].isNull(), F.lit(f"invalid_value:{name}"))
    return rows.select(
        "value",
        "source_partition",
        "source_offset",
        "lsn_text",
        *[typed[name].alias(name) for name, _ in table.columns],
        (F.col("action") == "D").alias("_deleted"),
        F.col("lsn").alias("_lsn"),
        F.col("commit_lsn").alias("_commit_lsn"),
        reason.alias("reason"),
    )


def latest_per_key(changes: DataFrame, key: Sequence[str], order: Sequence[str]) -> DataFrame:
    """One row per key: the one that sorts last by ``order`` (e.g. ``["_commit_lsn", "_lsn"]``)."""
    window = Window.partitionBy(*key).orderBy(*[F.col(c).desc_nulls_last() for c in order])
    return changes.withColumn("_rank", F.row_number().over(window)).where("_rank = 1").drop("_rank")


def extract_changes(bronze: DataFrame, table: RetailTable) -> DataFrame:
    """Extract bronze rows of one table as typed versions (``_deleted`` false, no LSN)."""
    missing = set(table.column_names) - set(bronze.columns)
    if missing:
        raise DataError(f"the extract bronze of {table.name} lacks columns {sorted(missing)}")
    return bronze.select(
        *[F.col(name).cast(kind).alias(name) for name, kind in table.columns],
        F.lit(False).alias("_deleted"),
        F.lit(None).cast("bigint").alias("_lsn"),
    )


# --- merging ----------------------------------------------------------------------------------------------


def merge_current(
    spark: SparkSession, changes: DataFrame, path: str, table: RetailTable, source: str
) -> None:
    """MERGE one version per key into the current-state table (newer versions only; deletes → tombstones).

    Args:
        changes: the table's typed columns plus ``_deleted`` and ``_lsn``, at most one row per key.
        path: the current-state Delta table.
        source: ``cdc`` or ``extract`` (kept in ``_source``).
    """
    columns = table.column_names
    staged = changes.select(
        *columns,
        F.col("_deleted").cast("boolean").alias("_deleted"),
        F.col("_lsn").cast("bigint").alias("_lsn"),
        F.lit(source).alias("_source"),
        F.current_timestamp().alias("_merged_at"),
    )
    view = f"retail_changes_{table.name}_{uuid.uuid4().hex[:8]}"
    staged.createOrReplaceTempView(view)
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in table.key)
    try:
        spark.sql(
            f"""
            MERGE INTO {delta_ref(path)} t USING {view} s ON {on}
            WHEN MATCHED AND s._deleted AND NOT t._deleted AND s.updated_at >= t.updated_at THEN
              UPDATE SET t._deleted = true, t._lsn = s._lsn, t._source = s._source,
                         t._merged_at = s._merged_at
            WHEN MATCHED AND NOT s._deleted AND s.updated_at > t.updated_at THEN UPDATE SET *
            WHEN NOT MATCHED THEN INSERT *
            """
        )
    finally:
        spark.catalog.dropTempView(view)


def _attribute_hash(prefix: str = "") -> Column:
    return F.sha2(F.to_json(F.struct(*[F.col(f"{prefix}{a}").alias(a) for a in DIM_ATTRIBUTES])), 256)


def scd2_rows(versions: DataFrame, current: DataFrame) -> DataFrame:
    """The rows to stage for the SCD2 MERGE: new versions (``merge_key`` null) and closings of current rows.

    Args:
        versions: ``customer_id``, the attributes, ``updated_at`` and ``_order`` (a tiebreak, may be null);
            deletes must already be removed.
        current: the dimension's current rows (``is_current``).
    """
    now = current.select(
        "customer_id", F.col("valid_from").alias("_current_from"), _attribute_hash().alias("_current_hash")
    )
    incoming = (
        versions.select("customer_id", *DIM_ATTRIBUTES, "updated_at", "_order")
        .withColumn("_hash", _attribute_hash())
        .dropDuplicates(["customer_id", "updated_at", "_hash"])
        .join(now, "customer_id", "left")
        .where(F.col("_current_from").isNull() | (F.col("updated_at") > F.col("_current_from")))
    )
    by_time = Window.partitionBy("customer_id").orderBy("updated_at", F.col("_order").asc_nulls_first())
    previous = F.coalesce(F.lag("_hash").over(by_time), F.col("_current_hash"))
    changed = incoming.withColumn("_previous", previous).where(
        F.col("_previous").isNull() | (F.col("_hash") != F.col("_previous"))
    )
    by_time = Window.partitionBy("customer_id").orderBy("updated_at")
    opened = changed.select(
        F.lit(None).cast("bigint").alias("merge_key"),
        F.lit(None).cast("timestamp").alias("close_at"),
        F.xxhash64("customer_id", "updated_at").alias("customer_key"),
        "customer_id",
        *DIM_ATTRIBUTES,
        F.col("updated_at").alias("valid_from"),
        F.lead("updated_at").over(by_time).alias("valid_to"),
        F.lead("updated_at").over(by_time).isNull().alias("is_current"),
    )
    closings = (
        changed.where(F.col("_current_from").isNotNull())
        .groupBy("customer_id")
        .agg(F.min("updated_at").alias("close_at"))
        .select(
            F.col("customer_id").alias("merge_key"),
            "close_at",
            F.lit(None).cast("bigint").alias("customer_key"),
            "customer_id",
            *[F.lit(None).cast("string").alias(a) for a in DIM_ATTRIBUTES],
            F.lit(None).cast("timestamp").alias("valid_from"),
            F.lit(None).cast("timestamp").alias("valid_to"),
            F.lit(None).cast("boolean").alias("is_current"),
        )
    )
    return opened.unionByName(closings)


def apply_scd2(spark: SparkSession, versions: DataFrame, path: str) -> None:
    """Bring ``dim_customer`` up to date with customer versions (one MERGE; safe to repeat)."""
    current = spark.read.format("delta").load(path).where("is_current")
    staged = scd2_rows(versions, current)
    view = f"dim_customer_changes_{uuid.uuid4().hex[:8]}"
    staged.createOrReplaceTempView(view)
    columns = [f.name for f in DIM_CUSTOMER.fields]
    try:
        spark.sql(
            f"""
            MERGE INTO {delta_ref(path)} t USING {view} s
            ON t.customer_id = s.merge_key AND t.is_current
            WHEN MATCHED THEN UPDATE SET t.valid_to = s.close_at, t.is_current = false
            WHEN NOT MATCHED AND s.merge_key IS NULL THEN
              INSERT ({", ".join(columns)}) VALUES ({", ".join("s." + c for c in columns)})
            """
        )
    finally:
        spark.catalog.dropTempView(view)


def customer_versions(changes: DataFrame) -> DataFrame:
    """Customer versions for SCD2 from typed customer changes (CDC or extract): deletes left out."""
    return changes.where(~F.col("_deleted")).select(
        "customer_id", *DIM_ATTRIBUTES, "updated_at", F.col("_lsn").alias("_order")
    )


# --- the jobs ---------------------------------------------------------------------------------------------


def _first(frame: DataFrame) -> Row:
    row = frame.first()
    if row is None:
        raise DataError("an aggregate returned no row")
    return row


def _log_batch(
    spark: SparkSession,
    tables: RetailSilverTables,
    run_id: str,
    feed: str,
    batch_id: int,
    counts: tuple[int, int, int],
    txn: dict[str, str],
) -> None:
    audit = spark.createDataFrame([(run_id, feed, batch_id, *counts, datetime.now(UTC))], MERGE_LOG)
    audit.write.format("delta").mode("append").options(**txn).save(tables.merge_log)


def _checked(
    latest: DataFrame, name: str, *, settings: Settings | None, run_id: str, batch_id: int
) -> tuple[DataFrame, DataFrame | None]:
    """Run ``silver.retail_<name>``'s suite on one version per key: (rows to merge, rows to quarantine).

    Without settings (tests that build tables by hand) nothing is validated.
    """
    if settings is None:
        return latest, None
    from lakehouse.quality import check_batch

    checked = check_batch(
        latest.drop("reason"), f"silver.retail_{name}", settings=settings, run_id=run_id, batch_id=batch_id
    )
    table = RETAIL_TABLES[name]
    payload = F.to_json(F.struct(*[F.col(c) for c, _ in table.columns]))
    columns = set(checked.quarantined.columns)

    def kept(column: str, kind: str) -> Column:
        return F.col(column) if column in columns else F.lit(None).cast(kind)

    quarantined = checked.quarantined.select(
        F.coalesce(kept("value", "string"), payload).alias("value"),
        "reason",
        F.lit(name).alias("table"),
        kept("lsn_text", "string").alias("lsn"),
        kept("source_partition", "int").alias("source_partition"),
        kept("source_offset", "long").alias("source_offset"),
        "failed_rules",
    )
    return checked.valid, quarantined


def process_cdc_batch(
    batch: DataFrame,
    batch_id: int,
    *,
    tables: RetailSilverTables,
    run_id: str,
    app_id: str,
    settings: Settings | None = None,
) -> None:
    """Apply one micro-batch of CDC bronze rows (``foreachBatch``; safe to replay).

    With ``settings``, each table's suite runs on the versions about to be merged: quarantined rows join
    the parse rejects in ``retail_cdc_quarantine``, a ``fail`` rule stops the batch.
    """
    spark = batch.sparkSession
    classified = classify_cdc(batch).localCheckpoint(eager=True)
    txn = {"txnAppId": app_id, "txnVersion": str(batch_id)}
    quarantine_columns: list[Column | str] = [
        "value",
        "reason",
        F.col("table"),
        F.col("lsn_text").alias("lsn"),
        "source_partition",
        "source_offset",
    ]
    rejected = [classified.where(F.col("reason").isNotNull()).select(*quarantine_columns)]
    failed: list[DataFrame] = []
    applied = 0
    for name, table in RETAIL_TABLES.items():
        typed = typed_changes(classified, table).localCheckpoint(eager=True)
        rejected.append(
            typed.where(F.col("reason").isNotNull()).select(
                "value",
                "reason",
                F.lit(name).alias("table"),
                F.col("lsn_text").alias("lsn"),
                "source_partition",
                "source_offset",
            )
        )
        valid = tables.protect(typed.where(F.col("reason").isNull()), table)
        latest = latest_per_key(valid, table.key, ["_commit_lsn", "_lsn"])
        latest, failing = _checked(latest, name, settings=settings, run_id=run_id, batch_id=batch_id)
        if failing is not None:
            failed.append(failing)
            valid = valid.join(latest.select(*table.key), list(table.key), "left_semi")
        count = latest.count()
        if count == 0:
            continue
        merge_current(spark, latest, tables.current[name], table, "cdc")
        applied += count
        if name == "customers":
            apply_scd2(spark, customer_versions(valid), tables.dim_customer)
    quarantined = rejected[0]
    for frame in rejected[1:]:
        quarantined = quarantined.unionByName(frame)
    quarantined = quarantined.withColumn("failed_rules", F.array(F.col("reason")))
    for frame in failed:
        quarantined = quarantined.unionByName(frame)
    quarantined = quarantined.select(
        *quarantined.columns,
        F.lit(batch_id).cast("long").alias("batch_id"),
        F.current_timestamp().alias("quarantined_at"),
        F.lit(run_id).alias("run_id"),
    ).select(*QUARANTINE.fieldNames())
    quarantined.write.format("delta").mode("append").options(**txn).save(tables.quarantine)
    counts = (classified.count(), applied, quarantined.count())
    _log_batch(spark, tables, run_id, "cdc", batch_id, counts, txn)
    log.info("retail cdc batch %d: bronze %d, applied %d, quarantined %d", batch_id, *counts)


def process_extract_batch(
    batch: DataFrame,
    batch_id: int,
    *,
    tables: RetailSilverTables,
    table: RetailTable,
    run_id: str,
    app_id: str,
    settings: Settings | None = None,
) -> None:
    """Upsert one micro-batch of extract bronze rows of ``table`` (``foreachBatch``; safe to replay).

    With ``settings``, the table's suite runs on the versions about to be merged (see
    :func:`process_cdc_batch`).
    """
    spark = batch.sparkSession
    changes = tables.protect(extract_changes(batch, table), table).localCheckpoint(eager=True)
    latest = latest_per_key(changes, table.key, ["updated_at"])
    latest, failing = _checked(latest, table.name, settings=settings, run_id=run_id, batch_id=batch_id)
    txn = {"txnAppId": app_id, "txnVersion": str(batch_id)}
    quarantined = 0
    if failing is not None:
        changes = changes.join(latest.select(*table.key), list(table.key), "left_semi")
        failing = failing.select(
            *failing.columns,
            F.lit(batch_id).cast("long").alias("batch_id"),
            F.current_timestamp().alias("quarantined_at"),
            F.lit(run_id).alias("run_id"),
        ).select(*QUARANTINE.fieldNames())
        # One quarantine table, several feeds: each feed's micro-batches get their own txnAppId.
        failing.write.format("delta").mode("append").options(**txn).save(tables.quarantine)
        quarantined = failing.count()
    count = latest.count()
    if count:
        merge_current(spark, latest, tables.current[table.name], table, "extract")
        if table.name == "customers":
            apply_scd2(spark, customer_versions(changes), tables.dim_customer)
    counts = (changes.count() + quarantined, count, quarantined)
    _log_batch(spark, tables, run_id, f"extract:{table.name}", batch_id, counts, txn)


@dataclass(frozen=True)
class MergeReport:
    """What one retail silver run did, per feed (``cdc`` or ``extract:<table>``)."""

    run_id: str
    bronze_rows: dict[str, int]
    changes: dict[str, int]
    quarantined: int


def _run_stream(spark: SparkSession, bronze: str, checkpoint: str, handle: object, name: str) -> None:
    query = (
        spark.readStream.format("delta")
        .load(bronze)
        .writeStream.foreachBatch(handle)  # type: ignore[arg-type]
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .queryName(name)
        .start()
    )
    await_stream(query, f"silver retail merge from {bronze}")  # a fail rule surfaces as QualityError


def _app_id(checkpoint: str, feed: str) -> str:
    """A stable id for idempotent writes, born with the checkpoint (a new checkpoint gets a new id)."""
    marker = Path(checkpoint) / "lakehouse_txn_app_id"
    marker.parent.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(f"silver-retail-{feed}-{uuid.uuid4()}")
    return marker.read_text().strip()


def _report(spark: SparkSession, tables: RetailSilverTables, run_id: str) -> MergeReport:
    rows = (
        spark.read.format("delta")
        .load(tables.merge_log)
        .where(F.col("run_id") == run_id)
        .groupBy("feed")
        .agg(
            F.sum("bronze_rows").alias("bronze_rows"),
            F.sum("changes").alias("changes"),
            F.sum("quarantined").alias("q"),
        )
        .collect()
    )
    return MergeReport(
        run_id=run_id,
        bronze_rows={r["feed"]: int(r["bronze_rows"]) for r in rows},
        changes={r["feed"]: int(r["changes"]) for r in rows},
        quarantined=sum(int(r["q"]) for r in rows),
    )


def merge_retail_cdc(
    spark: SparkSession,
    settings: Settings,
    *,
    bronze: str | None = None,
    tables: RetailSilverTables | None = None,
    run_id: str | None = None,
    quality: bool = True,
) -> MergeReport:
    """Apply what the CDC bronze table has new to the silver current state and ``dim_customer``.

    Args:
        spark: a session from :func:`lakehouse.spark.get_spark`.
        settings: the environment.
        bronze: the CDC bronze table (default ``bronze/retail_cdc``).
        tables: override the silver locations (tests).
        run_id: the task run (lineage); default a new UUID.
        quality: run the ``silver.retail_<table>`` suites on what is merged.
    """
    tables = tables or RetailSilverTables.from_settings(settings)
    bronze = bronze or settings.table_path("bronze", "retail_cdc")
    tables.ensure(spark)
    run_id = run_id or str(uuid.uuid4())
    checkpoint = f"{tables.checkpoints}/cdc"
    app_id = _app_id(checkpoint, "cdc")

    def handle(batch: DataFrame, batch_id: int) -> None:
        process_cdc_batch(
            batch,
            batch_id,
            tables=tables,
            run_id=run_id,
            app_id=app_id,
            settings=settings if quality else None,
        )

    _run_stream(spark, bronze, checkpoint, handle, f"silver_retail_cdc_{settings.env_name}")
    return _report(spark, tables, run_id)


def merge_retail_extract(
    spark: SparkSession,
    settings: Settings,
    sources: Sequence[PostgresTableSource],
    *,
    tables: RetailSilverTables | None = None,
    run_id: str | None = None,
    quality: bool = True,
) -> MergeReport:
    """Upsert what the extract bronze tables of ``sources`` have new into the silver current state.

    ``run_id`` and ``quality`` as in :func:`merge_retail_cdc`.
    """
    tables = tables or RetailSilverTables.from_settings(settings)
    tables.ensure(spark)
    run_id = run_id or str(uuid.uuid4())
    for source in sources:
        name = source.table.rpartition(".")[2]
        if name not in RETAIL_TABLES:
            raise ConfigError(
                f"source {source.name!r} reads {source.table!r}, not a retail table ({sorted(RETAIL_TABLES)})"
            )
        table = RETAIL_TABLES[name]
        checkpoint = f"{tables.checkpoints}/extract_{source.bronze}"
        app_id = _app_id(checkpoint, f"extract-{source.bronze}")

        def handle(batch: DataFrame, batch_id: int, table: RetailTable = table, app_id: str = app_id) -> None:
            process_extract_batch(
                batch,
                batch_id,
                tables=tables,
                table=table,
                run_id=run_id,
                app_id=app_id,
                settings=settings if quality else None,
            )

        _run_stream(
            spark,
            settings.table_path("bronze", source.bronze),
            checkpoint,
            handle,
            f"silver_retail_{source.bronze}_{settings.env_name}",
        )
    return _report(spark, tables, run_id)


def current_state(spark: SparkSession, path: str, table: RetailTable) -> DataFrame:
    """The live rows of a current-state table: tombstones and bookkeeping columns left out."""
    return spark.read.format("delta").load(path).where(~F.col("_deleted")).select(*table.column_names)


@dataclass(frozen=True)
class DimensionCheck:
    """Invariants of dim_customer."""

    customers: int
    current_rows: int
    history_rows: int
    customers_without_one_current_row: int
    open_history_rows: int

    def check(self) -> DimensionCheck:
        """Raise :class:`DataError` unless each customer has exactly one current row and history is closed."""
        if self.customers_without_one_current_row or self.open_history_rows:
            raise DataError(
                f"dim_customer is inconsistent: {self.customers_without_one_current_row} customers without "
                f"exactly one current row, {self.open_history_rows} history rows without valid_to"
            )
        return self


def check_dimension(spark: SparkSession, path: str) -> DimensionCheck:
    """Count dim_customer's rows and its SCD2 invariant breaks (one Spark query)."""
    ref = delta_ref(path)
    row = _first(
        spark.sql(
            f"""
            SELECT (SELECT count(DISTINCT customer_id) FROM {ref}) AS customers,
                   (SELECT count(*) FROM {ref} WHERE is_current) AS current_rows,
                   (SELECT count(*) FROM {ref} WHERE NOT is_current) AS history_rows,
                   (SELECT count(*) FROM (SELECT customer_id FROM {ref} GROUP BY customer_id
                                          HAVING count_if(is_current) <> 1)) AS bad,
                   (SELECT count(*) FROM {ref} WHERE NOT is_current AND valid_to IS NULL) AS open_history
            """
        )
    )
    return DimensionCheck(
        int(row["customers"]),
        int(row["current_rows"]),
        int(row["history_rows"]),
        int(row["bad"]),
        int(row["open_history"]),
    )
