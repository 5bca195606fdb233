"""Lakehouse quality: validation results, quarantines, freshness against SLA, lineage and the catalog.

Thin on purpose: every frame comes from :mod:`lakehouse.serving.quality` (delta-rs, the lineage JSON Lines
files and the catalog's YAML contracts; no Spark), which also masks PII before anything reaches the page.
Serve it with::

    panel serve dashboards/quality.py --address 127.0.0.1 --port 5006 --allow-websocket-origin 127.0.0.1:5006

The environment comes from ``LAKEHOUSE_ENV`` (and the project root from ``LAKEHOUSE_ROOT`` or the working
directory), exactly as for the DAG and the KPI dashboard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import holoviews as hv
import hvplot.pandas  # noqa: F401  (registers the .hvplot accessor)
import pandas as pd
import panel as pn

from lakehouse.config import Settings, load_settings
from lakehouse.errors import LakehouseError
from lakehouse.serving import quality

pn.extension("tabulator", sizing_mode="stretch_width", notifications=False)

TITLE = "Lakehouse quality"
ACCENT = "#0f6e8c"
# What the pipeline writes shows up at most this long after it lands; every session shares the read.
SNAPSHOT_TTL_SECONDS = 60
read_results = pn.cache(quality.load_validation_results, ttl=SNAPSHOT_TTL_SECONDS)
read_quarantine_counts = pn.cache(quality.quarantine_counts, ttl=SNAPSHOT_TTL_SECONDS)
read_freshness = pn.cache(quality.freshness, ttl=SNAPSHOT_TTL_SECONDS)
read_lineage = pn.cache(quality.lineage_edges, ttl=SNAPSHOT_TTL_SECONDS)
read_catalog = pn.cache(quality.catalog_frame, ttl=SNAPSHOT_TTL_SECONDS)


def _empty(message: str, name: str) -> pn.pane.Alert:
    return pn.pane.Alert(message, alert_type="info", css_classes=["empty-state", f"empty-{name}"])


def _table(frame: pd.DataFrame, css_class: str, page_size: int = 10) -> pn.widgets.Tabulator:
    return pn.widgets.Tabulator(
        frame,
        show_index=False,
        disabled=True,
        pagination="local",
        page_size=page_size,
        layout="fit_data_table",
        css_classes=[css_class],
    )


def _guarded(name: str, build: Callable[[Settings], list[Any]], settings: Settings) -> pn.Column:
    """A section; an unreadable source (e.g. an invalid contract) says so instead of breaking the page."""
    try:
        body = build(settings)
    except LakehouseError as error:
        body = [
            pn.pane.Alert(str(error), alert_type="warning", css_classes=["section-error", f"error-{name}"])
        ]
    return pn.Column(*body, css_classes=[f"section-{name}"])


def _failing(results: pd.DataFrame, table: str) -> Any:
    failing = quality.failing_rules(results, table)
    run = quality.latest_run(results, table)
    if failing.empty:
        return pn.pane.Markdown(f"All rules of `{table}` passed in run `{run}`.", css_classes=["no-failures"])
    return pn.Column(
        pn.pane.Markdown(f"**Failing rules of `{table}`** in its latest run `{run}`"),
        _table(failing.drop(columns=["table", "run_id"]), "failing-rules"),
    )


def _runs(results: pd.DataFrame, table: str) -> pn.widgets.Tabulator:
    runs = quality.validation_runs(results, table).sort_values("validated_at", ascending=False)
    return _table(runs, "validation-runs", page_size=5)


def validation_section(settings: Settings) -> list[Any]:
    results = read_results(settings)
    tables = quality.validated_tables(results)
    if not tables:
        return [_empty("No validation results yet: the DAG's quality checks have not run.", "validation")]
    runs = quality.validation_runs(results)
    chart = runs.hvplot.line(
        x="validated_at",
        y="success_rate",
        by="table",
        ylim=(0, 1.05),
        xlabel="",
        ylabel="success rate",
        title="Expectations passed per run",
        height=300,
        responsive=True,
    ) * runs.hvplot.scatter(
        x="validated_at",
        y="success_rate",
        by="table",
        hover_cols=["run_id", "failed"],
        height=300,
        responsive=True,
    )
    selector = pn.widgets.Select(name="Table", options=tables, css_classes=["validation-table"])
    return [
        chart,
        selector,
        pn.panel(pn.bind(_failing, results, selector)),
        pn.panel(pn.bind(_runs, results, selector)),
    ]


def _samples(settings: Settings, table: str) -> Any:
    samples = quality.quarantine_samples(settings, table)
    if samples.empty:
        return _empty(f"`{table}` has no rows.", "quarantine-samples")
    return pn.Column(
        pn.pane.Markdown(f"**Latest rows of `{table}`** (PII tokenized, e-mail and IP addresses masked)"),
        _table(samples, "quarantine-samples", page_size=5),
    )


def quarantine_section(settings: Settings) -> list[Any]:
    counts = read_quarantine_counts(settings)
    if counts.empty:
        return [_empty("No quarantined rows yet: no quarantine table has rows.", "quarantine")]
    chart = counts.hvplot.barh(
        x="table",
        y="rows",
        by="reason",
        stacked=True,
        title="Quarantined rows per table and reason",
        xlabel="",
        height=max(200, 60 * counts["table"].nunique()),
        responsive=True,
        legend="right",
    )
    selector = pn.widgets.Select(
        name="Quarantine table", options=sorted(counts["table"].unique()), css_classes=["quarantine-table"]
    )
    return [
        chart,
        _table(counts, "quarantine-counts"),
        selector,
        pn.panel(pn.bind(_samples, settings, selector)),
    ]


def freshness_section(settings: Settings) -> list[Any]:
    status = quality.freshness_status(read_freshness(settings))
    if status.empty:
        return [_empty("No table yet: nothing to check against a freshness SLA.", "freshness")]
    late = status[status["status"].isin(["LATE", "missing"])]
    summary = (
        f"**{len(late)} of {len(status)} tables late or missing.**" if len(late) else "**All tables fresh.**"
    )
    return [
        pn.pane.Markdown(summary, css_classes=["freshness-summary"]),
        _table(status, "freshness", page_size=15),
    ]


def lineage_section(settings: Settings) -> list[Any]:
    edges = read_lineage(settings)
    if edges.empty:
        return [_empty("No lineage events yet: no run has emitted OpenLineage events.", "lineage")]
    nodes, links = quality.lineage_layout(quality.lineage_network(settings, edges))
    drawing = hv.Graph(
        ((links["source"], links["target"]), hv.Nodes(nodes, ["x", "y", "node"], ["kind", "label"]))
    ).opts(
        node_color="kind",
        cmap={"job": "#e1a140", "dataset": ACCENT},
        node_size=14,
        directed=True,
        arrowhead_length=0.02,
        xaxis=None,
        yaxis=None,
        height=420,
        responsive=True,
        title="Datasets (blue) and the jobs (orange) between them",
    )
    labels = hv.Labels(nodes, ["x", "y"], "label").opts(text_font_size="8pt", yoffset=0.15)
    shown = edges[["job", "input", "output", "state", "event_time"]].copy()
    return [pn.pane.HoloViews(drawing * labels, sizing_mode="stretch_width"), _table(shown, "lineage-edges")]


def _catalog_columns(catalog: pd.DataFrame, table: str) -> pn.widgets.Tabulator:
    columns = catalog[catalog["table"] == table].drop(
        columns=["owner", "table_classification", "freshness_sla"]
    )
    return _table(columns, "catalog-columns", page_size=20)


def catalog_section(settings: Settings) -> list[Any]:
    catalog = read_catalog(settings)
    if catalog.empty:
        return [_empty("No catalog yet: add contracts under catalog/<layer>/<name>.yaml.", "catalog")]
    tables = quality.catalog_tables(catalog)
    selector = pn.widgets.Select(
        name="Table", options=tables["table"].tolist(), css_classes=["catalog-table"]
    )
    return [
        _table(tables, "catalog-tables", page_size=15),
        selector,
        pn.panel(pn.bind(_catalog_columns, catalog, selector)),
    ]


SECTIONS: list[tuple[str, str, Callable[[Settings], list[Any]]]] = [
    ("Validation", "validation", validation_section),
    ("Quarantine", "quarantine", quarantine_section),
    ("Freshness", "freshness", freshness_section),
    ("Lineage", "lineage", lineage_section),
    ("Catalog", "catalog", catalog_section),
]


def unavailable(error: LakehouseError) -> pn.template.FastListTemplate:
    """The page when the environment itself cannot be loaded: what is wrong, no traceback."""
    message = pn.pane.Alert(
        f"### Quality data is not available\n\n{error}",
        alert_type="warning",
        css_classes=["quality-unavailable"],
    )
    return pn.template.FastListTemplate(title=TITLE, accent=ACCENT, main=[message])


def create_app() -> pn.template.FastListTemplate:
    """Build one session's page: one tab per section, each reading its own source."""
    try:
        settings = load_settings()
    except LakehouseError as error:
        return unavailable(error)
    tabs = pn.Tabs(
        *[(title, _guarded(name, build, settings)) for title, name, build in SECTIONS],
        css_classes=["quality-tabs"],
        dynamic=False,
    )
    profiles = settings.reports / "profiles" / "index.html"
    profiled = f" Table profiles: `{profiles}`." if profiles.is_file() else " No table profiles yet."
    footer = pn.pane.Markdown(
        f"Environment `{settings.env_name}`, lake `{settings.lake}`, reports `{settings.reports}`.{profiled}",
        css_classes=["quality-footer"],
        styles={"color": "#57606a", "font-size": "0.9em"},
    )
    return pn.template.FastListTemplate(title=TITLE, accent=ACCENT, main=[tabs, footer])


create_app().servable()
