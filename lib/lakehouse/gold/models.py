"""Gold models: gold tables declared in their contracts (section ``model``), built from SQL or a transform.

A SQL model is one Spark SQL query in a file, reading other tables as ``{{ ref('silver.fx_rates') }}`` (Jinja,
as dbt users write it); ``ref`` resolves to the table's Delta location in the current environment and records
the dependency, from which the DAG takes the model's upstream tasks. The query's result is shaped by the
contract (its columns, in order, cast to their types — a column the query lacks is an error naming the file),
validated by the table's suite and written: ``full`` replaces the table, ``incremental`` merges by
``unique_key``. A SQL model reads its declared ``params`` as ``{{ param('name') }}``, rendered as a SQL
literal (a quoted string, a number, ``TRUE``/``FALSE``; a list as comma-separated literals; a mapping as
``map(…)``), and may stop its build with Spark's ``raise_error('…')`` (a :class:`DataError` with that
message). What SQL cannot say is a Python transform registered by name
(:func:`lakehouse.gold.transforms.transform`), generic over the columns its ``params`` name
(:mod:`lakehouse.gold.sessionize`).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jinja2
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.contracts.build import ModelSpec
from lakehouse.contracts.build import task_name as task_name  # the notebooks' name for it
from lakehouse.errors import ConfigError, DataError

# the package's own transforms register themselves (@transform) when imported
from lakehouse.gold import gaps as _gaps  # noqa: F401
from lakehouse.gold import sessionize as _sessionize  # noqa: F401
from lakehouse.gold.transforms import TRANSFORMS
from lakehouse.governance.catalog import TableContract, load_catalog
from lakehouse.tables import delta_ref, is_delta_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GoldModel:
    """A declared gold table: its contract, its model and where it lives."""

    contract: TableContract
    model: ModelSpec
    path: str
    source_file: Path | None

    @property
    def name(self) -> str:
        return self.contract.table

    @property
    def where(self) -> str:
        """The file a user edits, for error messages."""
        return str(self.source_file) if self.source_file else f"catalog/{self.name.replace('.', '/')}.yaml"


def _path(settings: Settings, table: str) -> str:
    layer, _, name = table.partition(".")
    return settings.table_path(layer, name)


def declared_models(settings: Settings) -> list[str]:
    """Every gold table whose contract has a ``model`` section, sorted."""
    return sorted(n for n, c in load_catalog(settings).tables.items() if c.model is not None)


def gold_model(settings: Settings, table: str) -> GoldModel:
    """The declared model of ``table``.

    Raises:
        ConfigError: no contract or no model section, or its SQL file is missing.
    """
    contract = load_catalog(settings).contract(table)
    if contract.model is None:
        raise ConfigError(f"{table} has no model section in catalog/{table.replace('.', '/')}.yaml")
    source = settings.root / contract.model.sql if contract.model.sql else None
    if source is not None and not source.is_file():
        raise ConfigError(
            f"catalog/{table.replace('.', '/')}.yaml: model.sql {contract.model.sql} does not exist"
        )
    return GoldModel(contract=contract, model=contract.model, path=_path(settings, table), source_file=source)


def sql_literal(value: object) -> str:
    """A parameter's value as Spark SQL: ``'EUR'``, ``7``, ``CAST('0.5' AS DOUBLE)``, ``TRUE``, ``'a', 'b'``,
    ``map('DE', 'EUR')``.

    Raises:
        ConfigError: the value is of no SQL kind (e.g. ``None``).
    """
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"CAST('{value!r}' AS DOUBLE)"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return ", ".join(sql_literal(v) for v in value)
    if isinstance(value, Mapping):
        return "map(" + ", ".join(f"{sql_literal(k)}, {sql_literal(v)}" for k, v in value.items()) + ")"
    raise ConfigError(
        f"a model parameter {value!r} has no SQL literal (use a string, number, boolean, list or map)"
    )


def render(settings: Settings, model: GoldModel) -> tuple[str, list[str]]:
    """The model's SQL with every ``ref`` resolved, and the tables it refers to (in order, once each).

    Raises:
        ConfigError: the template does not parse, or ``ref`` names a table without a contract.
    """
    if model.source_file is None:
        return "", list(model.model.inputs)
    tables = load_catalog(settings).tables
    refs: list[str] = []

    def ref(table: str) -> str:
        if table not in tables:
            raise ConfigError(f"{model.where}: ref({table!r}) names a table without a contract")
        if table not in refs:
            refs.append(table)
        return delta_ref(_path(settings, table))

    def param(name: str) -> str:
        if name not in model.model.params:
            raise ConfigError(
                f"{model.where}: param({name!r}) is not in the model's params {sorted(model.model.params)}"
            )
        return sql_literal(model.model.params[name])

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # SQL, not HTML
    try:
        sql = environment.from_string(model.source_file.read_text(encoding="utf-8")).render(
            ref=ref, param=param
        )
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{model.where}: {exc}") from exc
    return sql, refs


def upstream_tables(settings: Settings, table: str) -> list[str]:
    """The tables a model reads (its ``ref`` calls or its transform's ``inputs``)."""
    return render(settings, gold_model(settings, table))[1]


def _conform(frame: DataFrame, model: GoldModel) -> DataFrame:
    missing = [c.name for c in model.contract.columns if c.name not in frame.columns]
    if missing:
        raise ConfigError(f"{model.where}: the model's result has no column {missing} (its contract has)")
    return frame.select(*[F.col(f"`{c.name}`").cast(c.type).alias(c.name) for c in model.contract.columns])


def model_frame(spark: SparkSession, settings: Settings, model: GoldModel) -> DataFrame:
    """The model's result, shaped by its contract (not yet validated or written)."""
    sql, refs = render(settings, model)
    missing = [t for t in refs if not is_delta_table(spark, _path(settings, t))]
    if missing:
        raise DataError(f"{model.name} reads {missing}, which are not built yet: build them first")
    if model.model.sql is not None:
        try:
            frame = spark.sql(sql)
            frame.columns  # noqa: B018 -- analyses the query now (Spark Connect would only at the write)
        except AnalysisException as exc:
            reason = str(exc).strip().splitlines()[0]  # what and where; the plan follows
            raise ConfigError(f"{model.where}: the query does not analyse over {refs}: {reason}") from exc
    else:
        name = str(model.model.python)
        if name not in TRANSFORMS:
            raise ConfigError(f"{model.where}: no gold transform {name!r} (registered: {sorted(TRANSFORMS)})")
        inputs = {t: spark.read.format("delta").load(_path(settings, t)) for t in refs}
        try:
            frame = TRANSFORMS[name](spark, inputs, model.model.params)
        except ConfigError as exc:
            raise ConfigError(f"{model.where}: {exc}") from exc
    return _conform(frame, model)


@dataclass(frozen=True)
class ModelReport:
    """One build of a model."""

    table: str
    materialize: str
    rows: int
    inputs: tuple[str, ...]


def build_model(
    spark: SparkSession, settings: Settings, table: str, *, run_id: str | None = None
) -> ModelReport:
    """Build a declared gold model: run it, validate it with its suite, write it.

    Raises:
        ConfigError: the declaration or its SQL is wrong (names the file).
        QualityError: a ``fail`` rule of the table's suite failed (the table is left as it was).
    """
    from lakehouse.gold import write_gold
    from lakehouse.quality import check_batch
    from lakehouse.quality.suites import suite_path

    model = gold_model(settings, table)
    run = run_id or str(uuid.uuid4())
    has_suite = suite_path(settings, table).is_file()
    try:
        frame = model_frame(spark, settings, model)
        if model.model.materialize == "full":
            rows = write_gold(
                frame, model.path, table=table if has_suite else None, settings=settings, run_id=run
            )
        else:
            if has_suite:
                frame = check_batch(frame, table, settings=settings, run_id=run, batch_id=0).valid
            rows = _merge(spark, frame, model)
    except Exception as exc:
        # raise_error arrives as whichever Spark error wraps the failed job; any other error goes on as it is
        raised = _raised_by_model(exc)
        if raised is None:
            raise
        raise DataError(f"{model.where} stopped the build of {table}: {raised}") from exc
    log.info("gold model %s: %d rows (%s)", table, rows, model.model.materialize)
    return ModelReport(
        table=table, materialize=model.model.materialize, rows=rows, inputs=tuple(render(settings, model)[1])
    )


_RAISED: Final = re.compile(r"\[USER_RAISED_EXCEPTION\]\s*(.*?)(?:\s*SQLSTATE: P0001|\n|$)")


def _raised_by_model(exc: BaseException) -> str | None:
    """The message of a ``raise_error(...)`` in the model's SQL, or None for any other Spark error."""
    # A task's raise_error reaches the driver wrapped in a job failure: the error class is in its text.
    found = _RAISED.search(str(exc))
    return found.group(1).strip() if found else None


def _merge(spark: SparkSession, frame: DataFrame, model: GoldModel) -> int:
    if not is_delta_table(spark, model.path):
        writer = frame.limit(0).write.format("delta").mode("append")
        if model.model.partition_by:
            writer = writer.partitionBy(*model.model.partition_by)
        writer.save(model.path)
    view = f"gold_model_{uuid.uuid4().hex[:12]}"
    frame.createOrReplaceTempView(view)
    on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in model.model.unique_key)
    try:
        spark.sql(
            f"MERGE INTO {delta_ref(model.path)} t USING {view} s ON {on} "
            "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
        )
    finally:
        spark.catalog.dropTempView(view)
    return spark.read.format("delta").load(model.path).count()
