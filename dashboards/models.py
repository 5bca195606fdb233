"""Lakehouse models: each declared model's champion, drift and quality per scored window, promotions, and
the feature store's views with how far each was materialized.

Thin on purpose: every frame comes from :mod:`lakehouse.serving.models` (delta-rs over the audit tables and
gold.predictions). Each window links its Evidently drift report, served beside the app under /ml-reports.
Serve it with::

    panel serve dashboards/models.py --address 127.0.0.1 --port 5006 --allow-websocket-origin 127.0.0.1:5006
"""

from __future__ import annotations

from typing import Any

import hvplot.pandas  # noqa: F401  (registers the .hvplot accessor)
import pandas as pd
import panel as pn

from lakehouse.config import Settings, load_settings
from lakehouse.errors import LakehouseError
from lakehouse.serving import models

pn.extension("tabulator", sizing_mode="stretch_width", notifications=False)

TITLE = "Lakehouse models"
ACCENT = "#6a4c93"
SNAPSHOT_TTL_SECONDS = 60
read_champions = pn.cache(models.champions, ttl=SNAPSHOT_TTL_SECONDS)
read_windows = pn.cache(models.windows, ttl=SNAPSHOT_TTL_SECONDS)
read_decisions = pn.cache(models.decisions, ttl=SNAPSHOT_TTL_SECONDS)
read_counts = pn.cache(models.prediction_counts, ttl=SNAPSHOT_TTL_SECONDS)
read_features = pn.cache(models.feature_store, ttl=SNAPSHOT_TTL_SECONDS)


def _table(frame: pd.DataFrame, css_class: str, page_size: int = 10, **options: Any) -> pn.widgets.Tabulator:
    return pn.widgets.Tabulator(
        frame,
        show_index=False,
        disabled=True,
        pagination="local",
        page_size=page_size,
        layout="fit_data_table",
        css_classes=[css_class],
        **options,
    )


def _model_view(settings: Settings, model: str) -> pn.Column:
    champions = read_champions(settings)
    mine = champions[champions["model"] == model]
    if len(mine) and mine.iloc[0]["champion"] is not None:
        row = mine.iloc[0]
        headline = (
            f"**Champion of `{model}`: version {row['champion']}** since {row['since']:%Y-%m-%d %H:%M} UTC "
            f"({row['metric']} {row['value']:.3f} on its held-out window; {row['decisions']} decisions)."
        )
    else:
        headline = f"`{model}` has no champion yet."
    body: list[Any] = [pn.pane.Markdown(headline, css_classes=["model-champion"])]
    windows = read_windows(settings, model)
    if windows.empty:
        body.append(
            pn.pane.Alert("No scored window monitored yet.", alert_type="info", css_classes=["empty-windows"])
        )
    else:
        drift = windows.hvplot.line(
            x="window_end", y="drift_share", ylim=(0, 1.05), xlabel="", ylabel="share of features drifted",
            title="Data drift per scored window", height=260, responsive=True,
        ) * windows.hvplot.scatter(
            x="window_end", y="drift_share", c="retrain", cmap=["#2a9d8f", "#e76f51"], hover_cols=["reason"],
            height=260, responsive=True,
        )  # fmt: skip
        body.append(pn.pane.HoloViews(drift, css_classes=["drift-chart"]))
        labelled = windows.dropna(subset=["quality"])
        if len(labelled):
            quality = labelled.hvplot.line(
                x="window_end", y=["quality", "reference_quality"], xlabel="",
                ylabel=str(labelled["quality_metric"].iloc[-1]), title="Quality once outcomes arrived",
                height=260, responsive=True,
            )  # fmt: skip
            body.append(pn.pane.HoloViews(quality, css_classes=["quality-chart"]))

        def anchor(url: str | None, text: str) -> str:
            return f'<a href="{url}" target="_blank">{text}</a>' if url else ""

        shown = windows.assign(
            report=windows["report_url"].map(lambda url: anchor(url, "drift")),
            quality_report=windows["quality_report_url"].map(lambda url: anchor(url, "quality")),
        ).drop(columns=["report_url", "quality_report_url"])
        html = {"type": "html"}
        body.append(_table(shown, "model-windows", formatters={"report": html, "quality_report": html}))
    decisions = read_decisions(settings, model)
    if not decisions.empty:
        body.append(
            pn.pane.Markdown("**Promotion decisions** (challenger against champion on the same later window)")
        )
        body.append(_table(decisions, "model-decisions"))
    counts = read_counts(settings, model)
    if not counts.empty:
        body.append(pn.pane.Markdown("**Predictions in gold.predictions** per version"))
        body.append(_table(counts, "model-predictions"))
    return pn.Column(*body)


def create_app() -> pn.template.FastListTemplate:
    """One session's page: a model selector and its champion, windows and decisions."""
    try:
        settings = load_settings()
        names = models.model_names(settings)
    except LakehouseError as error:
        message = pn.pane.Alert(f"### Model data is not available\n\n{error}", alert_type="warning")
        return pn.template.FastListTemplate(title=TITLE, accent=ACCENT, main=[message])
    if not names:
        empty = pn.pane.Alert(
            "No model has been trained yet: the DAG's ml-train tasks have not run.",
            alert_type="info",
            css_classes=["empty-models"],
        )
        return pn.template.FastListTemplate(title=TITLE, accent=ACCENT, main=[empty])
    selector = pn.widgets.Select(name="Model", options=names, css_classes=["model-select"])
    return pn.template.FastListTemplate(
        title=TITLE,
        accent=ACCENT,
        main=[selector, pn.panel(pn.bind(_model_view, settings, selector)), _feature_store(settings)],
    )


def _feature_store(settings: Settings) -> pn.Column:
    """The feature views the models read: how far each was written to Redis, or why it was not."""
    views = read_features(settings)
    if views.empty:
        return pn.Column(pn.pane.Markdown("**Feature store**: nothing registered yet (ml-features-apply)."))
    return pn.Column(
        pn.pane.Markdown("**Feature store**: the views and how far the online store (Redis) holds each"),
        _table(views, "feature-views"),
    )


create_app().servable()
