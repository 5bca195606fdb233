"""Monitoring of scored windows: drift and quality against the champion's training window, retrain requests.

The windows are written here as scoring writes them (predictions, scored inputs, labels); scoring itself
reads the feature store and is proven on the stack (tests/dag).
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest
from deltalake import write_deltalake
from test_training import synthetic_training_set

from lakehouse.config import Settings
from lakehouse.ml import monitoring, training

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def spec(settings: Settings) -> training.ModelSpec:
    return training.load_model_spec(settings, "conversion_propensity")


@pytest.fixture(scope="module")
def served(
    settings: Settings, spec: training.ModelSpec, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, training.TrainResult]:
    """A workspace whose model has a champion, and its labels in gold.sessions."""
    ws = settings.model_copy(update={"workspace": tmp_path_factory.mktemp("monitoring")})
    data = synthetic_training_set(spec, n=800)
    result = training.train(ws, spec, data)
    training.promote(ws, spec, result)
    labels = data.frame[["session_id", "user_id", "session_end", "converted"]].assign(
        converted=lambda f: f["converted"].astype(bool)
    )
    write_deltalake(ws.table_path("gold", "sessions"), labels)
    monitoring.ensure_tables(ws)
    return ws, result


def _scored(ws: Settings, spec: training.ModelSpec, result: training.TrainResult, rows: pd.DataFrame) -> str:
    """Write a scored window as monitoring.score does: its inputs and its predictions."""
    import mlflow.pyfunc

    training.use_mlflow(ws)
    model = mlflow.pyfunc.load_model(f"models:/{spec.registered_name}/{result.version}")
    frame = training.prepare_inputs(rows, ws, spec)
    probability = np.asarray(model.predict(frame[training.feature_columns(spec)]))[:, 1]
    batch = uuid.uuid4().hex
    path = monitoring.scored_path(ws, spec, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.assign(prediction=probability).to_parquet(path, index=False)
    predictions = pd.DataFrame(
        {
            "model": spec.registered_name,
            "model_version": result.version,
            "alias": "champion",
            "entity_key": monitoring.entity_key(frame, spec.labels.keys),
            "event_timestamp": frame["session_end"],
            "features_as_of": frame["session_end"],
            "prediction": probability,
            "lake_versions": "{}",
            "batch_id": batch,
            "scored_at": pd.Timestamp.now(tz="UTC"),
        }
    )
    write_deltalake(
        ws.table_path(*monitoring.PREDICTIONS_TABLE),
        monitoring._arrow(predictions, monitoring.PREDICTIONS_TABLE),
        mode="append",
    )
    return batch


def test_a_window_like_the_training_one_asks_for_nothing(
    served: tuple[Settings, training.TrainResult], spec: training.ModelSpec
) -> None:
    ws, result = served
    batch = _scored(ws, spec, result, result.test)
    (window,) = monitoring.monitor(ws, spec)
    assert window.batch_id == batch and window.rows == len(result.test)
    assert window.drift_share < spec.monitoring.drift_share and not window.retrain
    assert window.labelled_rows == len(result.test)
    # the champion on its own test window: the quality its run recorded
    assert window.quality == pytest.approx(result.metrics["roc_auc"])
    assert window.reason == "within thresholds"
    assert not monitoring.retrain_request_path(ws, spec).exists()
    html = window.report
    assert html.endswith(f"{batch}.html")
    with open(html, encoding="utf-8") as document:
        assert "session_activity__channel" in document.read()  # the report covers the features
    # the outcomes are known: a classification report beside it
    assert html.replace(".html", "-quality.html") in {
        str(p) for p in monitoring.report_dir(ws, spec).iterdir()
    }
    # a window is monitored once
    assert monitoring.monitor(ws, spec) == []


def test_a_drifted_window_asks_for_a_retrain_once(
    served: tuple[Settings, training.TrainResult], spec: training.ModelSpec
) -> None:
    ws, result = served
    shifted = result.test.copy()
    rng = np.random.default_rng(5)
    for column in training.feature_columns(spec):
        if column in training.categorical_columns(ws, spec):
            shifted[column] = rng.choice(["new-a", "new-b"], len(shifted))
        else:
            shifted[column] = pd.to_numeric(shifted[column]).fillna(0) * 5 + 40
    batch = _scored(ws, spec, result, shifted)
    (window,) = monitoring.monitor(ws, spec)
    assert window.retrain and window.drift_share > spec.monitoring.drift_share
    assert "features drifted" in window.reason
    request = json.loads(monitoring.retrain_request_path(ws, spec).read_text())
    assert request["batch_id"] == batch and request["reason"] == window.reason
    history = monitoring.monitoring_history(ws, spec.registered_name)
    assert history["retrain"].tolist()[-2:] == [False, True]
    # the same request is not written twice (it would retrain twice)
    before = monitoring.retrain_request_path(ws, spec).stat().st_mtime_ns
    monitoring.request_retrain(ws, spec, window.reason, batch_id=batch)
    assert monitoring.retrain_request_path(ws, spec).stat().st_mtime_ns == before


def test_a_window_too_small_to_judge_is_recorded_but_asks_for_nothing(
    served: tuple[Settings, training.TrainResult], spec: training.ModelSpec
) -> None:
    ws, result = served
    small = result.test.head(spec.monitoring.min_rows - 1).copy()
    for column in training.feature_columns(spec):
        if column not in training.categorical_columns(ws, spec):
            small[column] = 1000.0
    _scored(ws, spec, result, small)
    (window,) = monitoring.monitor(ws, spec)
    assert not window.retrain and "fewer than" in window.reason


def test_without_a_champion_the_monitor_asks_for_a_first_training(
    settings: Settings, spec: training.ModelSpec, tmp_path_factory: pytest.TempPathFactory
) -> None:
    empty = settings.model_copy(update={"workspace": tmp_path_factory.mktemp("no-champion")})
    assert monitoring.monitor(empty, spec) == []
    request = json.loads(monitoring.retrain_request_path(empty, spec).read_text())
    assert request["reason"] == "no champion yet"
