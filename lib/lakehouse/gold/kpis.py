"""Daily KPIs and the conversion funnel, computed from gold sessions."""

from __future__ import annotations

from typing import Final

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from lakehouse.clickstream import FUNNEL
from lakehouse.gold.sessions import EVENT_COUNT_COLUMNS, conform, require_columns

KPI_DIMENSIONS: Final = ("date", "platform", "channel", "country", "currency")

# Gold: one row per (date, platform, channel, country); currency is the country's one currency.
GOLD_DAILY_KPIS: Final = StructType(
    [
        StructField("date", DateType(), False),
        StructField("platform", StringType()),
        StructField("channel", StringType()),
        StructField("country", StringType()),
        StructField("currency", StringType()),
        StructField("active_users", LongType(), False),
        StructField("sessions", LongType(), False),
        StructField("reached_product_view", LongType(), False),
        StructField("reached_add_to_cart", LongType(), False),
        StructField("reached_checkout", LongType(), False),
        StructField("converted_sessions", LongType(), False),
        StructField("orders", LongType(), False),
        StructField("revenue", DoubleType(), False),
        StructField("conversion_rate", DoubleType(), False),
    ]
)

# Gold: sessions reaching each funnel step, in funnel order.
GOLD_FUNNEL: Final = StructType(
    [
        StructField("step", StringType(), False),
        StructField("step_order", IntegerType(), False),
        StructField("sessions", LongType(), False),
    ]
)

_SESSION_COLUMNS: Final = (
    "session_date",
    "user_id",
    "platform",
    "channel",
    "country",
    "currency",
    "product_views",
    "add_to_carts",
    "checkouts",
    "purchases",
    "revenue",
    "converted",
)


def _sessions_reaching(count_column: str) -> Column:
    return F.count(F.when(F.col(count_column) > 0, True))


def daily_kpis(sessions: DataFrame) -> DataFrame:
    """Daily KPIs per platform, channel and country, with the country's currency.

    Args:
        sessions: gold sessions (:data:`lakehouse.gold.sessions.GOLD_SESSIONS`).

    Returns:
        One row per (``date``, ``platform``, ``channel``, ``country``) with the columns of
        :data:`GOLD_DAILY_KPIS`. ``date`` is the session's start date (UTC). ``currency`` is the country's
        currency seen on any purchasing session of that country and day (null when none purchased), so
        ``revenue`` is summed in one currency per row. ``active_users`` counts distinct users in the row
        (a user active on two platforms counts in both rows: do not add rows up to get daily users).
        ``conversion_rate`` is ``converted_sessions / sessions``.

    Raises:
        DataError: a needed column is missing.
    """
    require_columns(sessions, _SESSION_COLUMNS, "gold sessions")
    # One currency per country: any non-null value of that country's day is the one.
    country_day = Window.partitionBy("session_date", "country")
    with_currency = sessions.withColumn("currency", F.max("currency").over(country_day))
    kpis = with_currency.groupBy(
        F.col("session_date").alias("date"), "platform", "channel", "country", "currency"
    ).agg(
        F.countDistinct("user_id").alias("active_users"),
        F.count(F.lit(1)).alias("sessions"),
        _sessions_reaching("product_views").alias("reached_product_view"),
        _sessions_reaching("add_to_carts").alias("reached_add_to_cart"),
        _sessions_reaching("checkouts").alias("reached_checkout"),
        F.count(F.when(F.col("converted"), True)).alias("converted_sessions"),
        F.coalesce(F.sum("purchases"), F.lit(0)).alias("orders"),
        F.coalesce(F.sum("revenue"), F.lit(0.0)).alias("revenue"),
    )
    kpis = kpis.withColumn("conversion_rate", F.col("converted_sessions") / F.col("sessions"))
    return conform(kpis, GOLD_DAILY_KPIS)


def funnel(sessions: DataFrame) -> DataFrame:
    """Sessions reaching each step of :data:`lakehouse.clickstream.FUNNEL`.

    A session reaches a step when it has at least one event of that type (``page_views > 0`` for
    ``page_view``, and so on), so a session that purchased without a recorded checkout counts for
    ``purchase`` but not for ``checkout``. Filter ``sessions`` first for a day, platform or channel.

    Args:
        sessions: gold sessions (:data:`lakehouse.gold.sessions.GOLD_SESSIONS`).

    Returns:
        One row per step with the columns of :data:`GOLD_FUNNEL` (``step_order`` from 1), ordered by step.

    Raises:
        DataError: a needed count column is missing.
    """
    columns = [EVENT_COUNT_COLUMNS[step] for step in FUNNEL]
    require_columns(sessions, columns, "gold sessions")
    reached = sessions.agg(
        *(_sessions_reaching(column).alias(step) for step, column in zip(FUNNEL, columns, strict=True))
    )
    steps = F.array(
        *(
            F.struct(
                F.lit(step).alias("step"),
                F.lit(order).alias("step_order"),
                F.col(step).alias("sessions"),
            )
            for order, step in enumerate(FUNNEL, start=1)
        )
    )
    exploded = reached.select(F.explode(steps).alias("s")).select("s.*")
    return conform(exploded, GOLD_FUNNEL).orderBy("step_order")
