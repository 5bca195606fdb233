"""Gold marts on small inline silver frames: sessionization, daily KPIs, funnel, the Delta writer."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.clickstream import FUNNEL, SILVER_EVENTS
from lakehouse.errors import DataError
from lakehouse.gold import (
    GOLD_DAILY_KPIS,
    GOLD_FUNNEL,
    GOLD_SESSIONS,
    daily_kpis,
    funnel,
    sessionize,
    write_gold,
)

pytestmark = pytest.mark.unit

T0 = datetime(2024, 11, 1, 10, 0, tzinfo=UTC)
CURRENCY = {"DE": "EUR", "US": "USD", "GB": "GBP"}
_offset = iter(range(1_000_000))


def event(
    event_id: str,
    user: str,
    minutes: float,
    event_type: str = "page_view",
    *,
    platform: str = "web",
    country: str = "DE",
    channel: str = "organic",
    device_type: str = "desktop",
    revenue: float | None = None,
    currency_on_all: bool = False,
) -> tuple[Any, ...]:
    """One silver row; v1 payloads carry the currency on every event, v2 only on purchases."""
    at = T0 + timedelta(minutes=minutes)
    purchase = event_type == "purchase"
    currency = CURRENCY[country] if purchase or currency_on_all else None
    return (
        event_id,
        event_type,
        at,
        at.date(),
        user,
        None,
        platform,
        device_type,
        "Linux",
        "1.0" if platform != "web" else None,
        country,
        channel,
        "/",
        None,
        None,
        None,
        None,
        revenue if purchase else None,
        currency,
        f"o-{event_id}" if purchase else None,
        2,
        0,
        next(_offset),
        at,
        None,  # client_ip (a token in silver)
    )


def silver(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, SILVER_EVENTS)


def by_id(df: DataFrame) -> dict[str, dict[str, Any]]:
    return {row["session_id"]: row.asDict() for row in df.collect()}


def epoch(minutes: float) -> int:
    return int((T0 + timedelta(minutes=minutes)).timestamp())


def shape(schema: Any) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in schema.fields]


# --- sessionize ---------------------------------------------------------------------------------------


def test_gap_of_29_minutes_stays_in_the_session_and_31_starts_a_new_one(spark: SparkSession) -> None:
    rows = [event("a1", "u1", 0), event("a2", "u1", 29), event("a3", "u1", 60), event("a4", "u1", 61)]
    sessions = sessionize(silver(spark, rows))
    got = sorted((r["session_id"], r["events"]) for r in sessions.collect())
    assert got == [(f"u1-{epoch(0)}", 2), (f"u1-{epoch(60)}", 2)]


def test_a_gap_of_exactly_the_limit_stays_in_the_session(spark: SparkSession) -> None:
    rows = [event("a1", "u1", 0), event("a2", "u1", 30), event("a3", "u1", 60.5)]
    sessions = by_id(sessionize(silver(spark, rows)))
    assert {k: v["events"] for k, v in sessions.items()} == {f"u1-{epoch(0)}": 2, f"u1-{epoch(60.5)}": 1}


def test_gap_minutes_is_a_parameter(spark: SparkSession) -> None:
    rows = [event("a1", "u1", 0), event("a2", "u1", 10), event("a3", "u1", 16)]
    assert sessionize(silver(spark, rows), gap_minutes=5).count() == 3
    assert sessionize(silver(spark, rows), gap_minutes=10).count() == 1


def test_sessions_are_per_user_and_output_matches_the_schema(spark: SparkSession) -> None:
    rows = [event("a1", "u1", 0), event("b1", "u2", 5), event("a2", "u1", 10), event("b2", "u2", 50)]
    sessions = sessionize(silver(spark, rows))
    assert shape(sessions.schema) == shape(GOLD_SESSIONS)
    got = sorted((r["user_id"], r["events"], r["duration_s"]) for r in sessions.collect())
    assert got == [("u1", 2, 600.0), ("u2", 1, 0.0), ("u2", 1, 0.0)]


def test_counts_revenue_currency_and_converted(spark: SparkSession) -> None:
    rows = [
        event("e1", "u1", 0, "page_view"),
        event("e2", "u1", 1, "search"),
        event("e3", "u1", 2, "product_view"),
        event("e4", "u1", 3, "product_view"),
        event("e5", "u1", 4, "add_to_cart"),
        event("e6", "u1", 5, "checkout"),
        event("e7", "u1", 6, "purchase", revenue=40.0),
        event("e8", "u1", 7, "purchase", revenue=2.5),
        # A second, browsing-only session: no revenue, no currency although v1 events carry one.
        event("f1", "u1", 100, "page_view", currency_on_all=True),
        event("f2", "u1", 101, "add_to_cart", currency_on_all=True),
    ]
    sessions = by_id(
        sessionize(silver(spark, rows)).select(
            "*",
            # Python datetimes come back in the driver's local zone: compare instants instead.
            F.unix_seconds("session_start").alias("start_s"),
            F.unix_seconds("session_end").alias("end_s"),
        )
    )
    bought = sessions[f"u1-{epoch(0)}"]
    assert {k: bought[k] for k in ("events", "page_views", "product_views", "searches")} == {
        "events": 8,
        "page_views": 1,
        "product_views": 2,
        "searches": 1,
    }
    assert (bought["add_to_carts"], bought["checkouts"], bought["purchases"]) == (1, 1, 2)
    assert bought["revenue"] == pytest.approx(42.5)
    assert bought["currency"] == "EUR"
    assert bought["converted"] is True
    assert bought["duration_s"] == 420.0
    assert (bought["start_s"], bought["end_s"]) == (epoch(0), epoch(7))
    browsed = sessions[f"u1-{epoch(100)}"]
    assert (browsed["purchases"], browsed["revenue"], browsed["currency"], browsed["converted"]) == (
        0,
        0.0,
        None,
        False,
    )


def test_first_event_attributes_with_event_id_tie_break(spark: SparkSession) -> None:
    # Same timestamp: event_id "a" sorts first, so its attributes win whatever the input order.
    rows = [
        event("b", "u1", 0, platform="ios", country="US", channel="email", device_type="phone"),
        event("a", "u1", 0, platform="android", country="GB", channel="paid_search", device_type="tablet"),
        event("c", "u1", 5, platform="web", country="DE", channel="organic"),
    ]
    (session,) = sessionize(silver(spark, rows)).collect()
    assert (session["platform"], session["device_type"], session["country"], session["channel"]) == (
        "android",
        "tablet",
        "GB",
        "paid_search",
    )
    assert session["app_version"] == "1.0"
    assert session["os"] == "Linux"


def test_events_at_the_same_instant_share_a_session(spark: SparkSession) -> None:
    rows = [event("z", "u1", 0), event("a", "u1", 0), event("m", "u1", 31)]
    sessions = by_id(sessionize(silver(spark, rows)))
    assert {k: v["events"] for k, v in sessions.items()} == {f"u1-{epoch(0)}": 2, f"u1-{epoch(31)}": 1}


def test_session_date_is_the_utc_date_of_the_start(spark: SparkSession) -> None:
    late = (datetime(2024, 11, 1, 23, 50, tzinfo=UTC) - T0).total_seconds() / 60
    rows = [event("a1", "u1", late), event("a2", "u1", late + 20)]
    (session,) = sessionize(silver(spark, rows)).select("session_date", "session_end").collect()
    assert session["session_date"] == date(2024, 11, 1)
    assert session["session_end"].astimezone(UTC).date() == date(2024, 11, 2)


def test_sessionize_rejects_missing_columns_and_bad_gap(spark: SparkSession) -> None:
    events = silver(spark, [event("a1", "u1", 0)])
    with pytest.raises(DataError, match="channel"):
        sessionize(events.drop("channel"))
    with pytest.raises(DataError, match="gap_minutes"):
        sessionize(events, gap_minutes=0)


# --- daily KPIs and funnel ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kpi_sessions(spark: SparkSession) -> DataFrame:
    rows = [
        # u1: two web/organic DE sessions on day 1, the second converts.
        event("a1", "u1", 0, "page_view"),
        event("a2", "u1", 1, "product_view"),
        event("a3", "u1", 120, "page_view"),
        event("a4", "u1", 121, "product_view"),
        event("a5", "u1", 122, "add_to_cart"),
        event("a6", "u1", 123, "checkout"),
        event("a7", "u1", 124, "purchase", revenue=30.0),
        # u2: one web/organic DE session, reaches checkout, no purchase.
        event("b1", "u2", 10, "page_view"),
        event("b2", "u2", 11, "product_view"),
        event("b3", "u2", 12, "add_to_cart"),
        event("b4", "u2", 13, "checkout"),
        # u3: web/organic DE, bounces.
        event("c1", "u3", 20, "page_view"),
        # u4: ios/email US, buys twice in one session.
        event("d1", "u4", 30, "page_view", platform="ios", country="US", channel="email"),
        event("d2", "u4", 31, "add_to_cart", platform="ios", country="US", channel="email"),
        event("d3", "u4", 32, "purchase", platform="ios", country="US", channel="email", revenue=10.0),
        event("d4", "u4", 33, "purchase", platform="ios", country="US", channel="email", revenue=5.0),
        # u5: next day, web/organic DE, a session that starts on search.
        event("e1", "u5", 24 * 60 + 5, "search"),
    ]
    return sessionize(silver(spark, rows)).cache()


def test_daily_kpis(kpi_sessions: DataFrame) -> None:
    kpis = daily_kpis(kpi_sessions)
    assert shape(kpis.schema) == shape(GOLD_DAILY_KPIS)
    rows = {(r["date"], r["platform"], r["country"]): r.asDict() for r in kpis.collect()}
    assert len(rows) == 3
    web = rows[(date(2024, 11, 1), "web", "DE")]
    assert web["channel"] == "organic"
    assert web["currency"] == "EUR"
    assert web["active_users"] == 3  # u1 counted once for two sessions
    assert web["sessions"] == 4
    assert (web["reached_product_view"], web["reached_add_to_cart"], web["reached_checkout"]) == (3, 2, 2)
    assert (web["converted_sessions"], web["orders"], web["revenue"]) == (1, 1, 30.0)
    assert web["conversion_rate"] == pytest.approx(0.25)
    ios = rows[(date(2024, 11, 1), "ios", "US")]
    assert (ios["currency"], ios["sessions"], ios["orders"], ios["revenue"]) == ("USD", 1, 2, 15.0)
    assert ios["conversion_rate"] == 1.0
    next_day = rows[(date(2024, 11, 2), "web", "DE")]
    # No purchase in DE that day: no currency was seen, so none is claimed.
    assert (next_day["currency"], next_day["sessions"], next_day["revenue"]) == (None, 1, 0.0)
    assert next_day["conversion_rate"] == 0.0


def test_daily_kpis_currency_is_shared_across_the_country_day(spark: SparkSession) -> None:
    rows = [
        event("a1", "u1", 0, "purchase", channel="email", revenue=9.0),
        event("b1", "u2", 0, "page_view", channel="social"),
    ]
    kpis = daily_kpis(sessionize(silver(spark, rows)))
    assert sorted((r["channel"], r["currency"]) for r in kpis.collect()) == [
        ("email", "EUR"),
        ("social", "EUR"),
    ]


def test_funnel_counts_are_monotonic_in_funnel_order(kpi_sessions: DataFrame) -> None:
    result = funnel(kpi_sessions)
    assert shape(result.schema) == shape(GOLD_FUNNEL)
    got = [(r["step"], r["step_order"], r["sessions"]) for r in result.collect()]
    assert got == [
        ("page_view", 1, 5),
        ("product_view", 2, 3),
        ("add_to_cart", 3, 3),
        ("checkout", 4, 2),
        ("purchase", 5, 2),
    ]
    counts = [n for _, _, n in got]
    assert counts == sorted(counts, reverse=True)


def test_funnel_of_no_sessions_is_all_zero(kpi_sessions: DataFrame) -> None:
    empty = funnel(kpi_sessions.where(F.lit(False)))
    assert [(r["step"], r["sessions"]) for r in empty.collect()] == [(step, 0) for step in FUNNEL]


def test_kpis_reject_frames_that_are_not_sessions(spark: SparkSession) -> None:
    events = silver(spark, [event("a1", "u1", 0)])
    with pytest.raises(DataError, match="gold sessions"):
        daily_kpis(events)
    with pytest.raises(DataError, match="page_views"):
        funnel(events)


# --- write_gold ---------------------------------------------------------------------------------------


def test_write_gold_round_trip_and_overwrite(kpi_sessions: DataFrame, tmp_path: Path) -> None:
    spark = kpi_sessions.sparkSession
    path = str(tmp_path / "gold" / "sessions")
    assert write_gold(kpi_sessions, path) == 6
    back = spark.read.format("delta").load(path)
    assert shape(back.schema) == shape(GOLD_SESSIONS)
    assert sorted(r["session_id"] for r in back.collect()) == sorted(
        r["session_id"] for r in kpi_sessions.collect()
    )
    # Recomputed gold replaces the table rather than appending to it.
    assert write_gold(kpi_sessions.where(F.col("user_id") == "u1"), path) == 2
    assert spark.read.format("delta").load(path).count() == 2


def test_write_gold_refuses_schema_drift(kpi_sessions: DataFrame, tmp_path: Path) -> None:
    spark = kpi_sessions.sparkSession
    path = str(tmp_path / "gold" / "sessions")
    write_gold(kpi_sessions, path)
    with pytest.raises(DataError, match="schema"):
        write_gold(kpi_sessions.withColumn("extra", F.lit(1)), path)
    with pytest.raises(DataError, match="schema"):
        write_gold(kpi_sessions.withColumn("events", F.col("events").cast("int")), path)
    with pytest.raises(DataError, match="schema"):
        write_gold(kpi_sessions.drop("channel"), path)
    assert spark.read.format("delta").load(path).count() == 6
    assert "extra" not in spark.read.format("delta").load(path).columns


def test_gold_sessions_read_with_deltalake_feed_the_model(kpi_sessions: DataFrame, tmp_path: Path) -> None:
    # The path the dashboards and the ML notebook take: delta-rs into pandas, no JVM.
    from deltalake import DeltaTable

    from lakehouse.ml.conversion import FEATURES, feature_frame

    path = str(tmp_path / "gold" / "sessions")
    write_gold(kpi_sessions, path)
    frame = DeltaTable(path).to_pandas()
    assert list(frame.columns) == GOLD_SESSIONS.fieldNames()
    assert frame["converted"].sum() == 2
    features = feature_frame(frame)
    assert list(features.columns) == list(FEATURES)
    assert sorted(features["start_hour"].unique()) == [10.0, 12.0]
