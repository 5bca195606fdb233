"""Lakehouse KPIs: active users, sessions, conversion, funnel and revenue over the gold ``sessions`` table.

Thin on purpose: every number comes from :mod:`lakehouse.serving.gold` (delta-rs + DuckDB, no Spark); this
file only lays out widgets and charts. Serve it with::

    panel serve dashboards/kpis.py --address 127.0.0.1 --port 5006 --allow-websocket-origin 127.0.0.1:5006

The environment comes from ``LAKEHOUSE_ENV`` (and the project root from ``LAKEHOUSE_ROOT`` or the working
directory), exactly as for the DAG, so the page reads the tables the DAG wrote.
"""

from __future__ import annotations

from typing import Any

import hvplot.pandas  # noqa: F401  (registers the .hvplot accessor)
import pandas as pd
import panel as pn
from bokeh.models import DatetimeTickFormatter

from lakehouse.config import load_settings
from lakehouse.errors import LakehouseError
from lakehouse.serving import gold

pn.extension(sizing_mode="stretch_width", notifications=False)

TITLE = "Lakehouse KPIs"
ACCENT = "#0f6e8c"
# A Delta commit shows up on the page at most this long after it lands; every session shares the read.
SNAPSHOT_TTL_SECONDS = 60
read_snapshot = pn.cache(gold.load_snapshot, ttl=SNAPSHOT_TTL_SECONDS)

DAY_TICKS = DatetimeTickFormatter(days="%d %b", months="%b %Y", context="")
CARD_STYLE = {
    "border": "1px solid #d8dee4",
    "border-radius": "8px",
    "padding": "4px 12px",
    "background": "white",
}


def _number(name: str, value: float, fmt: str, css_class: str) -> pn.indicators.Number:
    return pn.indicators.Number(
        name=name,
        value=value,
        format=fmt,
        font_size="26pt",
        title_size="11pt",
        css_classes=["kpi", css_class],
        styles=CARD_STYLE,
        width=190,
        height=100,
        sizing_mode="fixed",
    )


def _choice(name: str, options: list[str], placeholder: str, css_class: str) -> pn.widgets.MultiChoice:
    return pn.widgets.MultiChoice(
        name=name, options=options, placeholder=placeholder, css_classes=[css_class]
    )


def kpi_cards(sessions: pd.DataFrame, filters: gold.Filters) -> pn.FlexBox:
    """The headline numbers; each card has a stable CSS class (``kpi-active-users``, ``kpi-revenue-eur``…)."""
    kpis = gold.kpi_summary(sessions, filters)
    cards: list[Any] = [
        _number("Active users", kpis.active_users, "{value:,.0f}", "kpi-active-users"),
        _number("Sessions", kpis.sessions, "{value:,.0f}", "kpi-sessions"),
        _number("Conversion rate", kpis.conversion_rate, "{value:.1%}", "kpi-conversion-rate"),
        _number("Avg session", kpis.avg_session_seconds, "{value:,.0f} s", "kpi-avg-session"),
    ]
    cards += [
        _number(f"Revenue {currency}", amount, "{value:,.2f}", f"kpi-revenue-{currency.lower()}")
        for currency, amount in kpis.revenue_by_currency.items()
    ]
    return pn.FlexBox(*cards, gap="12px")


def _nothing_selected() -> pn.pane.Markdown:
    return pn.pane.Markdown("*No sessions match the filters.*", css_classes=["no-data"])


def trend_chart(sessions: pd.DataFrame, filters: gold.Filters) -> Any:
    trend = gold.daily_trend(sessions, filters)
    if trend.empty:
        return _nothing_selected()
    return trend.hvplot.line(
        x="date",
        y=["active_users", "sessions"],
        title="Daily active users and sessions",
        xlabel="",
        ylabel="count",
        legend="top",
        group_label="Metric",
        xformatter=DAY_TICKS,
        height=320,
        responsive=True,
    )


def funnel_chart(sessions: pd.DataFrame, filters: gold.Filters) -> Any:
    steps = gold.funnel(sessions, filters)
    return steps.hvplot.barh(
        x="step",
        y="sessions",
        hover_cols=["rate_from_start"],
        title="Funnel: sessions reaching each step",
        xlabel="",
        ylabel="sessions",
        flip_yaxis=True,
        color=ACCENT,
        height=320,
        responsive=True,
    )


def revenue_chart(sessions: pd.DataFrame, filters: gold.Filters) -> Any:
    revenue = gold.revenue_by_day(sessions, filters)
    if revenue.empty:
        return pn.pane.Markdown("*No revenue in the selection.*", css_classes=["no-data"])
    # One small chart per currency: amounts in JPY and EUR do not share an axis.
    return revenue.hvplot.line(
        x="date",
        y="revenue",
        by="currency",
        subplots=True,
        shared_axes=False,
        xlabel="",
        xformatter=DAY_TICKS,
        rot=30,
        width=290,
        height=200,
    ).cols(3)


def unavailable(error: LakehouseError) -> pn.template.FastListTemplate:
    """The page when there is nothing to show: what is wrong and what to do, no traceback."""
    message = pn.pane.Alert(
        f"### Gold data is not available\n\n{error}",
        alert_type="warning",
        css_classes=["gold-unavailable"],
    )
    return pn.template.FastListTemplate(title=TITLE, accent=ACCENT, main=[message])


def create_app() -> pn.template.FastListTemplate:
    """Build one session's page: widgets, bound views and the footer naming the Delta version read."""
    try:
        path = load_settings().table_path("gold", "sessions")
        snapshot = read_snapshot(path)
    except LakehouseError as error:
        return unavailable(error)
    sessions = snapshot.frame
    options = gold.filter_options(sessions)
    country = _choice("Country", options["country"], "All countries", "filter-country")
    platform = _choice("Platform", options["platform"], "All platforms", "filter-platform")
    channel = _choice("Channel", options["channel"], "All channels", "filter-channel")
    widgets: list[Any] = [country, platform, channel]
    bounds = gold.date_bounds(sessions)
    period: Any = None
    if bounds is not None and bounds[0] < bounds[1]:
        period_slider = pn.widgets.DateRangeSlider(
            name="Session date", start=bounds[0], end=bounds[1], value=bounds, css_classes=["filter-period"]
        )
        widgets.append(period_slider)
        period = period_slider.param.value_throttled
    filters = pn.bind(
        gold.Filters.from_selection, countries=country, platforms=platform, channels=channel, period=period
    )
    footer = pn.pane.Markdown(
        f"Reading gold Delta table `{snapshot.path}` at **version {snapshot.version}**"
        f" ({len(sessions):,} sessions).",
        css_classes=["gold-footer"],
        styles={"color": "#57606a", "font-size": "0.9em"},
    )
    return pn.template.FastListTemplate(
        title=TITLE,
        accent=ACCENT,
        sidebar=[pn.pane.Markdown("### Filters\nEmpty means all."), *widgets],
        main=[
            pn.panel(pn.bind(kpi_cards, sessions, filters)),
            pn.Row(
                pn.panel(pn.bind(trend_chart, sessions, filters)),
                pn.panel(pn.bind(funnel_chart, sessions, filters)),
            ),
            pn.Column(
                pn.pane.Markdown("#### Revenue by day, per currency"),
                pn.panel(pn.bind(revenue_chart, sessions, filters)),
            ),
            footer,
        ],
    )


create_app().servable()
