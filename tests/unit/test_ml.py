"""The conversion-propensity model on synthetic gold sessions, tracked in a temporary MLflow store."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lakehouse.errors import ConfigError, DataError
from lakehouse.ml.conversion import (
    FEATURES,
    LEAKAGE_COLUMNS,
    REGISTERED_MODEL_NAME,
    ConversionParams,
    TrainResult,
    build_features,
    load_model,
    score_sessions,
    train_conversion_model,
)

pytestmark = pytest.mark.unit

CHANNELS = ["organic", "paid_search", "social", "email", "direct", "referral"]
COUNTRIES = {"DE": "EUR", "US": "USD", "GB": "GBP", "JP": "JPY"}


class Store(TypedDict):
    """Where a test's MLflow runs go: the keyword arguments of train_conversion_model."""

    tracking_uri: str
    experiment: str
    artifact_location: str


def synthetic_sessions(n: int = 480, seed: int = 3) -> pd.DataFrame:
    """Gold-shaped sessions where add-to-carts and the email channel drive conversion."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-11-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.uniform(0, 14 * 86_400, n)), "s"
    )
    channel = rng.choice(CHANNELS, n)
    country = rng.choice(list(COUNTRIES), n)
    platform = rng.choice(["web", "ios", "android"], n)
    page_views = rng.integers(1, 8, n)
    product_views = rng.poisson(2.0, n)
    add_to_carts = rng.poisson(0.8, n)
    logit = -3.5 + 2.0 * add_to_carts + 2.0 * (channel == "email") + 0.15 * product_views
    converted = rng.uniform(size=n) < 1 / (1 + np.exp(-logit))
    purchases = converted.astype("int64")
    duration = rng.uniform(10, 1800, n)
    return pd.DataFrame(
        {
            "session_id": [f"u{i}-{int(ts.timestamp())}" for i, ts in enumerate(start)],
            "user_id": [f"u{i % 150}" for i in range(n)],
            "session_start": start,
            "session_end": start + pd.to_timedelta(duration, "s"),
            "session_date": start.date,
            "duration_s": duration,
            "events": page_views + product_views + add_to_carts + 2 * purchases,
            "page_views": page_views,
            "product_views": product_views,
            "searches": rng.poisson(0.5, n),
            "add_to_carts": add_to_carts,
            "checkouts": purchases,
            "purchases": purchases,
            "revenue": np.where(converted, rng.uniform(10, 200, n), 0.0),
            "currency": [COUNTRIES[c] if conv else None for c, conv in zip(country, converted, strict=True)],
            "platform": platform,
            "device_type": np.where(platform == "web", "desktop", "phone"),
            "os": np.where(platform == "ios", "iOS", np.where(platform == "android", "Android", "Windows")),
            "app_version": [None if p == "web" else "3.1" for p in platform],
            "country": country,
            "channel": channel,
            "converted": converted,
        }
    )


@pytest.fixture(scope="module")
def sessions() -> pd.DataFrame:
    return synthetic_sessions()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    return Store(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        experiment="conversion-test",
        artifact_location=str(root / "artifacts"),
    )


@pytest.fixture(scope="module")
def trained(sessions: pd.DataFrame, store: Store) -> TrainResult:
    return train_conversion_model(sessions, **store)


def test_features_leave_out_everything_that_reveals_the_purchase() -> None:
    assert not set(FEATURES) & {
        *LEAKAGE_COLUMNS,
        "checkouts",
        "purchases",
        "revenue",
        "converted",
        "currency",
    }
    assert not any("end" in name or "duration" in name for name in FEATURES)


def test_build_features(sessions: pd.DataFrame) -> None:
    X, y = build_features(sessions)
    assert list(X.columns) == list(FEATURES)
    assert len(X) == len(y) == len(sessions)
    assert set(y.unique()) == {0, 1}
    assert X["start_hour"].between(0, 23).all()
    assert X["start_day_of_week"].between(0, 6).all()
    # Missing categories become a category of their own instead of breaking the encoder.
    with_gap = sessions.copy()
    with_gap.loc[0, "os"] = None
    assert build_features(with_gap)[0].loc[0, "os"] == "unknown"


def test_build_features_rejects_untrainable_input(sessions: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="add_to_carts"):
        build_features(sessions.drop(columns=["add_to_carts"]))
    with pytest.raises(DataError, match="converted"):
        build_features(sessions.drop(columns=["converted"]))
    with pytest.raises(DataError, match="both"):
        build_features(sessions.assign(converted=False))
    with pytest.raises(DataError, match="at least 20"):
        build_features(sessions.head(10))


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="hgb"):
        ConversionParams(model="forest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="test_fraction"):
        ConversionParams(test_fraction=1.0)


def test_training_learns_the_signal(trained: TrainResult) -> None:
    metrics = trained.metrics
    assert metrics["roc_auc"] > 0.7
    assert metrics["n_train"] + metrics["n_test"] == 480
    assert metrics["n_test"] == pytest.approx(120, abs=1)
    assert 0 < metrics["base_rate"] < 1
    assert metrics["lift_over_baseline_ap"] > 1.0
    assert metrics["log_loss"] < metrics["baseline_log_loss"]
    assert metrics["average_precision"] == pytest.approx(
        metrics["lift_over_baseline_ap"] * metrics["base_rate"]
    )


def test_run_is_tracked_with_params_metrics_and_artifacts(trained: TrainResult, store: Store) -> None:
    client = MlflowClient(tracking_uri=store["tracking_uri"])
    run = client.get_run(trained.run_id)
    assert run.data.params["model"] == "hgb"
    assert run.data.params["seed"] == "7"
    assert run.data.params["features"].split(",") == list(FEATURES)
    for name in (
        "roc_auc",
        "average_precision",
        "log_loss",
        "accuracy",
        "base_rate",
        "lift_over_baseline_ap",
    ):
        assert run.data.metrics[name] == pytest.approx(trained.metrics[name])
    assert run.data.metrics["n_test"] == trained.metrics["n_test"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == store["experiment"]
    # Artifacts land under the given location, not in ./mlruns of the working directory.
    assert experiment.artifact_location == Path(store["artifact_location"]).resolve().as_uri()
    assert any(Path(store["artifact_location"]).rglob("MLmodel"))


def test_registered_model_loads_and_scores(
    trained: TrainResult, sessions: pd.DataFrame, store: Store
) -> None:
    client = MlflowClient(tracking_uri=store["tracking_uri"], registry_uri=store["tracking_uri"])
    version = client.get_model_version(REGISTERED_MODEL_NAME, trained.model_version)
    assert version.run_id == trained.run_id
    assert trained.model_uri == f"models:/{REGISTERED_MODEL_NAME}/{trained.model_version}"

    model = load_model(trained.model_uri, tracking_uri=store["tracking_uri"])
    unlabelled = sessions.drop(columns=["converted"]).tail(50)
    scores = score_sessions(model, unlabelled)
    assert scores.index.equals(unlabelled.index)
    assert scores.between(0.0, 1.0).all()
    # The score follows the signal: more add-to-carts, higher propensity.
    assert scores[unlabelled["add_to_carts"] >= 2].mean() > scores[unlabelled["add_to_carts"] == 0].mean()
    # Leakage columns do not move the score.
    scrambled = unlabelled.assign(purchases=0, checkouts=0, revenue=0.0, currency=None, duration_s=0.0)
    pd.testing.assert_series_equal(score_sessions(model, scrambled), scores)


def test_logistic_regression_registers_a_new_version(
    sessions: pd.DataFrame, store: Store, trained: TrainResult
) -> None:
    result = train_conversion_model(sessions, params=ConversionParams(model="logreg"), **store)
    assert result.metrics["roc_auc"] > 0.7
    assert int(result.model_version) == int(trained.model_version) + 1


def test_training_refuses_a_test_window_with_one_outcome(sessions: pd.DataFrame, store: Store) -> None:
    late = sessions["session_start"] >= sessions["session_start"].quantile(0.7)
    with pytest.raises(DataError, match="test window"):
        train_conversion_model(sessions.assign(converted=sessions["converted"] & ~late), **store)
