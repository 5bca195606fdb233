"""Validate a batch against its table's suite and route its rows by each failed expectation's action.

The hot path: a synthetic row id is added to the (materialised) batch; the batch is validated with GX's
pandas engine on an Arrow copy of the columns the suite reads when it has at most
``settings.quality.pandas_max_rows`` rows, else with GX's Spark engine (a cluster-sized batch never comes to
the driver); the ids of failing rows (few) are joined back in Spark to split valid, quarantined and dropped
rows. Results are appended to ``audit.validation_results``; a failed ``fail`` expectation then raises
:class:`QualityError`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import great_expectations as gx
import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType

import lakehouse.quality.compiled as cq
from lakehouse.config import Settings
from lakehouse.errors import DataError
from lakehouse.privacy.mask import mask_result_body, table_pii
from lakehouse.quality.results import ResultRow
from lakehouse.quality.suites import (
    ROW_ACTIONS,
    action_of,
    expectation_column,
    expectation_columns,
    is_row_level,
    load_suite,
    rule_name,
)

log = logging.getLogger(__name__)

ROW_ID: Final = "_dq_row_id"
_ROUTES: Final = StructType(
    [
        StructField(ROW_ID, LongType(), False),
        StructField("_dq_route", StringType(), False),
        StructField("reason", StringType(), False),
        StructField("failed_rules", ArrayType(StringType(), False), False),
    ]
)
# Expectation types whose GX 1.24 pandas metrics give the same results, lists and details on a column
# as pandas ``string[pyarrow]`` (no nulls) or ``int64`` as on toPandas' object strings or narrower ints
# (checked result by result). Only columns read by nothing else get those dtypes: GX filters and copies
# the whole frame per metric, which is several times cheaper on Arrow strings than on Python objects,
# and it judges ranges vectorised only on 64-bit ints.
_DTYPE_NEUTRAL: Final = frozenset(
    {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_unique",
        "expect_column_values_to_match_regex",
        "expect_column_values_to_not_match_regex",
    }
)
_LOCK = threading.RLock()
_CONTEXT: dict[str, Any] = {}


class QualityError(DataError):
    """An expectation whose action is ``fail`` failed (its results are already persisted)."""


@dataclass
class CheckedBatch:
    """A batch split by its suite: rows to write, rows to quarantine, and what the validation found.

    Attributes:
        valid: the rows to write (input columns, without the row id).
        quarantined: rows failing a ``quarantine`` rule: input columns + ``reason`` (first failed rule) +
            ``failed_rules``.
        dropped: how many rows failed only ``drop`` rules (removed, counted).
        quarantined_count: how many rows are in ``quarantined``.
        results: one :class:`ResultRow` per expectation.
        engine: ``pandas`` or ``spark``.
        rows: rows validated.
    """

    valid: DataFrame
    quarantined: DataFrame
    dropped: int
    quarantined_count: int
    results: list[ResultRow]
    engine: str
    rows: int
    failures: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """True when every expectation passed."""
        return all(row.success for row in self.results)


def _context(engine: str = "pandas") -> Any:
    """The batch definition of ``engine`` in one ephemeral GX context per process (cheap per batch).

    The Spark datasource is added only when a batch needs it: adding it starts a local Spark session.
    """
    with _LOCK:
        if "context" not in _CONTEXT:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            _CONTEXT["context"] = context
        if engine not in _CONTEXT:
            sources = _CONTEXT["context"].data_sources
            add = sources.add_pandas if engine == "pandas" else sources.add_spark
            asset = add(f"lakehouse_{engine}").add_dataframe_asset("batch")
            _CONTEXT[engine] = asset.add_batch_definition_whole_dataframe("whole")
        return _CONTEXT[engine]


def with_row_ids(frame: DataFrame) -> DataFrame:
    """Add ``_dq_row_id`` and materialise, so ids are stable across the validation and the routing join."""
    return frame.withColumn(ROW_ID, F.monotonically_increasing_id()).localCheckpoint(eager=True)


def _suite_columns(suite: gx.ExpectationSuite) -> list[str]:
    columns: list[str] = []
    for expectation in suite.expectations:
        columns.extend(c for c in expectation_columns(expectation) if c not in columns)
    return columns


def _fast_column(series: pd.Series) -> pd.Series:
    """The same values as Arrow strings (object column of str, no nulls) or int64 (narrower int)."""
    if series.dtype == object:
        try:
            values = pa.array(series.to_numpy(), from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError):
            return series
        if values.null_count or not pa.types.is_string(values.type):
            return series
        return pd.Series(pd.arrays.ArrowStringArray(values), index=series.index, name=series.name)
    if isinstance(series.dtype, np.dtype) and series.dtype.kind == "i" and series.dtype.itemsize < 8:
        return series.astype("int64")
    return series


def _fast_dtypes(data: pd.DataFrame, suite: gx.ExpectationSuite) -> pd.DataFrame:
    """``data`` with the columns only dtype-neutral expectations read in dtypes GX validates faster."""
    if not data.columns.is_unique:
        return data
    readers: dict[str, set[str]] = {}
    for expectation in suite.expectations:
        for column in expectation_columns(expectation):
            readers.setdefault(column, set()).add(expectation.expectation_type)
    columns = {
        name: _fast_column(data[name]) if readers.get(name, set()) <= _DTYPE_NEUTRAL else data[name]
        for name in data.columns
    }
    # A new frame puts same-dtype columns in one block: GX's per-metric row filters copy block by block.
    return pd.DataFrame(columns, index=data.index)


def _validate(frame: DataFrame, suite: gx.ExpectationSuite, engine: str) -> Any:
    from great_expectations.validator.v1_validator import Validator

    # Only the columns the suite reads travel to pandas, unless an expectation is about the column set.
    whole = any(e.expectation_type.startswith("expect_table_column") for e in suite.expectations)
    columns = [c for c in frame.columns if c != ROW_ID] if whole else _suite_columns(suite)
    columns = [c for c in columns if c in frame.columns]
    needed = frame.select(ROW_ID, *columns)
    data: Any = _fast_dtypes(needed.toPandas(), suite) if engine == "pandas" else needed
    row_level = [e for e in suite.expectations if is_row_level(e)]
    result_format: dict[str, Any] = {"result_format": "SUMMARY"}
    if any(action_of(e) in ROW_ACTIONS for e in row_level):
        # No pandas query text per expectation: nothing reads it and save_validation drops it.
        result_format = {
            "result_format": "COMPLETE",
            "unexpected_index_column_names": [ROW_ID],
            "return_unexpected_index_query": False,
        }
    with _LOCK:
        # What Batch.validate does, minus its first load of the batch (GX fingerprints the whole frame
        # on every load, and Batch.validate loads it twice).
        validator = Validator(
            batch_definition=_context(engine),
            batch_parameters={"dataframe": data},
            result_format=result_format,
        )
        return validator.validate_expectation_suite(suite)


def _failing_ids(result: Any) -> set[int]:
    return {int(entry[ROW_ID]) for entry in result.result.get("unexpected_index_list") or []}


def _details(result: Any, columns: list[str], pii: tuple[str, ...]) -> str:
    """The rule's arguments and what it saw, with quoted values masked (:mod:`lakehouse.privacy.mask`)."""
    config = result.expectation_config
    raw = result.result or {}
    body = mask_result_body(
        {
            "observed_value": raw.get("observed_value"),
            "partial_unexpected_list": (raw.get("partial_unexpected_list") or [])[:20],
        },
        columns,
        pii,
    )
    payload: dict[str, Any] = {
        "kwargs": {k: v for k, v in config.kwargs.items() if k != "batch_id"},
        **body,
    }
    info = result.exception_info or {}
    if info.get("raised_exception"):
        payload["exception"] = info.get("exception_message")
    return json.dumps(payload, default=str)


def check_batch(
    frame: DataFrame,
    table: str,
    *,
    settings: Settings,
    run_id: str,
    batch_id: int,
    suite: gx.ExpectationSuite | None = None,
    persist: bool = True,
    engine: str | None = None,
    materialised: bool = False,
    rows: int | None = None,
) -> CheckedBatch:
    """Validate a batch against ``table``'s suite and route its rows by action.

    By default the rules :mod:`lakehouse.quality.compiled` knows run as Spark predicates in one aggregate
    over the batch, and GX evaluates only the rest (on pandas or Spark by size). A suite whose uncompiled
    rules route rows (drop/quarantine), or with no compiled rule at all, runs wholly on GX.

    Args:
        frame: the rows about to be written (may carry extra columns, e.g. the raw payload, that the suite
            ignores and quarantine keeps).
        table: the table they go to, e.g. ``"silver.events"``.
        settings: the environment (suite location, engine threshold, results table).
        run_id: the task run (results and quarantine rows carry it).
        batch_id: the micro-batch id (0 for a batch job).
        suite: use this suite instead of loading ``table``'s (tests).
        persist: append the results to ``audit.validation_results`` and keep them for Data Docs.
        engine: ``compiled`` (the default described above), or GX's ``pandas`` or ``spark`` engine for
            the whole suite; GX's own engine is otherwise chosen by row count and
            ``settings.quality.pandas_max_rows``.
        materialised: ``frame`` is already materialised (``localCheckpoint``, perhaps then filtered and
            projected), so it can be read twice and row ids added lazily are stable; saves a checkpoint.
        rows: the batch's row count when the caller knows it (saves a count).

    Returns:
        The split batch; ``valid`` is what to write.

    Raises:
        QualityError: a ``fail`` expectation failed or an expectation could not be evaluated (after the
            results are persisted).
        DataError: an unknown engine, or ``compiled`` forced on a suite whose uncompiled rules route rows.

    Example:
        >>> checked = check_batch(customers, "silver.retail_customers", settings=s, run_id=rid, batch_id=0)
        >>> checked.valid.write.format("delta").mode("append").save(path)
    """
    if engine not in (None, cq.ENGINE, "pandas", "spark"):
        raise DataError(f"engine must be {cq.ENGINE}, pandas or spark, got {engine!r}")
    suite = suite or load_suite(settings, table)
    if engine in (None, cq.ENGINE):
        compiled = cq.CompiledSuite.of(suite)
        routing = [rule_name(e) for e in compiled.rest if action_of(e) in ROW_ACTIONS]
        if engine == cq.ENGINE and routing:
            raise DataError(
                f"{table}: the rules {routing} route rows and are not compiled: "
                "use the pandas or spark engine"
            )
        if compiled.rules and not routing:
            base = frame if materialised else frame.localCheckpoint(eager=True)
            return _check_compiled(base, table, compiled, settings, run_id, batch_id, persist)
    if materialised:
        ided = frame.withColumn(ROW_ID, F.monotonically_increasing_id())
    else:
        ided = with_row_ids(frame)
    if rows is None:
        rows = ided.count()
    chosen = engine if engine in ("pandas", "spark") else _gx_engine(settings, rows)
    pii = table_pii(settings, table)
    judged = _judge(ided, suite, chosen, table=table, run_id=run_id, batch_id=batch_id, rows=rows, pii=pii)
    spark = ided.sparkSession
    if persist:
        _persist(settings, table, run_id, batch_id, judged.results, judged.outcome, pii)
    if judged.failures:
        raise QualityError(
            f"{table} batch {batch_id} failed its quality suite: " + "; ".join(judged.failures)
        )
    columns = [c for c in ided.columns if c != ROW_ID]
    valid, quarantined = _route(spark, ided, columns, judged.routes, judged.quarantine_ids)
    return CheckedBatch(
        valid=valid,
        quarantined=quarantined,
        dropped=len(judged.routes) - len(judged.quarantine_ids),
        quarantined_count=len(judged.quarantine_ids),
        results=judged.results,
        engine=chosen,
        rows=rows,
        failures=judged.failures,
    )


def _gx_engine(settings: Settings, rows: int) -> str:
    return "pandas" if rows <= settings.quality.pandas_max_rows else "spark"


@dataclass
class _Judged:
    """What GX found in a batch: its result, our result rows, failures and the rows to route."""

    outcome: Any
    results: list[ResultRow]
    failures: list[str]
    routes: dict[int, list[str]]
    quarantine_ids: set[int]


def _judge(
    ided: DataFrame,
    suite: gx.ExpectationSuite,
    engine: str,
    *,
    table: str,
    run_id: str,
    batch_id: int,
    rows: int,
    pii: Sequence[str],
) -> _Judged:
    """Run ``suite`` on GX's ``engine`` over a batch with row ids; nothing is persisted or raised."""
    outcome = _validate(ided, suite, engine)
    validated_at = datetime.now(UTC)
    by_rule = {rule_name(e): e for e in suite.expectations}
    judged = _Judged(outcome, [], [], {}, set())
    order = {rule: index for index, rule in enumerate(by_rule)}
    for result in sorted(
        outcome.results, key=lambda r: order.get(str(r.expectation_config.meta.get("rule")), 0)
    ):
        rule = str(result.expectation_config.meta.get("rule"))
        expectation = by_rule[rule]
        action = action_of(expectation)
        body = result.result or {}
        errored = bool((result.exception_info or {}).get("raised_exception"))
        judged.results.append(
            ResultRow(
                run_id=run_id,
                batch_id=int(batch_id),
                table=table,
                suite=suite.name,
                expectation=expectation.expectation_type,
                rule=rule,
                column=expectation_column(expectation),
                action=action,
                success=bool(result.success),
                element_count=_int(body.get("element_count", rows if not errored else None)),
                unexpected_count=_int(body.get("unexpected_count", 0 if result.success else None)),
                unexpected_percent=_float(body.get("unexpected_percent", 0.0 if result.success else None)),
                engine=engine,
                validated_at=validated_at,
                details=_details(result, expectation_columns(expectation), tuple(pii)),
            )
        )
        if errored:
            judged.failures.append(
                f"{rule} could not be evaluated: {result.exception_info.get('exception_message')}"
            )
        elif not result.success and action == "fail":
            judged.failures.append(
                f"{rule} failed ({body.get('unexpected_count', body.get('observed_value'))})"
            )
        elif not result.success and action in ROW_ACTIONS:
            ids = _failing_ids(result)
            for row_id in ids:
                judged.routes.setdefault(row_id, []).append(rule)
            if action == "quarantine":
                judged.quarantine_ids |= ids
        elif not result.success:
            log.warning("%s: %s failed (warn) in batch %s", table, rule, batch_id)
    return judged


def _persist(
    settings: Settings,
    table: str,
    run_id: str,
    batch_id: int,
    results: list[ResultRow],
    outcome: Any,
    pii: Sequence[str],
) -> None:
    from lakehouse.quality.docs import save_validation
    from lakehouse.quality.results import write_results

    write_results(settings, results)
    if settings.quality.data_docs:
        save_validation(settings, table, run_id, batch_id, outcome, pii)


def _check_compiled(
    base: DataFrame,
    table: str,
    compiled: Any,
    settings: Settings,
    run_id: str,
    batch_id: int,
    persist: bool,
) -> CheckedBatch:
    """The compiled rules in one aggregate over the materialised ``base``; GX for the warn/fail rest."""
    suite = compiled.suite
    evaluation = cq.evaluate(base, compiled)
    results = cq.result_rows(
        evaluation.outcomes, table=table, suite=suite.name, run_id=run_id, batch_id=batch_id
    )
    failures = evaluation.failures()
    outcome = cq.validation_result(evaluation.outcomes, suite)
    pii = table_pii(settings, table)
    rest = compiled.rest_suite()
    if rest is not None:
        ided = base.withColumn(ROW_ID, F.monotonically_increasing_id())
        engine = _gx_engine(settings, evaluation.rows)
        other = _judge(
            ided, rest, engine, table=table, run_id=run_id, batch_id=batch_id, rows=evaluation.rows, pii=pii
        )
        results += other.results
        failures += other.failures
        outcome = cq.suite_result([*outcome.results, *other.outcome.results], suite.name)
    order = {rule_name(e): index for index, e in enumerate(suite.expectations)}
    results.sort(key=lambda r: order.get(r.rule, len(order)))
    if persist:
        _persist(settings, table, run_id, batch_id, results, outcome, pii)
    if failures:
        raise QualityError(f"{table} batch {batch_id} failed its quality suite: " + "; ".join(failures))
    marked = evaluation.marked
    columns = [F.col(f"`{c}`") for c in base.columns]
    return CheckedBatch(
        valid=marked.where(F.col(cq.ROUTE).isNull()).select(*columns),
        quarantined=marked.where(F.col(cq.ROUTE) == "quarantine").select(
            *columns, F.col(cq.REASON).alias("reason"), F.col(cq.FAILED).alias("failed_rules")
        ),
        dropped=evaluation.dropped,
        quarantined_count=evaluation.quarantined,
        results=results,
        engine=cq.ENGINE,
        rows=evaluation.rows,
        failures=failures,
    )


def _route(
    spark: SparkSession,
    frame: DataFrame,
    columns: Sequence[str],
    routes: dict[int, list[str]],
    quarantine_ids: set[int],
) -> tuple[DataFrame, DataFrame]:
    """Join the failing ids (small) back: rows with no route are valid; quarantine wins over drop."""
    if not routes:
        empty = frame.limit(0).select(
            *columns,
            F.lit(None).cast("string").alias("reason"),
            F.lit(None).cast("array<string>").alias("failed_rules"),
        )
        return frame.select(*columns), empty
    records = [
        (row_id, "quarantine" if row_id in quarantine_ids else "drop", rules[0], rules)
        for row_id, rules in routes.items()
    ]
    marks = F.broadcast(spark.createDataFrame(records, _ROUTES))
    joined = frame.join(marks, ROW_ID, "left")
    valid = joined.where(F.col("_dq_route").isNull()).select(*columns)
    quarantined = joined.where(F.col("_dq_route") == "quarantine").select(*columns, "reason", "failed_rules")
    return valid, quarantined


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def validate_table(
    settings: Settings,
    table: str,
    *,
    run_id: str,
    spark: SparkSession | None = None,
    where: str | None = None,
    batch_id: int = 0,
) -> CheckedBatch:
    """Validate a written table (or the slice ``where`` selects) against its suite; persist the results.

    Meant for warn/fail suites after a write (bronze slices, gold tables): rows are not routed.

    Args:
        settings: the environment.
        table: e.g. ``"gold.sessions"``.
        run_id: the task run.
        spark: a session (default :func:`lakehouse.spark.get_spark`).
        where: a SQL filter, e.g. ``"ingested_at >= '2024-11-01T00:00:00Z'"``.
        batch_id: recorded with the results (0 for a batch job).

    Raises:
        QualityError: a ``fail`` expectation failed.
    """
    if spark is None:
        from lakehouse.spark import get_spark

        spark = get_spark(settings)
    layer, _, name = table.partition(".")
    frame = spark.read.format("delta").load(settings.table_path(layer, name))
    if where:
        frame = frame.where(where)
    return check_batch(frame, table, settings=settings, run_id=run_id, batch_id=batch_id)
