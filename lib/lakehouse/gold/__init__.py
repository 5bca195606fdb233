"""Gold: tables declared as models (:mod:`lakehouse.gold.models`), recomputed and written as Delta tables.

The demo's marts (sessions, daily KPIs, the funnel, revenue in a reporting currency) are declarations:
``catalog/gold/<name>.yaml`` (section ``model``) with ``models/gold/<name>.sql`` or a registered transform
(:mod:`lakehouse.gold.sessionize`).
"""

from __future__ import annotations

import logging
import uuid

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame
from pyspark.sql.types import StructType

from lakehouse.config import Settings
from lakehouse.errors import DataError

__all__ = ["write_gold"]

log = logging.getLogger(__name__)


def _shape(schema: StructType) -> list[tuple[str, str]]:
    # Nullability is not compared: Spark derives it per plan, and Delta enforces NOT NULL on its own.
    return [(field.name, field.dataType.simpleString()) for field in schema.fields]


def _existing_schema(df: DataFrame, path: str) -> StructType | None:
    try:
        return df.sparkSession.read.format("delta").load(path).schema
    except AnalysisException as exc:
        # No table there yet (or not a Delta table: the write below then says so).
        log.debug("no readable Delta table at %s: %s", path, exc)
        return None


def write_gold(
    df: DataFrame,
    path: str,
    *,
    table: str | None = None,
    settings: Settings | None = None,
    run_id: str | None = None,
) -> int:
    """Overwrite the Delta table at ``path`` with ``df``; the table's schema may not change.

    Gold is recomputed from silver on each run, so the whole table is replaced. A frame whose columns or
    types differ from the existing table's is refused (Delta's ``overwriteSchema`` stays false), so a schema
    change is a deliberate act: drop the table, or migrate it, then rerun.

    Args:
        df: the mart to write.
        path: the Delta table's location (local path or object-store URI).
        table, settings, run_id: with ``table`` (e.g. ``"gold.sessions"``) and ``settings``, the table's
            expectation suite validates the mart before the overwrite (warn/fail rules); results carry
            ``run_id`` (default a new UUID).

    Returns:
        The number of rows in the table after the write.

    Raises:
        DataError: ``df``'s schema differs from the existing table's.
        QualityError: a ``fail`` rule of the table's suite failed (the table is left as it was).

    Example:
        >>> write_gold(model_frame(spark, settings, model), model.path, table=model.name, settings=settings)
    """
    existing = _existing_schema(df, path)
    if existing is not None and _shape(existing) != _shape(df.schema):
        raise DataError(
            f"the gold table at {path} has schema {_shape(existing)} but the new data has "
            f"{_shape(df.schema)}: gold schemas do not drift silently — drop or migrate the table "
            "to change it"
        )
    if table is not None and settings is not None:
        from lakehouse.quality import check_batch

        run = run_id or str(uuid.uuid4())
        # The checked frame is materialised: the overwrite below does not recompute the mart.
        df = check_batch(df, table, settings=settings, run_id=run, batch_id=0).valid
    try:
        df.write.format("delta").mode("overwrite").option("overwriteSchema", "false").save(path)
    except AnalysisException as exc:
        raise DataError(f"writing the gold table at {path} failed: {exc}") from exc
    rows = df.sparkSession.read.format("delta").load(path).count()
    log.info("wrote %d rows to gold table %s", rows, path)
    return rows
