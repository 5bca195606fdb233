"""The models dashboard as a person meets it: served by ``panel serve`` over a small prepared project (its
audit tables and predictions written as the ML tasks write them), read in headless Chromium.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import panel_server
import pytest
from deltalake import write_deltalake
from playwright.sync_api import Page, expect

from lakehouse.config import Settings, load_settings
from lakehouse.ml import monitoring, training

pytestmark = pytest.mark.browser

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "models.py"
MODEL = "churn-risk"  # any declared model: the page knows none by name
T0 = datetime(2025, 3, 1, tzinfo=UTC)
DRIFT_REASON = "62% of features drifted (plan, region)"


@dataclass(frozen=True)
class Served:
    url: str
    log: Path
    settings: Settings


def _project(root: Path, with_data: bool) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text("", encoding="utf-8")
    (root / "env.yaml").write_text(f"env_name: local\nworkspace: {root / 'ws'}\n", encoding="utf-8")
    settings = load_settings("local", root=root)
    if not with_data:
        return settings
    for version, promoted, champion, value, reason in (
        ("1", True, None, 0.71, "no champion yet"),
        ("2", False, "1", 0.70, "average_precision 0.7000 vs champion 0.7100: does not beat it"),
        ("3", True, "1", 0.78, "average_precision 0.7800 vs champion 0.6900: beats it"),
    ):
        training.record_decision(
            settings,
            training.Decision(
                model=MODEL,
                challenger_version=version,
                champion_version=champion,
                metric="average_precision",
                margin=0.005,
                challenger_value=value,
                champion_value=None if champion is None else 0.69,
                promoted=promoted,
                reason=reason,
                window_start=T0,
                window_end=T0 + timedelta(days=1),
                decided_at=T0 + timedelta(days=int(version)),
            ),
        )
    reports = settings.reports / "ml" / "churn_risk"
    reports.mkdir(parents=True)
    windows = []
    for index, (share, retrain, reason) in enumerate(
        ((0.1, False, "within thresholds"), (0.62, True, DRIFT_REASON))
    ):
        report = reports / f"batch-{index}.html"
        report.write_text(f"<html><body>drift report {index}</body></html>", encoding="utf-8")
        (reports / f"batch-{index}-quality.html").write_text("<html><body>quality</body></html>")
        windows.append(
            {
                "model": MODEL,
                "model_version": "1",
                "batch_id": f"batch-{index}",
                "window_start": T0 + timedelta(days=index),
                "window_end": T0 + timedelta(days=index + 1),
                "rows": 120,
                "drift_share": share,
                "drifted_features": "plan,region" if retrain else "",
                "labelled_rows": 120,
                "quality_metric": "roc_auc",
                "quality": 0.8 - index * 0.1,
                "reference_quality": 0.8,
                "retrain": retrain,
                "reason": reason,
                "report": str(report),
                "monitored_at": T0 + timedelta(days=index + 1, hours=1),
            }
        )
    # the feature store's two task reports
    features_dir = settings.workspace / "features"
    features_dir.mkdir(parents=True)
    (features_dir / "applied.json").write_text(
        json.dumps({"entities": ["account"], "views": ["account_usage", "plan_events"], "removed": [],
                    "on_demand": ["usage_ratios"]})
    )  # fmt: skip
    (features_dir / "materialized.json").write_text(
        json.dumps([
            {"view": "account_usage", "start": "2025-03-01T00:00:00+00:00", "end": "2025-03-02T06:00:00+00:00",
             "skipped": None},
            {"view": "plan_events", "start": None, "end": None, "skipped": "gold.plan_events has no table yet"},
        ])
    )  # fmt: skip
    frame = pd.DataFrame(windows)
    write_deltalake(
        settings.table_path(*monitoring.MONITORING_TABLE),
        monitoring._arrow(frame, monitoring.MONITORING_TABLE),
    )
    return settings


@pytest.fixture(scope="module")
def models_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("models-project")
    settings = _project(root, with_data=True)
    log = tmp_path_factory.mktemp("models-server") / "panel.log"
    with panel_server.serve(root, log, DASHBOARD) as url:
        yield Served(url, log, settings)


def test_the_page_shows_the_champion_its_windows_and_decisions(page: Page, models_dashboard: Served) -> None:
    page.goto(models_dashboard.url)
    expect(page.locator(".model-select select")).to_have_value(MODEL)
    expect(page.locator(".model-champion")).to_contain_text(f"Champion of {MODEL}: version 3")
    windows = page.locator(".model-windows")
    expect(windows.locator(".tabulator-row", has_text=DRIFT_REASON)).to_contain_text("0.62")
    expect(windows.locator(".tabulator-row", has_text="within thresholds")).to_have_count(1)
    decisions = page.locator(".model-decisions")
    expect(decisions.locator(".tabulator-row", has_text="does not beat it")).to_contain_text("2")
    expect(page.locator(".drift-chart .bk-Canvas").first).to_be_visible()
    expect(page.locator(".quality-chart .bk-Canvas").first).to_be_visible()
    hrefs = {windows.locator("a", has_text=text).first.get_attribute("href") for text in ("drift", "quality")}
    reports = {f"/ml-reports/churn_risk/batch-{i}{kind}.html" for i in (0, 1) for kind in ("", "-quality")}
    assert len(hrefs) == 2 and hrefs <= reports, hrefs
    views = page.locator(".feature-views")
    expect(views.locator(".tabulator-row", has_text="account_usage")).to_contain_text("2025-03-02")
    expect(views.locator(".tabulator-row", has_text="plan_events")).to_contain_text("has no table yet")
    expect(views.locator(".tabulator-row", has_text="usage_ratios")).to_contain_text("computed when read")
    panel_server.assert_no_traceback(page, models_dashboard.log)


def test_before_any_training_the_page_says_so(page: Page, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("models-empty")
    _project(root, with_data=False)
    log = tmp_path_factory.mktemp("models-empty-server") / "panel.log"
    with panel_server.serve(root, log, DASHBOARD) as url:
        page.goto(url)
        expect(page.locator(".empty-models")).to_contain_text("No model has been trained yet")
        panel_server.assert_no_traceback(page, log)
