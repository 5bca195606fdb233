"""The whole DAG on the test environment: built from Kafka to a model, incremental, four ways to run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.dag import build, ploomber_env
from lakehouse.silver.events import CleanTables, reconcile
from lakehouse.simulate import simulate_to_kafka

pytestmark = pytest.mark.dag

# Downstream of the Kafka-backed bronze task: re-run when Kafka has new records.
NOTEBOOKS = [
    "bronze/ingest_events",
    "silver/clean_events",
    "gold/build_sessions",
    "gold/build_daily_kpis",
    "gold/build_revenue",
    "ml/train_conversion",
]
EVERY_NOTEBOOK = [*NOTEBOOKS, "bronze/pull_apis", "silver/clean_fx_rates"]


def _executed(settings: Settings) -> dict[str, float]:
    return {nb: (settings.workspace / "notebooks" / f"{nb}.ipynb").stat().st_mtime for nb in EVERY_NOTEBOOK}


@pytest.fixture(scope="module")
def built(stack: Settings, spark: Any) -> dict[str, Any]:
    report = simulate_to_kafka(stack)
    forced = build(stack)
    return {"report": report, "forced": forced, "executed": _executed(stack)}


def test_the_dag_builds_every_product(stack: Settings, built: dict[str, Any]) -> None:
    for nb in NOTEBOOKS:
        assert (stack.workspace / "notebooks" / f"{nb}.ipynb").is_file(), nb
    for layer, table in [
        ("bronze", "clickstream"),
        ("silver", "events"),
        ("gold", "sessions"),
        ("gold", "daily_kpis"),
    ]:
        assert (Path(stack.table_path(layer, table)) / "_delta_log").is_dir(), table
    metrics = json.loads((stack.workspace / "ml" / "conversion_metrics.json").read_text())
    assert 0.5 < metrics["roc_auc"] <= 1.0


def test_counts_reconcile_with_what_was_produced(stack: Settings, spark: Any, built: dict[str, Any]) -> None:
    kinds = built["report"].by_kind
    totals = reconcile(spark, CleanTables.from_settings(stack))
    assert totals.bronze_rows == built["report"].sent
    assert totals.silver_rows == kinds.get("valid", 0) + kinds.get("late", 0)
    assert totals.quarantined == kinds.get("malformed", 0) + kinds.get("very_late", 0)
    assert totals.duplicates == kinds.get("duplicate", 0)
    assert totals.balanced


def test_a_second_build_with_nothing_new_runs_nothing(stack: Settings, built: dict[str, Any]) -> None:
    assert build(stack) == []
    assert _executed(stack) == built["executed"]


def test_new_events_rerun_bronze_and_everything_downstream(
    stack: Settings, spark: Any, built: dict[str, Any]
) -> None:
    before = reconcile(spark, CleanTables.from_settings(stack))
    more = simulate_to_kafka(stack, count=300, run=1)
    assert build(stack) == ["bronze-ingest-events"]
    after = reconcile(spark, CleanTables.from_settings(stack))
    assert after.bronze_rows == before.bronze_rows + more.sent
    assert after.silver_rows > before.silver_rows and after.balanced
    executed = _executed(stack)
    assert all(executed[nb] > built["executed"][nb] for nb in NOTEBOOKS)


def _papermill(stack: Settings, tmp_path: Path, *params: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "papermill"),
        "notebooks/gold/build_sessions.ipynb",
        str(tmp_path / "out.ipynb"),
        "-p",
        "lakehouse_env",
        stack.env_name,
        *params,
    ]
    return subprocess.run(command, cwd=stack.root, env=ploomber_env(stack), capture_output=True, text=True)


def test_a_notebook_runs_alone_with_papermill(stack: Settings, built: dict[str, Any], tmp_path: Path) -> None:
    result = _papermill(stack, tmp_path, "-p", "gap_minutes", "45")
    assert result.returncode == 0, result.stderr[-3000:]
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert "gap_minutes = 45" in "".join(injected[0]["source"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (("-p", "gap_minutes", "abc"), "parameter 'gap_minutes' must be int"),
        (("-p", "gap_minute", "45"), "unknown parameter(s) ['gap_minute']"),
    ],
)
def test_bad_parameters_stop_the_run_with_a_clear_message(
    stack: Settings, built: dict[str, Any], tmp_path: Path, params: tuple[str, ...], message: str
) -> None:
    result = _papermill(stack, tmp_path, *params)
    assert result.returncode != 0
    assert message in result.stderr + (tmp_path / "out.ipynb").read_text()
