"""Serving: read gold Delta tables with delta-rs and aggregate them with DuckDB, no JVM.

Spark builds the gold tables; dashboards and APIs read them through this package.
"""

from lakehouse.serving.gold import (
    Filters,
    KpiSummary,
    SessionsSnapshot,
    daily_trend,
    date_bounds,
    filter_options,
    funnel,
    kpi_summary,
    load_sessions,
    load_snapshot,
    period,
    revenue_by_day,
    table_version,
)

__all__ = [
    "Filters",
    "KpiSummary",
    "SessionsSnapshot",
    "daily_trend",
    "date_bounds",
    "filter_options",
    "funnel",
    "kpi_summary",
    "load_sessions",
    "load_snapshot",
    "period",
    "revenue_by_day",
    "table_version",
]
