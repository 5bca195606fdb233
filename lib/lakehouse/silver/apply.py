"""How a silver micro-batch's accepted rows change the table: ``append``, ``upsert`` (SCD1) or ``scd2``.

Every write is safe to repeat: appends carry Delta's ``txnAppId``/``txnVersion`` (a replayed micro-batch is
skipped), and the MERGEs change a row only when the incoming sequence is newer than the stored one — a
re-delivered or older version changes nothing, a delete leaves a tombstone (``_deleted``) so an older insert
arriving later cannot bring the row back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse.contracts.build import Scd2Spec
from lakehouse.tables import delta_ref

DELETED: Final = "_deleted"
SOURCE: Final = "_source"
MERGED_AT: Final = "_merged_at"
IS_DELETE: Final = "_is_delete"


def q(name: str) -> str:
    """A backquoted SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def newer(new: str, old: str, sequence: Sequence[str], *, strict: bool, new_null_equal: bool = False) -> str:
    """SQL: ``new``'s sequence tuple sorts after (``strict``) or not before ``old``'s; NULL sorts lowest.

    With ``new_null_equal`` a null on the incoming side counts as equal (a CDC delete carries only its key
    and position, not the row's version columns).
    """

    def greater(column: str) -> str:
        n, o = f"{new}.{q(column)}", f"{old}.{q(column)}"
        return f"({n} IS NOT NULL AND ({o} IS NULL OR {n} > {o}))"

    def equal(column: str) -> str:
        n, o = f"{new}.{q(column)}", f"{old}.{q(column)}"
        return f"({n} IS NULL OR {n} <=> {o})" if new_null_equal else f"({n} <=> {o})"

    expression = "TRUE" if not strict else "FALSE"
    for column in reversed(sequence):
        expression = f"({greater(column)} OR ({equal(column)} AND {expression}))"
    return expression


def latest_per_key(frame: DataFrame, key: Sequence[str], sequence: Sequence[str], tiebreak: str) -> DataFrame:
    """Rank rows of one key by sequence (latest first, ties broken by ``tiebreak``): ``_rank`` 1 wins."""
    order = [F.col(q(c)).desc_nulls_last() for c in sequence] + [F.col(q(tiebreak)).desc()]
    window = Window.partitionBy(*[F.col(q(k)) for k in key]).orderBy(*order)
    return frame.withColumn("_rank", F.row_number().over(window))


def append(frame: DataFrame, path: str, columns: Sequence[str], txn: dict[str, str]) -> None:
    """Append the rows (the table's columns, in order) idempotently."""
    frame.select(*[F.col(q(c)) for c in columns]).write.format("delta").mode("append").options(**txn).save(
        path
    )


def upsert(
    spark: SparkSession,
    changes: DataFrame,
    path: str,
    *,
    columns: Sequence[str],
    key: Sequence[str],
    sequence: Sequence[str],
    source: str,
) -> int:
    """MERGE one version per key: newer versions replace, deletes leave tombstones, older ones do nothing.

    Args:
        changes: the table's columns plus ``_is_delete``, at most one row per key.
        columns: the table's columns in order (``_deleted``, ``_source``, ``_merged_at`` are set here when the
            table has them).
        key, sequence: the declaration's key and sequence columns.
        source: the input's name, kept in ``_source``.

    Returns:
        How many rows the MERGE inserted (new keys, tombstones of unknown keys included).
    """
    bookkeeping = {
        DELETED: F.col(IS_DELETE).cast("boolean"),
        SOURCE: F.lit(source),
        MERGED_AT: F.current_timestamp(),
    }
    staged = changes.select(
        *[bookkeeping[c].alias(c) if c in bookkeeping else F.col(q(c)) for c in columns],
        F.col(IS_DELETE).cast("boolean").alias(IS_DELETE),
    )
    view = f"silver_changes_{uuid.uuid4().hex[:12]}"
    staged.createOrReplaceTempView(view)
    on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in key)
    has_tombstones = DELETED in columns
    tombstone = [DELETED, SOURCE, MERGED_AT, *sequence]
    delete_set = ", ".join(f"t.{q(c)} = s.{q(c)}" for c in tombstone if c in columns and c not in key)
    update_set = ", ".join(f"t.{q(c)} = s.{q(c)}" for c in columns if c not in key)
    insert_columns = ", ".join(q(c) for c in columns)
    insert_values = ", ".join(f"s.{q(c)}" for c in columns)
    live = f"NOT t.{q(DELETED)}" if has_tombstones else "TRUE"
    if has_tombstones:
        on_delete = (
            f"WHEN MATCHED AND s.{IS_DELETE} AND {live} AND "
            f"{newer('s', 't', sequence, strict=False, new_null_equal=True)} THEN UPDATE SET {delete_set}"
        )
        not_matched = f"WHEN NOT MATCHED THEN INSERT ({insert_columns}) VALUES ({insert_values})"
    else:  # no tombstone column: a delete removes the row, an unknown key's delete is nothing
        on_delete = (
            f"WHEN MATCHED AND s.{IS_DELETE} AND "
            f"{newer('s', 't', sequence, strict=False, new_null_equal=True)} THEN DELETE"
        )
        not_matched = (
            f"WHEN NOT MATCHED AND NOT s.{IS_DELETE} THEN INSERT ({insert_columns}) VALUES ({insert_values})"
        )
    try:
        result = spark.sql(
            f"""
            MERGE INTO {delta_ref(path)} t USING {view} s ON {on}
            {on_delete}
            WHEN MATCHED AND NOT s.{IS_DELETE} AND {newer("s", "t", sequence, strict=True)}
              THEN UPDATE SET {update_set}
            {not_matched}
            """
        )
        return _inserted(result)
    finally:
        spark.catalog.dropTempView(view)


def _inserted(result: DataFrame) -> int:
    """``num_inserted_rows`` of a Delta MERGE's result."""
    row = result.first()
    return int(row["num_inserted_rows"]) if row is not None and "num_inserted_rows" in row else 0


def _hash(columns: Sequence[str]) -> Column:
    return F.sha2(F.to_json(F.struct(*[F.col(q(c)).alias(c) for c in columns])), 256)


def scd2(
    spark: SparkSession,
    versions: DataFrame,
    path: str,
    *,
    columns: Sequence[str],
    key: Sequence[str],
    sequence: Sequence[str],
    spec: Scd2Spec,
) -> int:
    """Bring an SCD2 table up to date with versions (one MERGE; safe to repeat).

    A version opens a row when its tracked columns differ from the version before it (the current row or
    the previous version of the batch); the row it follows is closed at its ``valid_from``. Versions not
    newer than the current row are ignored. A delete (``_is_delete``) closes the current row at its
    sequence value (or now, when it has none), unless ``spec.on_delete`` is ``keep``.

    Args:
        versions: the key, tracked columns, sequence columns and ``_is_delete``.
        columns: the table's columns in order.
        key, sequence: from the declaration; ``sequence[0]`` becomes ``valid_from``.
        spec: the SCD2 column names.

    Returns:
        How many history rows the MERGE inserted.
    """
    start = sequence[0]
    if spec.on_delete == "keep":  # a delete changes no history: the last version stays current
        versions = versions.where(~F.col(IS_DELETE))
    current = spark.read.format("delta").load(path).where(F.col(q(spec.is_current)))
    now = current.select(
        *[F.col(q(k)) for k in key],
        F.col(q(spec.valid_from)).alias("_current_from"),
        _hash(spec.track).alias("_current_hash"),
    )
    ordering = [F.col(q(c)).asc_nulls_first() for c in sequence]
    incoming = (
        versions.withColumn("_hash", F.when(~F.col(IS_DELETE), _hash(spec.track)))
        .withColumn("_at", F.coalesce(F.col(q(start)).cast("timestamp"), F.current_timestamp()))
        .dropDuplicates([*key, "_at", "_hash"])
        .join(now, list(key), "left")
        .where(F.col("_current_from").isNull() | (F.col("_at") > F.col("_current_from")))
    )
    by_time = Window.partitionBy(*[F.col(q(k)) for k in key]).orderBy(F.col("_at"), *ordering)
    first = F.row_number().over(by_time) == 1
    # The state before each row: the stored current row for the first, else what the previous row left.
    open_before = F.when(first, F.col("_current_hash").isNotNull()).otherwise(~F.lag(IS_DELETE).over(by_time))
    hash_before = F.when(first, F.col("_current_hash")).otherwise(F.lag("_hash").over(by_time))
    deleting = F.col(IS_DELETE)
    changes_history = (deleting & open_before) | (
        ~deleting & (~open_before | (F.col("_hash") != hash_before))
    )
    changed = incoming.withColumn("_changes", changes_history).where(F.col("_changes"))
    by_time = Window.partitionBy(*[F.col(q(k)) for k in key]).orderBy("_at")
    next_at = F.lead("_at").over(by_time)
    opened_columns: list[Column] = []
    for name in columns:
        if name == spec.valid_from:
            opened_columns.append(F.col("_at").alias(name))
        elif name == spec.valid_to:
            opened_columns.append(next_at.alias(name))
        elif name == spec.is_current:
            opened_columns.append(next_at.isNull().alias(name))
        elif name == spec.surrogate_key:
            opened_columns.append(F.xxhash64(*[F.col(q(k)) for k in key], F.col("_at")).alias(name))
        else:
            opened_columns.append(F.col(q(name)))
    staged_opened = changed.select(
        F.lit(False).alias("_closing"), F.col(IS_DELETE), F.col("_at").alias("_close_at"), *opened_columns
    ).where(~F.col(IS_DELETE))
    closings = (
        changed.where(F.col("_current_from").isNotNull())
        .groupBy(*[F.col(q(k)) for k in key])
        .agg(F.min("_at").alias("_close_at"))
    )
    staged_closings = closings.select(
        F.lit(True).alias("_closing"),
        F.lit(False).alias(IS_DELETE),
        F.col("_close_at"),
        *[F.col(q(c)) if c in key else F.lit(None).alias(c) for c in columns],
    )
    staged = staged_opened.unionByName(staged_closings, allowMissingColumns=True)
    view = f"silver_scd2_{uuid.uuid4().hex[:12]}"
    staged.createOrReplaceTempView(view)
    on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in key)
    try:
        result = spark.sql(
            f"""
            MERGE INTO {delta_ref(path)} t USING {view} s
            ON s._closing AND {on} AND t.{q(spec.is_current)}
            WHEN MATCHED THEN UPDATE SET t.{q(spec.valid_to)} = s._close_at, t.{q(spec.is_current)} = false
            WHEN NOT MATCHED AND NOT s._closing THEN
              INSERT ({", ".join(q(c) for c in columns)}) VALUES ({", ".join("s." + q(c) for c in columns)})
            """
        )
        return _inserted(result)
    finally:
        spark.catalog.dropTempView(view)
