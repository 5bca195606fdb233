"""Gold ``revenue_daily``: daily revenue per country in its own currency and in a reporting currency.

ECB reference rates are quoted as units of a currency per 1 EUR and published on TARGET business days only,
so a weekend or holiday uses the last rate published before it (at most ``max_carry_days`` back — an older
rate means the FX pull is behind, which is an error, not something to paper over).
"""

from __future__ import annotations

from typing import Final

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, DoubleType, StringType, StructField, StructType

from lakehouse.clickstream import COUNTRY_CURRENCY
from lakehouse.errors import DataError
from lakehouse.gold.sessions import conform, require_columns

DEFAULT_MAX_CARRY_DAYS: Final = 7

GOLD_REVENUE_DAILY: Final = StructType(
    [
        StructField("date", DateType(), False),
        StructField("country", StringType()),
        StructField("currency", StringType()),
        StructField("revenue", DoubleType(), False),
        StructField("rate_per_eur", DoubleType()),
        StructField("revenue_eur", DoubleType(), False),
        StructField("reporting_currency", StringType(), False),
        StructField("revenue_reporting", DoubleType(), False),
    ]
)

_KPI_COLUMNS: Final = ("date", "country", "currency", "revenue")
_RATE_COLUMNS: Final = ("date", "currency", "rate_per_eur")


def _rates_with_euro(rates: DataFrame) -> DataFrame:
    """Rates plus EUR at 1.0 on every day any rate was published (the ECB does not quote the euro)."""
    days = rates.select("date").distinct()
    euro = days.select("date", F.lit("EUR").alias("currency"), F.lit(1.0).alias("rate_per_eur"))
    return rates.select(*_RATE_COLUMNS).where(F.col("currency") != "EUR").unionByName(euro)


def _rate_on(days: DataFrame, rates: DataFrame, max_carry_days: int, prefix: str) -> DataFrame:
    """For each (date, currency) of ``days``: the rate published that day or the last one before it."""
    candidates = days.alias("d").join(
        rates.alias("r"),
        (F.col("d.currency") == F.col("r.currency"))
        & (F.col("r.date") <= F.col("d.date"))
        & (F.col("r.date") >= F.date_sub(F.col("d.date"), max_carry_days)),
        "left",
    )
    newest = Window.partitionBy(F.col("d.date"), F.col("d.currency")).orderBy(
        F.col("r.date").desc_nulls_last()
    )
    return (
        candidates.withColumn("_rank", F.row_number().over(newest))
        .where(F.col("_rank") == 1)
        .select(
            F.col("d.date").alias("date"),
            F.col("d.currency").alias("currency"),
            F.col("r.rate_per_eur").alias(f"{prefix}rate"),
            F.col("r.date").alias(f"{prefix}rate_date"),
        )
    )


def with_reporting_currency(
    kpis: DataFrame,
    rates: DataFrame,
    reporting: str = "EUR",
    *,
    max_carry_days: int = DEFAULT_MAX_CARRY_DAYS,
) -> DataFrame:
    """Daily revenue per country, converted to EUR and to ``reporting`` at each day's ECB rate.

    Args:
        kpis: gold ``daily_kpis`` (needs ``date``, ``country``, ``currency``, ``revenue``); rows of one
            (date, country) are summed. A null ``currency`` (no purchase that day) is filled from the
            country's currency (:data:`lakehouse.clickstream.COUNTRY_CURRENCY`).
        rates: silver ``fx_rates`` (``date``, ``currency``, ``rate_per_eur`` = units per 1 EUR).
        reporting: the reporting currency (EUR or any currency in ``rates``).
        max_carry_days: how many days back a missing day's rate may be carried from.

    Returns:
        :data:`GOLD_REVENUE_DAILY`, one row per (date, country): ``revenue_eur = revenue / rate_per_eur``
        and ``revenue_reporting = revenue_eur * rate_per_eur(reporting)``, both with the day's rate or the
        last one published before it.

    Raises:
        DataError: a needed column is missing, or a row with revenue has no rate within ``max_carry_days``
            (the message names the currencies and dates — pull newer rates).

    Example:
        >>> revenue = with_reporting_currency(kpis, rates, "USD")  # doctest: +SKIP
    """
    require_columns(kpis, _KPI_COLUMNS, "gold daily KPIs")
    require_columns(rates, _RATE_COLUMNS, "silver FX rates")
    if max_carry_days < 0:
        raise DataError(f"max_carry_days must be >= 0 (got {max_carry_days})")
    reporting = reporting.strip().upper()
    country_currency = F.create_map(*(F.lit(v) for pair in COUNTRY_CURRENCY.items() for v in pair))
    daily = (
        kpis.withColumn("currency", F.coalesce(F.col("currency"), country_currency[F.col("country")]))
        .groupBy("date", "country")
        .agg(F.max("currency").alias("currency"), F.coalesce(F.sum("revenue"), F.lit(0.0)).alias("revenue"))
    )
    known = _rates_with_euro(rates)
    local = _rate_on(daily.select("date", "currency").distinct(), known, max_carry_days, "local_")
    target = _rate_on(
        daily.select("date", F.lit(reporting).alias("currency")).distinct(), known, max_carry_days, "target_"
    ).drop("currency")
    # Computed once: the missing-rate check below and the caller's write both read this snapshot.
    joined = (
        daily.join(local, ["date", "currency"], "left")
        .join(target, ["date"], "left")
        .localCheckpoint(eager=True)
    )
    missing = joined.where(
        (F.col("revenue") != 0) & (F.col("local_rate").isNull() | F.col("target_rate").isNull())
    ).select("date", "currency")
    problems = missing.distinct().orderBy("date", "currency").limit(10).collect()
    if problems:
        shown = ", ".join(f"{row['currency']} on {row['date']}" for row in problems)
        raise DataError(
            f"no FX rate within {max_carry_days} days for {shown} (reporting {reporting}): pull newer rates "
            "(`lakehouse api pull --source fx_rates`) and rebuild silver fx_rates"
        )
    revenue_eur = F.when(F.col("revenue") == 0, F.lit(0.0)).otherwise(F.col("revenue") / F.col("local_rate"))
    converted = joined.select(
        "date",
        "country",
        "currency",
        "revenue",
        F.col("local_rate").alias("rate_per_eur"),
        revenue_eur.alias("revenue_eur"),
        F.lit(reporting).alias("reporting_currency"),
        F.when(F.col("revenue") == 0, F.lit(0.0))
        .otherwise(revenue_eur * F.col("target_rate"))
        .alias("revenue_reporting"),
    )
    return conform(converted, GOLD_REVENUE_DAILY)
