"""Serving queries over a small hand-made gold sessions table whose answers are worked out by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.serving import gold
from lakehouse.serving.gold import FUNNEL, Filters
from project_files import copy_declarations
from sessions_schema import SESSIONS_SCHEMA

pytestmark = pytest.mark.unit

D1, D2, D3 = date(2024, 11, 1), date(2024, 11, 2), date(2024, 11, 3)
# id, user, day, country, platform, channel, duration, page, product, cart, checkout, purchase, revenue, cur
ROWS = [
    ("s01", "u1", D1, "DE", "web", "organic", 120.0, 3, 2, 1, 1, 1, 50.0, "EUR"),
    ("s02", "u1", D2, "DE", "ios", "paid_search", 30.0, 1, 0, 0, 0, 0, 0.0, None),
    ("s03", "u2", D1, "GB", "web", "social", 60.0, 2, 1, 1, 0, 0, 0.0, None),
    ("s04", "u3", D1, "US", "android", "email", 300.0, 4, 3, 2, 1, 2, 120.5, "USD"),
    ("s05", "u3", D3, "US", "web", "email", 45.0, 1, 1, 0, 0, 0, 0.0, None),
    ("s06", "u4", D2, "JP", "ios", "organic", 240.0, 2, 2, 1, 1, 1, 4500.0, "JPY"),
    ("s07", "u5", D2, "DE", "android", "direct", 15.0, 1, 0, 0, 0, 0, 0.0, None),
    # bought, but its checkout event was lost upstream: the funnel still counts the checkout
    ("s08", "u5", D3, "FR", "web", "organic", 600.0, 5, 4, 2, 0, 1, 25.25, "EUR"),
    # landed straight on a product page: no page_view event
    ("s09", "u6", D3, "GB", "ios", "referral", 20.0, 0, 1, 0, 0, 0, 0.0, None),
    ("s10", "u2", D3, "GB", "web", "social", 10.0, 1, 0, 0, 0, 0, 0.0, None),
]


def sessions_frame() -> pd.DataFrame:
    records = []
    for sid, user, day, country, platform, channel, duration, pv, prv, atc, co, pur, rev, cur in ROWS:
        start = datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
        records.append(
            {
                "session_id": sid,
                "user_id": user,
                "session_start": start,
                "session_end": start + timedelta(seconds=duration),
                "session_date": day,
                "duration_s": duration,
                "events": pv + prv + atc + co + pur,
                "page_views": pv,
                "product_views": prv,
                "searches": 0,
                "add_to_carts": atc,
                "checkouts": co,
                "purchases": pur,
                "revenue": rev,
                "currency": cur,
                "platform": platform,
                "device_type": "desktop" if platform == "web" else "phone",
                "os": {"web": "Windows", "ios": "iOS", "android": "Android"}[platform],
                "app_version": None if platform == "web" else "5.1.0",
                "country": country,
                "channel": channel,
                "converted": pur > 0,
            }
        )
    return pd.DataFrame.from_records(records)


def write_sessions(path: Path, frame: pd.DataFrame, mode: Literal["error", "append"] = "error") -> None:
    write_deltalake(
        str(path),
        pa.Table.from_pandas(frame, schema=SESSIONS_SCHEMA, preserve_index=False),
        mode=mode,
    )


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gold") / "sessions"
    write_sessions(path, sessions_frame())
    return path


@pytest.fixture(scope="module")
def sessions(table: Path) -> pd.DataFrame:
    return gold.load_sessions(table)


def test_load_reads_every_row_with_native_dates(sessions: pd.DataFrame) -> None:
    assert len(sessions) == len(ROWS)
    assert set(gold.SESSION_COLUMNS) <= set(sessions.columns)
    assert pd.api.types.is_datetime64_any_dtype(sessions["session_date"])


def test_kpis_of_everything(sessions: pd.DataFrame) -> None:
    kpis = gold.kpi_summary(sessions, Filters())
    assert kpis.active_users == 6
    assert kpis.sessions == 10
    assert kpis.converted_sessions == 4
    assert kpis.conversion_rate == pytest.approx(0.4)
    assert kpis.avg_session_seconds == pytest.approx(144.0)
    assert kpis.revenue_by_currency == {"EUR": 75.25, "JPY": 4500.0, "USD": 120.5}


def test_active_users_are_exact_distinct_not_sessions(sessions: pd.DataFrame) -> None:
    # GB has three sessions from two users (u2 came back)
    kpis = gold.kpi_summary(sessions, Filters(countries=("GB",)))
    assert (kpis.active_users, kpis.sessions, kpis.converted_sessions) == (2, 3, 0)
    assert kpis.conversion_rate == 0.0
    assert kpis.revenue_by_currency == {}


@pytest.mark.parametrize(
    ("filters", "users", "count", "converted", "revenue"),
    [
        (Filters(countries=("DE",)), 2, 3, 1, {"EUR": 50.0}),
        (Filters(platforms=("web",)), 4, 5, 2, {"EUR": 75.25}),
        (Filters(channels=("email",)), 1, 2, 1, {"USD": 120.5}),
        (Filters(start=D3, end=D3), 4, 4, 1, {"EUR": 25.25}),
        (Filters(start=D2), 6, 7, 2, {"EUR": 25.25, "JPY": 4500.0}),
        (Filters(end=D1), 3, 3, 2, {"EUR": 50.0, "USD": 120.5}),
        (Filters(countries=("DE", "FR"), platforms=("web",)), 2, 2, 2, {"EUR": 75.25}),
        (Filters(countries=("BR",)), 0, 0, 0, {}),
    ],
)
def test_filters_select_the_right_sessions(
    sessions: pd.DataFrame,
    filters: Filters,
    users: int,
    count: int,
    converted: int,
    revenue: dict[str, float],
) -> None:
    kpis = gold.kpi_summary(sessions, filters)
    assert (kpis.active_users, kpis.sessions, kpis.converted_sessions) == (users, count, converted)
    assert kpis.revenue_by_currency == revenue


def test_daily_trend(sessions: pd.DataFrame) -> None:
    trend = gold.daily_trend(sessions, Filters())
    assert list(trend.columns) == ["date", "active_users", "sessions", "conversion_rate", "orders"]
    assert [d.date() for d in trend["date"]] == [D1, D2, D3]
    assert trend["active_users"].tolist() == [3, 3, 4]
    assert trend["sessions"].tolist() == [3, 3, 4]
    assert trend["conversion_rate"].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 4])
    assert trend["orders"].tolist() == [3, 1, 1]


def test_daily_trend_follows_filters_and_keeps_quiet_days(sessions: pd.DataFrame) -> None:
    trend = gold.daily_trend(sessions, Filters(countries=("DE",)))
    # DE has no session on D3: the day is there, with zeros, so a chart does not draw a line across it
    assert [d.date() for d in trend["date"]] == [D1, D2, D3]
    assert trend["active_users"].tolist() == [1, 2, 0]
    assert trend["sessions"].tolist() == [1, 2, 0]
    assert trend["conversion_rate"].tolist() == [1.0, 0.0, 0.0]
    assert trend["orders"].tolist() == [1, 0, 0]
    narrow = gold.daily_trend(sessions, Filters(start=D2, end=D2))
    assert [d.date() for d in narrow["date"]] == [D2]


def test_period_is_the_filter_or_the_data(sessions: pd.DataFrame) -> None:
    assert gold.period(sessions, Filters()) == (D1, D3)
    assert gold.period(sessions, Filters(countries=("DE",))) == (D1, D3)
    assert gold.period(sessions, Filters(start=D2)) == (D2, D3)
    assert gold.period(sessions, Filters(end=D2)) == (D1, D2)
    assert gold.period(sessions.iloc[0:0], Filters()) is None


def test_funnel_counts_sessions_with_an_event_of_each_step(sessions: pd.DataFrame) -> None:
    steps = gold.funnel(sessions, Filters())
    assert steps["step"].tolist() == list(FUNNEL)
    # s09 has no page_view and s08 no checkout event: like gold.funnel, they do not count for those steps
    assert steps["sessions"].tolist() == [9, 7, 5, 3, 4]
    assert steps["rate_from_start"].tolist() == pytest.approx([1.0, 7 / 9, 5 / 9, 3 / 9, 4 / 9])
    assert steps["sessions"].iloc[-1] == gold.kpi_summary(sessions, Filters()).converted_sessions


def test_the_dashboards_funnel_reconciles_with_gold_funnel(
    spark: Any, settings: Settings, sessions: pd.DataFrame, tmp_path: Path
) -> None:
    # gold.funnel (models/gold/funnel.sql) over the same sessions counts what the dashboard's funnel counts
    from lakehouse.gold import models

    root = tmp_path / "project"
    copy_declarations(settings.root, root)
    project = settings.model_copy(update={"root": root, "workspace": tmp_path / "ws"})
    write_sessions(Path(project.table_path("gold", "sessions")), sessions_frame())
    model = models.model_frame(spark, project, models.gold_model(project, "gold.funnel"))
    modelled = [(r["step"], r["sessions"]) for r in model.orderBy("step_order").collect()]
    served = gold.funnel(sessions, Filters())
    assert modelled == list(zip(served["step"], served["sessions"], strict=True))
    assert [n for _, n in modelled] == [9, 7, 5, 3, 4]


def test_funnel_of_complete_sessions_is_monotonic(sessions: pd.DataFrame) -> None:
    # DE, US and JP sessions have every event up to where they stopped
    steps = gold.funnel(sessions, Filters(countries=("DE", "US", "JP")))
    assert steps["sessions"].tolist() == [6, 4, 3, 3, 3]
    assert steps["rate_from_start"].tolist() == pytest.approx([1.0, 4 / 6, 0.5, 0.5, 0.5])
    assert steps["sessions"].is_monotonic_decreasing


def test_funnel_of_nothing_is_zero_not_nan(sessions: pd.DataFrame) -> None:
    steps = gold.funnel(sessions, Filters(countries=("BR",)))
    assert steps["sessions"].tolist() == [0] * len(FUNNEL)
    assert steps["rate_from_start"].tolist() == [0.0] * len(FUNNEL)


def test_revenue_by_day_keeps_currencies_apart(sessions: pd.DataFrame) -> None:
    revenue = gold.revenue_by_day(sessions, Filters())
    assert list(revenue.columns) == ["date", "currency", "revenue"]
    rows = [(d.date(), c, r) for d, c, r in revenue.itertuples(index=False)]
    assert rows == [
        (D1, "EUR", 50.0),
        (D2, "EUR", 0.0),
        (D3, "EUR", 25.25),
        (D1, "JPY", 0.0),
        (D2, "JPY", 4500.0),
        (D3, "JPY", 0.0),
        (D1, "USD", 120.5),
        (D2, "USD", 0.0),
        (D3, "USD", 0.0),
    ]


def test_revenue_by_day_follows_filters(sessions: pd.DataFrame) -> None:
    web = gold.revenue_by_day(sessions, Filters(platforms=("web",)))
    assert web["currency"].unique().tolist() == ["EUR"]
    assert web["revenue"].tolist() == [50.0, 0.0, 25.25]
    one_day = gold.revenue_by_day(sessions, Filters(start=D2, end=D2))
    assert [(d.date(), c, r) for d, c, r in one_day.itertuples(index=False)] == [(D2, "JPY", 4500.0)]
    assert gold.revenue_by_day(sessions, Filters(countries=("GB",))).empty


def test_filter_options_and_date_bounds(sessions: pd.DataFrame) -> None:
    assert gold.filter_options(sessions) == {
        "country": ["DE", "FR", "GB", "JP", "US"],
        "platform": ["android", "ios", "web"],
        "channel": ["direct", "email", "organic", "paid_search", "referral", "social"],
    }
    assert gold.date_bounds(sessions) == (D1, D3)
    assert gold.date_bounds(sessions.iloc[0:0]) is None


def test_filters_from_widget_values() -> None:
    filters = Filters.from_selection(["DE"], [], ("web", "ios"), (datetime(2024, 11, 1, 13, 5), D3))
    assert filters == Filters(countries=("DE",), platforms=(), channels=("web", "ios"), start=D1, end=D3)
    assert Filters.from_selection() == Filters()


def test_filters_reject_a_period_that_ends_before_it_starts() -> None:
    with pytest.raises(ConfigError, match="after end"):
        Filters(start=D3, end=D1)


def test_table_version_and_snapshot_follow_commits(tmp_path: Path) -> None:
    path = tmp_path / "sessions"
    write_sessions(path, sessions_frame())
    assert gold.table_version(path) == 0
    write_sessions(path, sessions_frame().iloc[:2], mode="append")
    snapshot = gold.load_snapshot(path)
    assert (snapshot.version, len(snapshot.frame), snapshot.path) == (1, len(ROWS) + 2, str(path))


def test_missing_table_says_build_the_dag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: build the DAG first \(make demo\)"):
        gold.load_sessions(tmp_path / "nowhere")
    with pytest.raises(DataError, match="not found"):
        gold.table_version(tmp_path / "nowhere")


def test_a_folder_that_is_not_a_delta_table_is_missing_gold(tmp_path: Path) -> None:
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "part-0.parquet").write_bytes(b"not delta")
    with pytest.raises(DataError, match="build the DAG first"):
        gold.load_sessions(tmp_path / "sessions")


def test_table_without_a_needed_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sessions"
    write_deltalake(str(path), pa.Table.from_pandas(sessions_frame().drop(columns=["converted"])))
    with pytest.raises(DataError, match=r"lacks columns \['converted'\]"):
        gold.load_sessions(path)
