"""Gaps in a time series, per entity: the ``gaps`` transform of gold models.

A gap is two consecutive rows of one entity (in time order) further apart than ``gap_factor`` × the entity's
expected interval — given, or the median gap of the entity. It is what SQL says only clumsily (a window, a
per-entity median joined back, a threshold), so it is a registered transform, generic over the columns its
model names::

    model:
      python: gaps
      inputs: [silver.meter_readings]
      params:
        entity: [meter_id]            # the columns that identify one series
        time: measured_at             # its timestamp
        order: [seq]                  # tie-breakers for rows of equal time (optional)
        gap_factor: 5                 # a gap is longer than this many expected intervals (> 1)
        expected_interval_s: median   # seconds, or median (default): each entity's median gap
        start_as: silent_from         # the output's column names (default gap_start / gap_end)
        end_as: heard_again_at

The result has the entity columns, ``<start_as>`` (the last row before the gap), ``<end_as>`` (the first
after it), ``gap_seconds``, ``expected_interval_s`` and ``detected_at``: one row per gap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse.errors import ConfigError
from lakehouse.gold.transforms import transform

DEFAULT_GAP_FACTOR: Final = 5.0
MEDIAN: Final = "median"
_PARAMS: Final = frozenset(
    {"input", "entity", "time", "order", "gap_factor", "expected_interval_s", "start_as", "end_as"}
)


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def gaps(
    frame: DataFrame,
    *,
    entity: Sequence[str],
    time: str,
    order: Sequence[str] = (),
    gap_factor: float = DEFAULT_GAP_FACTOR,
    expected_interval_s: float | None = None,
    start_as: str = "gap_start",
    end_as: str = "gap_end",
) -> DataFrame:
    """The gaps of each entity's series: consecutive rows further apart than expected.

    Args:
        frame: the series (at least the ``entity``, ``time`` and ``order`` columns).
        entity: the columns that identify one series (e.g. a device id).
        time: the timestamp column.
        order: tie-breakers among rows of one entity with the same time.
        gap_factor: a gap longer than this many expected intervals is reported; must be greater than 1.
        expected_interval_s: every entity's expected interval in seconds; None: each entity's median gap.
        start_as: the output column of the last time before the gap.
        end_as: the output column of the first time after it.

    Returns:
        One row per gap: the entity columns, ``start_as``, ``end_as``, ``gap_seconds``,
        ``expected_interval_s`` and ``detected_at``.

    Raises:
        ConfigError: a named column is missing, ``gap_factor`` is not above 1 or the interval not positive.

    Example:
        >>> gaps(readings, entity=["device_id"], time="device_time", order=["seq"])  # doctest: +SKIP
    """
    if not entity:
        raise ConfigError("gaps: name the entity columns (entity: [<column>, …])")
    missing = [c for c in [*entity, time, *order] if c not in frame.columns]
    if missing:
        raise ConfigError(f"gaps: the input has no column {missing} (it has {frame.columns})")
    clash = {start_as, end_as, "gap_seconds", "expected_interval_s", "detected_at"} & set(entity)
    if clash or start_as == end_as:
        raise ConfigError(f"gaps: output column names clash: {sorted(clash) or [start_as]}")
    if gap_factor <= 1:
        raise ConfigError(f"gaps: gap_factor must be greater than 1 (got {gap_factor})")
    if expected_interval_s is not None and expected_interval_s <= 0:
        raise ConfigError(f"gaps: expected_interval_s must be positive (got {expected_interval_s})")
    keys = [F.col(_q(c)) for c in entity]
    ties = [c for c in order if c not in entity]  # an entity column orders nothing within its series
    series = Window.partitionBy(*keys).orderBy("_end", *[f"_tie_{i}" for i in range(len(ties))])
    steps = (
        frame.where(F.col(_q(time)).isNotNull())
        .select(
            *keys,
            F.col(_q(time)).alias("_end"),
            *[F.col(_q(c)).alias(f"_tie_{i}") for i, c in enumerate(ties)],
        )
        .withColumn("_start", F.lag("_end").over(series))
        .where(F.col("_start").isNotNull())
        .withColumn("gap_seconds", (F.unix_micros("_end") - F.unix_micros("_start")) / F.lit(1_000_000.0))
    )
    if expected_interval_s is not None:
        expected = steps.withColumn("expected_interval_s", F.lit(float(expected_interval_s)))
    else:
        # An observed gap (not an average of two): a series' usual step, robust to the gaps themselves.
        medians = steps.groupBy(*[F.col(_q(c)).alias(f"_m_{c}") for c in entity]).agg(
            F.percentile_approx("gap_seconds", 0.5).alias("expected_interval_s")
        )
        on = [F.col(_q(c)).eqNullSafe(F.col(f"_m_{c}")) for c in entity]
        expected = steps.join(medians, on).drop(*[f"_m_{c}" for c in entity])
    return expected.where(
        (F.col("expected_interval_s") > 0)
        & (F.col("gap_seconds") > F.col("expected_interval_s") * F.lit(float(gap_factor)))
    ).select(
        *keys,
        F.col("_start").alias(start_as),
        F.col("_end").alias(end_as),
        F.col("gap_seconds").cast("double").alias("gap_seconds"),
        F.col("expected_interval_s").cast("double").alias("expected_interval_s"),
        F.current_timestamp().alias("detected_at"),
    )


def _names(params: Mapping[str, Any], name: str, *, required: bool) -> list[str]:
    value = params.get(name)
    if value is None:
        if required:
            raise ConfigError(f"gaps: params.{name} is required (a column name or a list of them)")
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"gaps: params.{name} must be a column name or a list of them (got {value!r})")
    return names


def _number(params: Mapping[str, Any], name: str, default: float, *, median: bool = False) -> float | None:
    value = params.get(name, MEDIAN if median else default)
    if median and value == MEDIAN:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        hint = f"a number of seconds or {MEDIAN!r}" if median else "a number"
        raise ConfigError(f"gaps: params.{name} must be {hint} (got {value!r})")
    return float(value)


@transform("gaps")
def gaps_model(spark: SparkSession, inputs: Mapping[str, DataFrame], params: Mapping[str, Any]) -> DataFrame:
    """The ``gaps`` transform as a gold model runs it: :func:`gaps` over the model's input with its params.

    ``params.input`` names the input when the model has several.

    Raises:
        ConfigError: an unknown, missing or ill-typed parameter, or an input the model does not read.
    """
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise ConfigError(f"gaps: unknown params {unknown} (known: {sorted(_PARAMS)})")
    chosen = params.get("input")
    if chosen is None:
        if len(inputs) != 1:
            raise ConfigError(f"gaps: the model reads {sorted(inputs)}: say which with params.input")
        frame = next(iter(inputs.values()))
    elif chosen in inputs:
        frame = inputs[chosen]
    else:
        raise ConfigError(f"gaps: params.input {chosen!r} is not one of the model's inputs {sorted(inputs)}")
    time = _names(params, "time", required=True)
    if len(time) != 1:
        raise ConfigError(f"gaps: params.time must be one column (got {time})")
    factor = _number(params, "gap_factor", DEFAULT_GAP_FACTOR)
    assert factor is not None  # only the interval may be the median
    return gaps(
        frame,
        entity=_names(params, "entity", required=True),
        time=time[0],
        order=_names(params, "order", required=False),
        gap_factor=factor,
        expected_interval_s=_number(params, "expected_interval_s", 0.0, median=True),
        start_as=str(params.get("start_as", "gap_start")),
        end_as=str(params.get("end_as", "gap_end")),
    )
