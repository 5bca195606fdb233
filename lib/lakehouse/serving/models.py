"""What the models dashboard shows, read from the lake with delta-rs (no Spark, no MLflow server).

The champions and their history come from ``audit.model_promotions``; drift and quality per scored window
from ``audit.model_monitoring``; prediction counts from ``gold.predictions`` (see :mod:`lakehouse.ml`); the
feature store's views and how far each was materialized from the reports its two DAG tasks write. Every
function returns an empty frame before the ML tasks have run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import pandas as pd

from lakehouse import arrow_lake
from lakehouse.config import Settings

PROMOTIONS: Final = ("audit", "model_promotions")
MONITORING: Final = ("audit", "model_monitoring")
PREDICTIONS: Final = ("gold", "predictions")
# The dashboard server publishes <reports>/ml here (lakehouse.stack.dashboard).
REPORTS_URL: Final = "ml-reports"
DECISION_COLUMNS: Final = [
    "decided_at", "challenger_version", "champion_version", "metric", "challenger_value", "champion_value",
    "promoted", "reason",
]  # fmt: skip
WINDOW_COLUMNS: Final = [
    "window_start", "window_end", "model_version", "rows", "drift_share", "drifted_features", "labelled_rows",
    "quality_metric", "quality", "reference_quality", "retrain", "reason", "report_url", "quality_report_url",
]  # fmt: skip


def _read(settings: Settings, table: tuple[str, str], columns: list[str] | None = None) -> pd.DataFrame:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return arrow_lake.frame(DeltaTable(settings.table_path(*table)), columns)
    except TableNotFoundError:
        return pd.DataFrame()


def model_names(settings: Settings) -> list[str]:
    """Every model with a promotion decision or a monitored window."""
    names: set[str] = set()
    for table in (PROMOTIONS, MONITORING):
        frame = _read(settings, table, ["model"])
        if not frame.empty:
            names |= set(frame["model"])
    return sorted(names)


def champions(settings: Settings) -> pd.DataFrame:
    """Per model: its champion version (the last promoted challenger), when, and on what metric value."""
    decisions = _read(settings, PROMOTIONS)
    if decisions.empty:
        return pd.DataFrame(columns=["model", "champion", "since", "metric", "value", "decisions"])
    rows = []
    for model, group in decisions.sort_values("decided_at").groupby("model"):
        promoted = group[group["promoted"]]
        last = promoted.iloc[-1] if len(promoted) else None
        rows.append(
            {
                "model": model,
                "champion": None if last is None else last["challenger_version"],
                "since": None if last is None else last["decided_at"],
                "metric": None if last is None else last["metric"],
                "value": None if last is None else last["challenger_value"],
                "decisions": len(group),
            }
        )
    return pd.DataFrame(rows)


def decisions(settings: Settings, model: str) -> pd.DataFrame:
    """The model's promotion decisions, newest first."""
    frame = _read(settings, PROMOTIONS)
    if frame.empty:
        return frame
    shown = frame[frame["model"] == model].sort_values("decided_at", ascending=False)
    return shown[DECISION_COLUMNS].reset_index(drop=True)


def windows(settings: Settings, model: str) -> pd.DataFrame:
    """The model's monitored windows, oldest first, each with the URL of its drift report."""
    frame = _read(settings, MONITORING)
    if frame.empty:
        return frame
    shown = frame[frame["model"] == model].sort_values("window_end", ignore_index=True)
    base = (settings.reports / "ml").resolve()

    def link(path: str) -> str | None:
        try:
            return f"/{REPORTS_URL}/" + Path(path).resolve().relative_to(base).as_posix()
        except ValueError:
            return None

    shown["report_url"] = shown["report"].map(link)
    # the classification report of a window whose outcomes had arrived, beside its drift report
    quality = shown["report"].map(lambda path: str(path).removesuffix(".html") + "-quality.html")
    shown["quality_report_url"] = [link(q) if Path(q).is_file() else None for q in quality]
    return shown[WINDOW_COLUMNS]


def prediction_counts(settings: Settings, model: str) -> pd.DataFrame:
    """Rows in gold.predictions per version of the model, with the newest scoring time."""
    frame = _read(settings, PREDICTIONS, ["model", "model_version", "scored_at"])
    if frame.empty:
        return frame
    mine = frame[frame["model"] == model]
    counted = mine.groupby("model_version", as_index=False).agg(
        rows=("scored_at", "size"), last_scored=("scored_at", "max")
    )
    return counted.sort_values("last_scored", ascending=False, ignore_index=True)


FEATURE_COLUMNS: Final = ["view", "kind", "materialized_to", "note"]


def feature_store(settings: Settings) -> pd.DataFrame:
    """The registered views (stored and on demand) and how far the last materialization wrote each to Redis.

    Read from ``ml-features-apply``'s and ``ml-features-materialize``'s reports (no Feast registry read).
    """
    from lakehouse.ml.features import apply_report_path, materialize_report_path

    def load(path: Path) -> object:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    applied = load(apply_report_path(settings))
    if not isinstance(applied, dict):
        return pd.DataFrame(columns=FEATURE_COLUMNS)
    done = load(materialize_report_path(settings))
    runs = {row["view"]: row for row in done if isinstance(row, dict)} if isinstance(done, list) else {}
    rows = []
    for view in applied.get("views", []):
        run = runs.get(view, {})
        end = pd.to_datetime(str(run["end"]), utc=True) if run.get("end") else None
        note = run.get("skipped") or ("" if run else "not materialized yet")
        rows.append({"view": view, "kind": "stored", "materialized_to": end, "note": note})
    for view in applied.get("on_demand", []):
        rows.append(
            {"view": view, "kind": "on demand", "materialized_to": None, "note": "computed when read"}
        )
    return pd.DataFrame(rows, columns=FEATURE_COLUMNS)
