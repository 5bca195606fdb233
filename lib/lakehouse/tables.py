"""Delta table helpers that work the same over Spark Connect and a classic session (SQL, no JVM handles)."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql.types import StructType


def delta_ref(path: str) -> str:
    """The SQL name of a path-based Delta table: delta.`/path`."""
    return "delta.`" + path.replace("`", "``") + "`"


def is_delta_table(spark: SparkSession, path: str) -> bool:
    """True when ``path`` holds a Delta table."""
    try:
        spark.sql(f"DESCRIBE DETAIL {delta_ref(path)}").collect()
    except AnalysisException:
        return False
    return True


def ensure_table(
    spark: SparkSession, path: str, schema: StructType, partition_by: Sequence[str] = ()
) -> bool:
    """Create an empty Delta table at ``path`` unless one is there. Returns True if it created one."""
    if is_delta_table(spark, path):
        return False
    writer = spark.createDataFrame([], schema).write.format("delta").mode("append")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)
    return True


def table_version(spark: SparkSession, path: str) -> int:
    """The latest version of a Delta table (-1 when there is no table)."""
    try:
        row = spark.sql(f"DESCRIBE HISTORY {delta_ref(path)} LIMIT 1").first()
    except AnalysisException:
        return -1
    return int(row["version"]) if row else -1


def count_rows(spark: SparkSession, path: str) -> int:
    """Rows in a Delta table (0 when there is no table)."""
    if not is_delta_table(spark, path):
        return 0
    return spark.read.format("delta").load(path).count()
