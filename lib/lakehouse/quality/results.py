"""The ``audit.validation_results`` Delta table: one row per expectation per validated batch, over time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.config import Settings

RESULTS_SCHEMA: Final = StructType(
    [
        StructField("run_id", StringType(), False),
        StructField("batch_id", LongType(), False),
        StructField("table", StringType(), False),
        StructField("suite", StringType(), False),
        StructField("expectation", StringType(), False),
        StructField("rule", StringType(), False),
        StructField("column", StringType(), True),
        StructField("action", StringType(), False),
        StructField("success", BooleanType(), False),
        StructField("element_count", LongType(), True),
        StructField("unexpected_count", LongType(), True),
        StructField("unexpected_percent", DoubleType(), True),
        StructField("engine", StringType(), False),
        StructField("validated_at", TimestampType(), False),
        StructField("details", StringType(), True),
    ]
)


@dataclass(frozen=True)
class ResultRow:
    """One expectation's outcome on one batch: a row of ``audit.validation_results``."""

    run_id: str
    batch_id: int
    table: str
    suite: str
    expectation: str
    rule: str
    column: str | None
    action: str
    success: bool
    element_count: int | None
    unexpected_count: int | None
    unexpected_percent: float | None
    engine: str
    validated_at: datetime
    details: str

    def as_dict(self) -> dict[str, Any]:
        """The row as a dict keyed by the results table's column names."""
        return asdict(self)


def results_path(settings: Settings) -> str:
    """Where the validation results live: ``settings.table_path("audit", "validation_results")``."""
    return settings.table_path("audit", "validation_results")


def write_results(spark: SparkSession, settings: Settings, rows: Sequence[ResultRow]) -> int:
    """Append validation result rows to the audit table (created on first use); return how many."""
    if not rows:
        return 0
    records = [tuple(row.as_dict()[field.name] for field in RESULTS_SCHEMA.fields) for row in rows]
    frame = spark.createDataFrame(records, RESULTS_SCHEMA)
    frame.write.format("delta").mode("append").save(results_path(settings))
    return len(records)


def results_for_run(settings: Settings, run_id: str) -> pd.DataFrame:
    """Every validation result of one run as pandas (read with delta-rs, no Spark); empty if none.

    The lineage helper reads this to attach data-quality facets to a run's datasets.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    columns = [field.name for field in RESULTS_SCHEMA.fields]
    try:
        table = DeltaTable(results_path(settings))
    except TableNotFoundError:
        return pd.DataFrame(columns=columns)
    import pyarrow.compute as pc

    data = table.to_pyarrow_dataset().to_table(filter=pc.field("run_id") == run_id)
    frame: pd.DataFrame = data.to_pandas()
    ordered: pd.DataFrame = frame.sort_values(["validated_at", "table", "batch_id"], kind="stable")
    return ordered.reset_index(drop=True)
