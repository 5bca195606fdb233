"""Sessionization, a gold transform: one entity's rows grouped by an inactivity gap, one row per session.

What SQL cannot say in one query (a running session number over an entity's ordered rows), declared in a gold
contract's ``model`` section; the columns and the per-session aggregates come from the declaration, so any
entity/time series can be sessionized (users' clicks, a device's readings, a vehicle's pings)::

    model:
      python: sessionize
      inputs: [silver.readings]
      params:
        entity: [device_id]              # the column(s) a session belongs to
        time: read_at                    # a timestamp: orders an entity's rows, the gap is measured on it
        order_by: [seq]                  # tie-break of rows at the same instant (optional)
        gap_minutes: 30                  # a gap strictly longer starts a new session; exactly this long stays
        counts:                          # rows matching a Spark SQL condition
          readings: "true"
          alarms: "level = 'alarm'"
        sums:                            # the sum of a Spark SQL expression (0 when no row has a value)
          energy_kwh: energy_kwh
        first: [firmware, site]          # the value on the session's first row (by time, then order_by)
        aggregates:                      # any other Spark SQL aggregate over the session's rows
          peak_c: max(temperature_c)
        derive:                          # Spark SQL over the session's row, in order; may replace a column
          alarmed: alarms > 0

Every session also has ``session_id`` (the entity's values and the epoch seconds of its start, joined by
``-``), ``session_start`` and ``session_end`` (its first and last ``time``), ``session_date`` (the UTC date of
the start, whatever the Spark session's time zone) and ``duration_s``. The model's contract then picks and
casts the columns it declares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse.errors import ConfigError, DataError
from lakehouse.gold.transforms import transform

SESSION_COLUMNS: Final = ("session_id", "session_start", "session_end", "session_date", "duration_s")

_MICROS_PER_SECOND: Final = 1_000_000
_SECONDS_PER_DAY: Final = 86_400
# Working columns; the double underscore keeps them clear of any declared name.
_STARTS: Final = "__starts_session"
_SEQ: Final = "__session_seq"
_FIRST: Final = "__first_row"


class SessionSpec(BaseModel):
    """The ``params`` of a ``sessionize`` model (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entity: list[str] = Field(min_length=1)
    time: str
    order_by: list[str] = Field(default_factory=list)
    gap_minutes: float = Field(gt=0)
    counts: dict[str, str] = Field(default_factory=dict)
    sums: dict[str, str] = Field(default_factory=dict)
    first: list[str] = Field(default_factory=list)
    aggregates: dict[str, str] = Field(default_factory=dict)
    derive: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_names(self) -> SessionSpec:
        names = [
            *self.entity,
            *SESSION_COLUMNS,
            *self.counts,
            *self.sums,
            *self.aggregates,
            *self.first,
        ]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"session columns {twice} are declared twice (entity, {', '.join(SESSION_COLUMNS)}, counts, "
                "sums, aggregates and first name distinct columns; derive may replace one)"
            )
        return self

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SessionSpec:
        """Read a model's ``params``.

        Raises:
            ConfigError: a parameter is missing, unknown or of the wrong type (the message names it).
        """
        try:
            return cls.model_validate(dict(params))
        except ValidationError as exc:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in e['loc']) or '(all)'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"sessionize: {problems}") from exc


def _col(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")  # a declared name, never a path into a struct


def _utc_date(ts: Column) -> Column:
    # to_date() would use the session time zone; the date of the UTC instant must not depend on it.
    return F.date_from_unix_date(F.floor(F.unix_seconds(ts) / _SECONDS_PER_DAY).cast("int"))


def sessionize(rows: DataFrame, spec: SessionSpec) -> DataFrame:
    """Group ``rows`` into sessions per entity, split where the gap since the previous row exceeds the limit.

    An entity's rows are ordered by ``spec.time`` then ``spec.order_by``; a session starts at the entity's
    first row and at every row more than ``spec.gap_minutes`` after the one before it.

    Args:
        rows: any frame with the columns the spec names (its expressions are Spark SQL over these rows).
        spec: the declaration (:class:`SessionSpec`).

    Returns:
        One row per session: the entity columns, :data:`SESSION_COLUMNS`, then the declared counts, sums,
        aggregates and first-row values, with ``derive`` applied last.

    Raises:
        DataError: ``rows`` lack a column the spec names (entity, time, order_by, first).
        ConfigError: a declared expression does not analyse over ``rows`` (Spark's message says why).

    Example:
        >>> spec = SessionSpec(entity=["user_id"], time="event_time", gap_minutes=30, counts={"n": "true"})
        >>> sessionize(events, spec).columns[:3]  # doctest: +SKIP
        ['session_id', 'user_id', 'session_start']
    """
    named = [*spec.entity, spec.time, *spec.order_by, *spec.first]
    missing = [c for c in dict.fromkeys(named) if c not in rows.columns]
    if missing:
        raise DataError(
            f"sessionize: the input lacks columns {missing} (has {rows.columns}): "
            "fix the model's params or the input table"
        )
    time = _col(spec.time)
    entity = [_col(c) for c in spec.entity]
    order_by = [_col(c) for c in spec.order_by]
    by_entity = Window.partitionBy(*entity).orderBy(time, *order_by)
    gap_micros = int(spec.gap_minutes * 60 * _MICROS_PER_SECOND)
    since_previous = F.unix_micros(time) - F.unix_micros(F.lag(time).over(by_entity))
    starts = F.when(since_previous.isNull() | (since_previous > gap_micros), 1).otherwise(0)
    numbered = rows.withColumn(_STARTS, starts).withColumn(
        _SEQ, F.sum(_STARTS).over(by_entity.rowsBetween(Window.unboundedPreceding, Window.currentRow))
    )

    try:
        return _sessions(numbered, spec)
    except AnalysisException as exc:
        # Spark's first line names the expression and the column it could not resolve; the plan follows it.
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(
            "sessionize: a declared expression (counts, sums, aggregates, derive) does not analyse over "
            f"the input's columns {rows.columns}: {reason}"
        ) from exc


def _sessions(numbered: DataFrame, spec: SessionSpec) -> DataFrame:
    time, entity, order_by = _col(spec.time), [_col(c) for c in spec.entity], [_col(c) for c in spec.order_by]
    aggregates = [
        F.min(time).alias("session_start"),
        F.max(time).alias("session_end"),
        *(F.count(F.when(F.expr(condition), True)).alias(name) for name, condition in spec.counts.items()),
        *(F.coalesce(F.sum(F.expr(value)), F.lit(0)).alias(name) for name, value in spec.sums.items()),
        *(F.expr(aggregate).alias(name) for name, aggregate in spec.aggregates.items()),
    ]
    if spec.first:
        first_row = F.struct(*[_col(c) for c in spec.first])
        aggregates.append(F.min_by(first_row, F.struct(time, *order_by)).alias(_FIRST))
    sessions = numbered.groupBy(*entity, _SEQ).agg(*aggregates)
    start, end = F.col("session_start"), F.col("session_end")
    shaped = sessions.select(
        F.concat_ws("-", *[c.cast("string") for c in entity], F.unix_seconds(start).cast("string")).alias(
            "session_id"
        ),
        *entity,
        start.alias("session_start"),
        end.alias("session_end"),
        _utc_date(start).alias("session_date"),
        ((F.unix_micros(end) - F.unix_micros(start)) / _MICROS_PER_SECOND).alias("duration_s"),
        *[_col(name) for name in [*spec.counts, *spec.sums, *spec.aggregates]],
        *[F.col(_FIRST).getField(name).alias(name) for name in spec.first],
    )
    for name, expression in spec.derive.items():
        shaped = shaped.withColumn(name, F.expr(expression))
    shaped.schema  # noqa: B018 -- analyses the plan now (Spark Connect would only at the write)
    return shaped


@transform("sessionize")
def sessionize_model(
    spark: SparkSession, inputs: Mapping[str, DataFrame], params: Mapping[str, Any]
) -> DataFrame:
    """The registered transform: :func:`sessionize` over a model's one input, with its ``params``.

    Raises:
        ConfigError: the model does not have exactly one input, or its params are wrong.
    """
    if len(inputs) != 1:
        raise ConfigError(f"sessionize reads one input table (inputs: [layer.name]); got {sorted(inputs)}")
    (rows,) = inputs.values()
    return sessionize(rows, SessionSpec.from_params(params))
