"""Readers and queries over the gold ``sessions`` table, for dashboards and APIs.

Spark computes, it does not serve: the table is read with delta-rs into Arrow/pandas and aggregated by DuckDB
(in-process, sub-second on the demo's data). Every query takes the sessions frame and a :class:`Filters`, and
is pure: same frame and filters, same answer.

Example:
    >>> snapshot = load_snapshot(settings.table_path("gold", "sessions"))  # doctest: +SKIP
    >>> kpi_summary(snapshot.frame, Filters(countries=("DE",))).active_users  # doctest: +SKIP
    412
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

import duckdb
import pandas as pd
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse import arrow_lake
from lakehouse.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# The gold sessions columns the serving queries rely on (the table has more).
SESSION_COLUMNS: Final = (
    "session_id",
    "user_id",
    "session_date",
    "duration_s",
    "page_views",
    "product_views",
    "add_to_carts",
    "checkouts",
    "purchases",
    "revenue",
    "currency",
    "platform",
    "country",
    "channel",
    "converted",
)
# The per-session count column of each funnel step.
STEP_COLUMNS: Final = {
    "page_view": "page_views",
    "product_view": "product_views",
    "add_to_cart": "add_to_carts",
    "checkout": "checkouts",
    "purchase": "purchases",
}
# The funnel's steps, in order: a session reaches a step when it has at least one event of that type.
FUNNEL: Final = tuple(STEP_COLUMNS)
_FILTER_COLUMNS: Final = {"countries": "country", "platforms": "platform", "channels": "channel"}
_VIEW: Final = "sessions"

PathLike = str | os.PathLike[str]


def _as_date(value: date | datetime | pd.Timestamp | None) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):  # pd.Timestamp is a datetime too
        return value.date()
    return value


@dataclass(frozen=True)
class Filters:
    """What the reader selected. An empty tuple means "all"; ``start``/``end`` are inclusive session dates."""

    countries: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    start: date | None = None
    end: date | None = None

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ConfigError(f"filter start {self.start} is after end {self.end}: pick an earlier start")

    @classmethod
    def from_selection(
        cls,
        countries: Iterable[str] = (),
        platforms: Iterable[str] = (),
        channels: Iterable[str] = (),
        period: tuple[date | datetime | None, date | datetime | None] | None = None,
    ) -> Filters:
        """Build filters from widget values: lists of choices and a (start, end) of dates or datetimes.

        Example:
            >>> Filters.from_selection(["DE"], [], [], (datetime(2024, 11, 1, 13), date(2024, 11, 3)))
            Filters(countries=('DE',), platforms=(), channels=(), start=datetime.date(2024, 11, 1), end=datetime.date(2024, 11, 3))
        """  # noqa: E501
        start, end = period if period is not None else (None, None)
        return cls(
            countries=tuple(countries),
            platforms=tuple(platforms),
            channels=tuple(channels),
            start=_as_date(start),
            end=_as_date(end),
        )


@dataclass(frozen=True)
class KpiSummary:
    """The headline numbers of the selected sessions.

    ``conversion_rate`` is converted sessions / sessions (0.0 when there are none); revenue is never summed
    across currencies.
    """

    active_users: int
    sessions: int
    converted_sessions: int
    conversion_rate: float
    avg_session_seconds: float
    revenue_by_currency: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionsSnapshot:
    """One read of the gold sessions table: the rows and the Delta version they came from."""

    frame: pd.DataFrame
    version: int
    path: str


def _open(path: PathLike) -> DeltaTable:
    try:
        return DeltaTable(os.fspath(path))
    except TableNotFoundError as exc:
        raise DataError(f"gold table {os.fspath(path)} not found: build the DAG first (make demo)") from exc
    except DeltaError as exc:
        raise DataError(f"gold table {os.fspath(path)} cannot be read by delta-rs: {exc}") from exc


def table_version(path: PathLike) -> int:
    """The current Delta version of the table at ``path`` (what a reader sees now).

    Raises:
        DataError: there is no Delta table at ``path``.
    """
    return int(_open(path).version())


def load_snapshot(path: PathLike) -> SessionsSnapshot:
    """Read the gold sessions table at ``path`` with delta-rs, together with the version read.

    Dates arrive as ``datetime64`` (not Python objects) so DuckDB and hvPlot handle them natively.

    Raises:
        DataError: the table is missing, unreadable, or lacks a column the queries need.
    """
    table = _open(path)
    version = int(table.version())
    try:
        arrow = arrow_lake.read(table)
    except DeltaError as exc:
        raise DataError(f"gold table {os.fspath(path)} cannot be read by delta-rs: {exc}") from exc
    missing = [name for name in SESSION_COLUMNS if name not in arrow.column_names]
    if missing:
        raise DataError(
            f"gold table {os.fspath(path)} lacks columns {missing}: rebuild gold with this DAG (make demo)"
        )
    frame = arrow.to_pandas(date_as_object=False)
    logger.info("read %d sessions from %s at version %d", len(frame), os.fspath(path), version)
    return SessionsSnapshot(frame=frame, version=version, path=os.fspath(path))


def load_sessions(path: PathLike) -> pd.DataFrame:
    """Read the gold sessions table at ``path`` into pandas (see :func:`load_snapshot`).

    Raises:
        DataError: the table is missing ("build the DAG first"), unreadable, or lacks needed columns.
    """
    return load_snapshot(path).frame


def _where(filters: Filters) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for attribute, column in _FILTER_COLUMNS.items():
        values: tuple[str, ...] = getattr(filters, attribute)
        if values:
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
    if filters.start is not None:
        clauses.append("CAST(session_date AS DATE) >= ?")
        params.append(filters.start)
    if filters.end is not None:
        clauses.append("CAST(session_date AS DATE) <= ?")
        params.append(filters.end)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _query(sessions: pd.DataFrame, sql: str, filters: Filters) -> pd.DataFrame:
    """Run ``sql`` (which names the filtered view ``sessions``) on a private in-memory DuckDB."""
    where, params = _where(filters)
    with duckdb.connect() as con:
        con.register("_frame", sessions)
        return con.execute(f"WITH {_VIEW} AS (SELECT * FROM _frame {where}) {sql}", params).df()


def kpi_summary(sessions: pd.DataFrame, filters: Filters) -> KpiSummary:
    """Active users (exact distinct), sessions, conversions and revenue per currency of the selection.

    Args:
        sessions: the gold sessions frame (:func:`load_sessions`).
        filters: the selection.

    Returns:
        A :class:`KpiSummary`; zeros and an empty revenue dict when nothing matches.
    """
    totals = _query(
        sessions,
        f"""
        SELECT COUNT(DISTINCT user_id) AS active_users,
               COUNT(*) AS sessions,
               COUNT(*) FILTER (WHERE converted) AS converted_sessions,
               COALESCE(AVG(duration_s), 0.0) AS avg_session_seconds
        FROM {_VIEW}
        """,
        filters,
    ).iloc[0]
    revenue = _query(
        sessions,
        f"""
        SELECT currency, SUM(revenue) AS revenue FROM {_VIEW}
        WHERE currency IS NOT NULL GROUP BY currency ORDER BY currency
        """,
        filters,
    )
    count = int(totals["sessions"])
    converted = int(totals["converted_sessions"])
    return KpiSummary(
        active_users=int(totals["active_users"]),
        sessions=count,
        converted_sessions=converted,
        conversion_rate=converted / count if count else 0.0,
        avg_session_seconds=float(totals["avg_session_seconds"]),
        revenue_by_currency={
            str(currency): float(amount)
            for currency, amount in zip(revenue["currency"], revenue["revenue"], strict=True)
        },
    )


def period(sessions: pd.DataFrame, filters: Filters) -> tuple[date, date] | None:
    """The dates a view covers: the filter's start and end, each defaulting to the frame's first/last date.

    Charts use it so their time axis stays put while filters change; None when the frame is empty.
    """
    bounds = date_bounds(sessions)
    if bounds is None:
        return None
    start, end = filters.start or bounds[0], filters.end or bounds[1]
    return (start, end) if start <= end else None


def _days(sessions: pd.DataFrame, filters: Filters) -> pd.DatetimeIndex:
    covered = period(sessions, filters)
    if covered is None:
        return pd.DatetimeIndex([], name="date")
    return pd.date_range(covered[0], covered[1], freq="D", name="date")


def daily_trend(sessions: pd.DataFrame, filters: Filters) -> pd.DataFrame:
    """Per day of :func:`period`: active users (exact distinct), sessions, conversion rate and orders.

    Every day of the period has a row: a day without sessions has zero users, sessions and orders, and a
    conversion rate of 0.0 (as :func:`kpi_summary` reports for an empty selection).

    Returns:
        Columns ``date`` (datetime64), ``active_users``, ``sessions``, ``conversion_rate`` and ``orders``.
    """
    trend = _query(
        sessions,
        f"""
        SELECT CAST(session_date AS DATE) AS date,
               COUNT(DISTINCT user_id) AS active_users,
               COUNT(*) AS sessions,
               AVG(CASE WHEN converted THEN 1.0 ELSE 0.0 END) AS conversion_rate,
               CAST(COALESCE(SUM(purchases), 0) AS BIGINT) AS orders
        FROM {_VIEW} GROUP BY 1 ORDER BY 1
        """,
        filters,
    )
    trend["date"] = pd.to_datetime(trend["date"])
    dense = trend.set_index("date").reindex(_days(sessions, filters), fill_value=0)
    return dense.astype(
        {"active_users": "int64", "sessions": "int64", "conversion_rate": "float64", "orders": "int64"}
    ).reset_index()


def funnel(sessions: pd.DataFrame, filters: Filters) -> pd.DataFrame:
    """Sessions reaching each step of :data:`FUNNEL`, in order.

    A session reaches a step when it has at least one event of that type (``page_views > 0`` for
    ``page_view``…), the definition of the models ``gold.funnel`` and ``gold.daily_kpis`` (``models/gold/``),
    so the numbers reconcile. On complete sessions the funnel narrows step by step; a step wider than the one
    before it means events went missing upstream (a purchase whose checkout event was lost counts for
    ``purchase``, not ``checkout``).

    Returns:
        Columns ``step``, ``sessions`` and ``rate_from_start`` (sessions / sessions at the first step).
    """
    reached = ", ".join(f"COUNT(*) FILTER (WHERE {STEP_COLUMNS[step]} > 0) AS {step}" for step in FUNNEL)
    counts = _query(sessions, f"SELECT {reached} FROM {_VIEW}", filters).iloc[0]
    steps = [int(counts[step]) for step in FUNNEL]
    start = steps[0]
    return pd.DataFrame(
        {
            "step": list(FUNNEL),
            "sessions": steps,
            "rate_from_start": [count / start if start else 0.0 for count in steps],
        }
    )


def revenue_by_day(sessions: pd.DataFrame, filters: Filters) -> pd.DataFrame:
    """Revenue per day of :func:`period` and currency; currencies are never added together.

    Each currency with revenue in the selection has a row for every day of the period (0.0 on days
    without purchases), so a chart of it shows the quiet days too.

    Returns:
        Columns ``date`` (datetime64), ``currency``, ``revenue``, ordered by currency then date.
    """
    revenue = _query(
        sessions,
        f"""
        SELECT CAST(session_date AS DATE) AS date, currency, SUM(revenue) AS revenue
        FROM {_VIEW} WHERE currency IS NOT NULL GROUP BY 1, 2
        """,
        filters,
    )
    revenue["date"] = pd.to_datetime(revenue["date"])
    grid = pd.MultiIndex.from_product(
        [sorted(revenue["currency"].unique()), _days(sessions, filters)], names=["currency", "date"]
    )
    dense = revenue.set_index(["currency", "date"])["revenue"].reindex(grid, fill_value=0.0)
    return dense.reset_index()[["date", "currency", "revenue"]]


def filter_options(sessions: pd.DataFrame) -> dict[str, list[str]]:
    """The choices for each filter widget: sorted distinct ``country``, ``platform`` and ``channel``."""
    return {
        column: sorted(str(value) for value in sessions[column].dropna().unique())
        for column in _FILTER_COLUMNS.values()
    }


def date_bounds(sessions: pd.DataFrame) -> tuple[date, date] | None:
    """The first and last session date in the frame, or None when it is empty."""
    dates = pd.to_datetime(sessions["session_date"]).dropna()
    if dates.empty:
        return None
    return dates.min().date(), dates.max().date()
