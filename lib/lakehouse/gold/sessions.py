"""Sessions: silver events grouped per user by an inactivity gap, one row per session.

A session is rebuilt on the server side rather than trusted from the client's ``client_session_id``:
clients reset their id on app restarts and old app versions never send one, so the gap rule is the only
definition that holds across platforms and payload versions.
"""

from __future__ import annotations

from typing import Final

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DateType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.errors import DataError

DEFAULT_GAP_MINUTES: Final = 30

# Per event type, the session column that counts it.
EVENT_COUNT_COLUMNS: Final = {
    "page_view": "page_views",
    "product_view": "product_views",
    "search": "searches",
    "add_to_cart": "add_to_carts",
    "checkout": "checkouts",
    "purchase": "purchases",
}
# Taken from the session's first event (by event_time, then event_id).
FIRST_EVENT_ATTRIBUTES: Final = ("platform", "device_type", "os", "app_version", "country", "channel")

# Gold: one row per (user, inactivity-gap session).
GOLD_SESSIONS: Final = StructType(
    [
        StructField("session_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("session_start", TimestampType(), False),
        StructField("session_end", TimestampType(), False),
        StructField("session_date", DateType(), False),
        StructField("duration_s", DoubleType(), False),
        StructField("events", LongType(), False),
        *(StructField(name, LongType(), False) for name in EVENT_COUNT_COLUMNS.values()),
        StructField("revenue", DoubleType(), False),
        StructField("currency", StringType()),
        *(StructField(name, StringType()) for name in FIRST_EVENT_ATTRIBUTES),
        StructField("converted", BooleanType(), False),
    ]
)

_REQUIRED_EVENT_COLUMNS: Final = (
    "event_id",
    "event_type",
    "event_time",
    "user_id",
    "revenue",
    "currency",
    *FIRST_EVENT_ATTRIBUTES,
)
_MICROS_PER_SECOND: Final = 1_000_000
_SECONDS_PER_DAY: Final = 86_400


def conform(df: DataFrame, schema: StructType) -> DataFrame:
    """Select and cast ``df``'s columns into ``schema``'s order and types (nullability is left to Spark).

    Args:
        df: a frame holding at least every column of ``schema``.
        schema: the contract to project onto.

    Returns:
        The frame with exactly ``schema``'s columns, in order.

    Raises:
        DataError: a column of ``schema`` is missing from ``df``.
    """
    missing = [field.name for field in schema.fields if field.name not in df.columns]
    if missing:
        raise DataError(f"cannot conform to the schema: columns {missing} are missing (have {df.columns})")
    # Cast by DDL name: over Spark Connect, cast(StringType()) records "string collate UTF8_BINARY" in the
    # Delta log, which delta-rs (the dashboards' and notebooks' reader) cannot parse.
    return df.select(
        *(F.col(field.name).cast(field.dataType.simpleString()).alias(field.name) for field in schema.fields)
    )


def require_columns(df: DataFrame, columns: tuple[str, ...] | list[str], what: str) -> None:
    """Raise :class:`DataError` naming the ``columns`` that ``df`` lacks.

    Args:
        df: the input frame.
        columns: the columns the caller needs.
        what: the input's name in the message (e.g. ``"silver events"``).
    """
    missing = [name for name in columns if name not in df.columns]
    if missing:
        raise DataError(f"{what} lack columns {missing}: pass a frame with the {what} schema")


def _utc_date(ts: Column) -> Column:
    # to_date() would use the session time zone; the date of the UTC instant must not depend on it.
    return F.date_from_unix_date(F.floor(F.unix_seconds(ts) / _SECONDS_PER_DAY).cast("int"))


def sessionize(events: DataFrame, gap_minutes: int = DEFAULT_GAP_MINUTES) -> DataFrame:
    """Group silver events into per-user sessions split by an inactivity gap.

    A user's events are ordered by ``event_time`` then ``event_id``; a new session starts at the user's first
    event and whenever the time since the previous event is strictly greater than ``gap_minutes``.

    Args:
        events: silver events (:data:`lakehouse.clickstream.SILVER_EVENTS`).
        gap_minutes: the inactivity gap, in minutes (a gap of exactly this long stays in the session).

    Returns:
        One row per session with the columns of :data:`GOLD_SESSIONS`: ``session_id`` is
        ``"{user_id}-{epoch seconds of session_start}"``; counts per event type; ``revenue`` sums purchase
        revenue (0.0 without purchases); ``currency`` is null unless the session purchased, then it is the
        currency seen on the session's events (a purchase's first); device, country and channel come from
        the session's first event; ``converted`` is ``purchases > 0``.

    Raises:
        DataError: ``gap_minutes`` is not positive or a needed column is missing.

    Example:
        >>> sessions = sessionize(spark.read.format("delta").load(silver_path), gap_minutes=30)
    """
    if gap_minutes <= 0:
        raise DataError(f"gap_minutes must be a positive number of minutes (got {gap_minutes})")
    require_columns(events, _REQUIRED_EVENT_COLUMNS, "silver events")

    by_user = Window.partitionBy("user_id").orderBy("event_time", "event_id")
    gap_micros = gap_minutes * 60 * _MICROS_PER_SECOND
    since_previous = F.unix_micros("event_time") - F.unix_micros(F.lag("event_time").over(by_user))
    starts_session = F.when(since_previous.isNull() | (since_previous > gap_micros), 1).otherwise(0)
    numbered = events.withColumn("_starts_session", starts_session).withColumn(
        "_session_seq",
        F.sum("_starts_session").over(by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)),
    )

    event_order = F.struct("event_time", "event_id")
    is_purchase = F.col("event_type") == "purchase"
    # A purchase's currency first, then the earliest event's; null orderings are skipped by min_by.
    currency_order = F.when(F.col("currency").isNotNull(), F.struct(~is_purchase, "event_time", "event_id"))
    counts = [
        F.count(F.when(F.col("event_type") == event_type, True)).alias(column)
        for event_type, column in EVENT_COUNT_COLUMNS.items()
    ]
    sessions = numbered.groupBy("user_id", "_session_seq").agg(
        F.min("event_time").alias("session_start"),
        F.max("event_time").alias("session_end"),
        F.count(F.lit(1)).alias("events"),
        *counts,
        F.coalesce(F.sum(F.when(is_purchase, F.col("revenue"))), F.lit(0.0)).alias("revenue"),
        F.min_by("currency", currency_order).alias("_currency"),
        F.min_by(F.struct(*FIRST_EVENT_ATTRIBUTES), event_order).alias("_first"),
    )
    shaped = sessions.select(
        F.concat_ws("-", "user_id", F.unix_seconds("session_start").cast("string")).alias("session_id"),
        "user_id",
        "session_start",
        "session_end",
        _utc_date(F.col("session_start")).alias("session_date"),
        ((F.unix_micros("session_end") - F.unix_micros("session_start")) / _MICROS_PER_SECOND).alias(
            "duration_s"
        ),
        "events",
        *EVENT_COUNT_COLUMNS.values(),
        "revenue",
        F.when(F.col("purchases") > 0, F.col("_currency")).alias("currency"),
        *(F.col(f"_first.{name}").alias(name) for name in FIRST_EVENT_ATTRIBUTES),
        (F.col("purchases") > 0).alias("converted"),
    )
    return conform(shaped, GOLD_SESSIONS)
