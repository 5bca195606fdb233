"""Every table validated at its current version: find the tables no writer validated, and validate them.

The tasks that write with Spark run their table's suite on the rows before writing (silver micro-batches,
gold marts, bronze Kafka slices). A few tables are written elsewhere — by delta-rs (the buffered API
delivery), by the JDBC extract, or as bookkeeping beside a silver table (quarantine, reconciliation, merge
log, the SCD2 dimension). :func:`validate_unvalidated` closes the gap after the DAG's writers ran: a table
whose last commit is newer than its last validation is validated whole (its ``warn``/``fail`` rules
decide; rows are not routed after the fact).

A writer validates *before* it commits, so a table counts as validated at its current version when its
latest validation is newer than the commit before the latest one (or, for a one-commit table, exists).
"""

from __future__ import annotations

import logging

import pandas as pd
from pyspark.sql import SparkSession

from lakehouse import arrow_lake
from lakehouse.config import Settings
from lakehouse.quality.results import results_path
from lakehouse.quality.suites import list_suites
from lakehouse.quality.validate import validate_table

log = logging.getLogger(__name__)

COVERAGE_COLUMNS = ["table", "last_commit", "previous_commit", "last_validated", "validated_now", "success"]


def commit_times(settings: Settings, table: str) -> tuple[pd.Timestamp, pd.Timestamp | None] | None:
    """The times of a table's latest and previous Delta commits (None when the table does not exist)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    layer, _, name = table.partition(".")
    try:
        history = DeltaTable(settings.table_path(layer, name)).history(2)
    except TableNotFoundError:
        return None
    times = sorted((pd.Timestamp(h["timestamp"], unit="ms", tz="UTC") for h in history), reverse=True)
    if not times:
        return None
    return times[0], (times[1] if len(times) > 1 else None)


def last_validations(settings: Settings) -> dict[str, pd.Timestamp]:
    """The latest ``validated_at`` of each table in ``audit.validation_results``."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        frame = arrow_lake.frame(DeltaTable(results_path(settings)), ["table", "validated_at"])
    except TableNotFoundError:
        return {}
    if frame.empty:
        return {}
    latest = frame.groupby("table")["validated_at"].max()
    return {
        str(t): pd.Timestamp(v).tz_localize("UTC") if pd.Timestamp(v).tzinfo is None else pd.Timestamp(v)
        for t, v in latest.items()
    }


def validation_coverage(settings: Settings) -> pd.DataFrame:
    """Per table with a suite and a Delta table: its last commit and last validation (UTC)."""
    validated = last_validations(settings)
    rows = []
    for table in list_suites(settings):
        commits = commit_times(settings, table)
        if commits is None:
            continue  # not built (yet): continuous-mode tables, optional sources
        rows.append(
            {
                "table": table,
                "last_commit": commits[0],
                "previous_commit": commits[1],
                "last_validated": validated.get(table),
                "validated_now": False,
                "success": None,
            }
        )
    return pd.DataFrame(rows, columns=COVERAGE_COLUMNS)


def validate_unvalidated(
    settings: Settings, *, run_id: str, spark: SparkSession | None = None
) -> pd.DataFrame:
    """Validate each table whose latest commit no validation covers; report the coverage.

    Args:
        settings: the environment.
        run_id: the run the results are recorded under.
        spark: a session (default :func:`lakehouse.spark.get_spark`).

    Returns:
        One row per built table with a suite: ``table, last_commit, previous_commit, last_validated,
        validated_now, success``
        (``success`` is None for tables a writer had already validated at their current version).

    Raises:
        QualityError: a ``fail`` rule failed on a table validated here (results persisted first).
    """
    coverage = validation_coverage(settings)
    for index, row in coverage.iterrows():
        validated, previous = row["last_validated"], row["previous_commit"]
        if validated is not None and not pd.isna(validated):
            if previous is None or pd.isna(previous) or validated > previous:
                continue  # a writer validated the rows of its latest commit
        log.info(
            "validating %s (committed %s, last validated %s)", row["table"], row["last_commit"], validated
        )
        checked = validate_table(settings, str(row["table"]), run_id=run_id, spark=spark)
        coverage.at[index, "validated_now"] = True
        coverage.at[index, "success"] = checked.success
        coverage.at[index, "last_validated"] = (
            max(r.validated_at for r in checked.results) if checked.results else None
        )
    return coverage
