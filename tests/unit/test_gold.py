"""The demo's gold marts as declared models, on small inline silver frames.

gold.sessions is the registered ``sessionize`` transform run with the params of ``catalog/gold/sessions.yaml``;
gold.daily_kpis and gold.funnel are SQL models (``models/gold/``) built by the model engine over Delta tables
of a temporary project; then the Delta writer every full model goes through.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.gold import models, write_gold
from lakehouse.governance.catalog import load_catalog, load_contract
from lakehouse.serving.gold import FUNNEL
from project_files import copy_declarations

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


# silver.events as its contract declares it (the rows above are in its column order)
SILVER_EVENTS = ", ".join(
    f"{c.name} {c.type}"
    for c in load_contract(Path(__file__).resolve().parents[2] / "catalog" / "silver" / "events.yaml").columns
)


def silver(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, SILVER_EVENTS)


def contract_shape(settings: Settings, table: str) -> list[tuple[str, str]]:
    return [(c.name, c.type) for c in load_catalog(settings).contract(table).columns]


def shape(schema: Any) -> list[tuple[str, str]]:
    # the contracts say long and integer where Spark says bigint and int
    names = {"bigint": "long", "int": "integer"}
    return [(f.name, names.get(f.dataType.simpleString(), f.dataType.simpleString())) for f in schema.fields]


def sessionize(spark: SparkSession, settings: Settings, events: DataFrame, **params: Any) -> DataFrame:
    """gold.sessions as its declaration builds it (its params, ``params`` overriding), shaped by its contract."""
    model = models.gold_model(settings, "gold.sessions")
    assert model.model.python == "sessionize" and model.model.inputs == ["silver.events"]
    frame = models.TRANSFORMS["sessionize"](
        spark, {"silver.events": events}, {**model.model.params, **params}
    )
    return frame.select(*[F.col(c.name).cast(c.type).alias(c.name) for c in model.contract.columns])


def by_id(df: DataFrame) -> dict[str, dict[str, Any]]:
    return {row["session_id"]: row.asDict() for row in df.collect()}


def epoch(minutes: float) -> int:
    return int((T0 + timedelta(minutes=minutes)).timestamp())


# --- gold.sessions: the sessionize transform with the declared params --------------------------------


def test_gap_of_29_minutes_stays_in_the_session_and_31_starts_a_new_one(
    spark: SparkSession, settings: Settings
) -> None:
    rows = [event("a1", "u1", 0), event("a2", "u1", 29), event("a3", "u1", 60), event("a4", "u1", 61)]
    sessions = sessionize(spark, settings, silver(spark, rows))
    got = sorted((r["session_id"], r["events"]) for r in sessions.collect())
    assert got == [(f"u1-{epoch(0)}", 2), (f"u1-{epoch(60)}", 2)]


def test_a_gap_of_exactly_the_limit_stays_in_the_session(spark: SparkSession, settings: Settings) -> None:
    rows = [event("a1", "u1", 0), event("a2", "u1", 30), event("a3", "u1", 60.5)]
    sessions = by_id(sessionize(spark, settings, silver(spark, rows)))
    assert {k: v["events"] for k, v in sessions.items()} == {f"u1-{epoch(0)}": 2, f"u1-{epoch(60.5)}": 1}


def test_gap_minutes_is_a_parameter(spark: SparkSession, settings: Settings) -> None:
    rows = [event("a1", "u1", 0), event("a2", "u1", 10), event("a3", "u1", 16)]
    assert sessionize(spark, settings, silver(spark, rows), gap_minutes=5).count() == 3
    assert sessionize(spark, settings, silver(spark, rows), gap_minutes=10).count() == 1


def test_sessions_are_per_user_and_output_matches_the_contract(
    spark: SparkSession, settings: Settings
) -> None:
    rows = [event("a1", "u1", 0), event("b1", "u2", 5), event("a2", "u1", 10), event("b2", "u2", 50)]
    sessions = sessionize(spark, settings, silver(spark, rows))
    assert shape(sessions.schema) == contract_shape(settings, "gold.sessions")
    got = sorted((r["user_id"], r["events"], r["duration_s"]) for r in sessions.collect())
    assert got == [("u1", 2, 600.0), ("u2", 1, 0.0), ("u2", 1, 0.0)]


def test_counts_revenue_currency_and_converted(spark: SparkSession, settings: Settings) -> None:
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
        sessionize(spark, settings, silver(spark, rows)).select(
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


def test_a_purchases_currency_wins_over_an_earlier_events(spark: SparkSession, settings: Settings) -> None:
    rows = [
        event("a1", "u1", 0, "page_view", country="GB", currency_on_all=True),  # GBP on a v1 page view
        event("a2", "u1", 1, "purchase", country="US", revenue=5.0),  # USD on the purchase
    ]
    (session,) = sessionize(spark, settings, silver(spark, rows)).collect()
    assert (session["currency"], session["country"]) == ("USD", "GB")


def test_first_event_attributes_with_event_id_tie_break(spark: SparkSession, settings: Settings) -> None:
    # Same timestamp: event_id "a" sorts first, so its attributes win whatever the input order.
    rows = [
        event("b", "u1", 0, platform="ios", country="US", channel="email", device_type="phone"),
        event("a", "u1", 0, platform="android", country="GB", channel="paid_search", device_type="tablet"),
        event("c", "u1", 5, platform="web", country="DE", channel="organic"),
    ]
    (session,) = sessionize(spark, settings, silver(spark, rows)).collect()
    assert (session["platform"], session["device_type"], session["country"], session["channel"]) == (
        "android",
        "tablet",
        "GB",
        "paid_search",
    )
    assert session["app_version"] == "1.0"
    assert session["os"] == "Linux"


def test_events_at_the_same_instant_share_a_session(spark: SparkSession, settings: Settings) -> None:
    rows = [event("z", "u1", 0), event("a", "u1", 0), event("m", "u1", 31)]
    sessions = by_id(sessionize(spark, settings, silver(spark, rows)))
    assert {k: v["events"] for k, v in sessions.items()} == {f"u1-{epoch(0)}": 2, f"u1-{epoch(31)}": 1}


def test_session_date_is_the_utc_date_of_the_start(spark: SparkSession, settings: Settings) -> None:
    late = (datetime(2024, 11, 1, 23, 50, tzinfo=UTC) - T0).total_seconds() / 60
    rows = [event("a1", "u1", late), event("a2", "u1", late + 20)]
    (session,) = (
        sessionize(spark, settings, silver(spark, rows)).select("session_date", "session_end").collect()
    )
    assert session["session_date"] == date(2024, 11, 1)
    assert session["session_end"].astimezone(UTC).date() == date(2024, 11, 2)


def test_session_date_does_not_follow_the_spark_time_zone(spark: SparkSession, settings: Settings) -> None:
    late = (datetime(2024, 11, 1, 23, 50, tzinfo=UTC) - T0).total_seconds() / 60
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "Asia/Tokyo")  # already 2 November there
    try:
        (session,) = sessionize(spark, settings, silver(spark, [event("a1", "u1", late)])).collect()
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    assert session["session_date"] == date(2024, 11, 1)


def test_sessionize_rejects_missing_columns_and_bad_params(spark: SparkSession, settings: Settings) -> None:
    events = silver(spark, [event("a1", "u1", 0)])
    with pytest.raises(DataError, match="channel"):
        sessionize(spark, settings, events.drop("channel"))
    with pytest.raises(ConfigError, match="gap_minutes"):
        sessionize(spark, settings, events, gap_minutes=0)
    with pytest.raises(ConfigError, match="gap_minute"):
        sessionize(spark, settings, events, gap_minute=45)  # a typo is not ignored
    with pytest.raises(ConfigError, match="does not analyse"):
        sessionize(spark, settings, events, sums={"revenue": "amount_paid"})


# --- gold.daily_kpis and gold.funnel: SQL models over gold.sessions ----------------------------------


def _project(settings: Settings, root: Path) -> Settings:
    """A copy of the project's declarations with its own lake, so models build against this test's tables."""
    (root / "project").mkdir(parents=True)
    copy_declarations(settings.root, root / "project")
    quality = settings.quality.model_copy(update={"data_docs": False})
    return settings.model_copy(
        update={"root": root / "project", "workspace": root / "ws", "quality": quality}
    )


def _build(spark: SparkSession, project: Settings, rows: list[tuple[Any, ...]], *tables: str) -> None:
    silver(spark, rows).write.format("delta").mode("overwrite").save(project.table_path("silver", "events"))
    for table in tables:
        models.build_model(spark, project, table, run_id="test")


def _read(spark: SparkSession, project: Settings, table: str) -> DataFrame:
    return spark.read.format("delta").load(project.table_path(*table.split(".")))


KPI_EVENTS = [
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


@pytest.fixture(scope="module")
def kpi_project(
    spark: SparkSession, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    project = _project(settings, tmp_path_factory.mktemp("kpis"))
    _build(spark, project, KPI_EVENTS, "gold.sessions", "gold.daily_kpis", "gold.funnel")
    return project


@pytest.fixture(scope="module")
def kpi_sessions(spark: SparkSession, kpi_project: Settings) -> DataFrame:
    return _read(spark, kpi_project, "gold.sessions").cache()


def test_the_models_read_their_refs(settings: Settings) -> None:
    assert models.upstream_tables(settings, "gold.sessions") == ["silver.events"]
    assert models.upstream_tables(settings, "gold.daily_kpis") == ["gold.sessions"]
    assert models.upstream_tables(settings, "gold.funnel") == ["gold.sessions"]
    assert models.upstream_tables(settings, "gold.revenue_daily") == ["gold.daily_kpis", "silver.fx_rates"]


def test_built_sessions_account_for_every_silver_event(
    kpi_sessions: DataFrame, kpi_project: Settings
) -> None:
    # what the old build_sessions notebook checked after each build, now on the model's own build
    assert kpi_sessions.agg(F.sum("events")).first()[0] == len(KPI_EVENTS)
    assert kpi_sessions.select("session_id").distinct().count() == kpi_sessions.count() == 6
    assert kpi_sessions.where(F.col("converted") != (F.col("purchases") > 0)).count() == 0
    assert shape(kpi_sessions.schema) == contract_shape(kpi_project, "gold.sessions")


def test_daily_kpis(spark: SparkSession, kpi_project: Settings) -> None:
    kpis = _read(spark, kpi_project, "gold.daily_kpis")
    assert shape(kpis.schema) == contract_shape(kpi_project, "gold.daily_kpis")
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


def test_daily_kpis_currency_is_shared_across_the_country_day(
    spark: SparkSession, settings: Settings, tmp_path: Path
) -> None:
    project = _project(settings, tmp_path)
    rows = [
        event("a1", "u1", 0, "purchase", channel="email", revenue=9.0),
        event("b1", "u2", 0, "page_view", channel="social"),
    ]
    _build(spark, project, rows, "gold.sessions", "gold.daily_kpis")
    kpis = _read(spark, project, "gold.daily_kpis")
    assert sorted((r["channel"], r["currency"]) for r in kpis.collect()) == [
        ("email", "EUR"),
        ("social", "EUR"),
    ]


def test_funnel_counts_are_monotonic_in_funnel_order(spark: SparkSession, kpi_project: Settings) -> None:
    result = _read(spark, kpi_project, "gold.funnel")
    assert shape(result.schema) == contract_shape(kpi_project, "gold.funnel")
    got = [(r["step"], r["step_order"], r["sessions"]) for r in result.orderBy("step_order").collect()]
    assert got == [
        ("page_view", 1, 5),
        ("product_view", 2, 3),
        ("add_to_cart", 3, 3),
        ("checkout", 4, 2),
        ("purchase", 5, 2),
    ]
    assert [step for step, _, _ in got] == list(FUNNEL)  # the steps the dashboard's funnel shows
    counts = [n for _, _, n in got]
    assert counts == sorted(counts, reverse=True)


def test_funnel_of_no_sessions_is_all_zero(
    spark: SparkSession, kpi_sessions: DataFrame, kpi_project: Settings, tmp_path: Path
) -> None:
    project = _project(kpi_project, tmp_path)
    kpi_sessions.where(F.lit(False)).write.format("delta").save(project.table_path("gold", "sessions"))
    empty = models.model_frame(spark, project, models.gold_model(project, "gold.funnel"))
    got = [(r["step"], r["sessions"]) for r in empty.orderBy("step_order").collect()]
    assert got == [(step, 0) for step in FUNNEL]


def test_kpis_refuse_tables_that_are_not_sessions(
    spark: SparkSession, settings: Settings, tmp_path: Path
) -> None:
    project = _project(settings, tmp_path)
    events = silver(spark, [event("a1", "u1", 0)])
    events.write.format("delta").save(project.table_path("gold", "sessions"))  # events where sessions belong
    for table, column in (("gold.daily_kpis", "session_date"), ("gold.funnel", "page_views")):
        name = table.split(".")[1]
        with pytest.raises(ConfigError, match=rf"(?s){name}\.sql: the query does not analyse.*{column}"):
            models.model_frame(spark, project, models.gold_model(project, table))


# --- write_gold ---------------------------------------------------------------------------------------


def test_write_gold_round_trip_and_overwrite(kpi_sessions: DataFrame, tmp_path: Path) -> None:
    spark = kpi_sessions.sparkSession
    path = str(tmp_path / "gold" / "sessions")
    assert write_gold(kpi_sessions, path) == 6
    back = spark.read.format("delta").load(path)
    assert shape(back.schema) == shape(kpi_sessions.schema)
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


def test_gold_sessions_read_with_deltalake_feed_the_models_labels(kpi_project: Settings) -> None:
    # The path the dashboards and the training task's labels take: delta-rs into pandas, no JVM.
    from deltalake import DeltaTable

    from lakehouse.ml import training

    frame = DeltaTable(kpi_project.table_path("gold", "sessions")).to_pandas()
    assert list(frame.columns) == [
        c.name for c in load_catalog(kpi_project).contract("gold.sessions").columns
    ]
    assert frame["converted"].sum() == 2
    spec = training.load_model_spec(kpi_project, "conversion_propensity")
    labels = training.label_rows(kpi_project, spec)
    assert list(labels.columns) == ["session_id", "user_id", "session_end", "converted"]
    assert labels["converted"].sum() == 2 and len(labels) == len(frame)
    assert str(labels["session_end"].dt.tz) == "UTC"
