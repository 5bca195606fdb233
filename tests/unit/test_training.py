"""Declared models: training sets split by time, tracked and registered in MLflow, promoted by alias.

The training set is synthetic (the feature store's column names, no Feast): these tests are about what
happens after the point-in-time join, which tests/integration/test_feature_store.py proves on the stack.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.ml import features as fs
from lakehouse.ml import training

pytestmark = pytest.mark.unit

CHANNELS = ["organic", "paid_search", "social", "email", "direct"]


def synthetic_training_set(spec: training.ModelSpec, n: int = 600, seed: int = 3) -> fs.TrainingSet:
    """Rows where add-to-carts and the email channel drive conversion; the user's history is noise."""
    rng = np.random.default_rng(seed)
    end = pd.Timestamp("2024-11-01", tz="UTC") + pd.to_timedelta(np.sort(rng.uniform(0, 14 * 86_400, n)), "s")
    channel = rng.choice(CHANNELS, n)
    add_to_carts = rng.poisson(0.8, n)
    product_views = rng.poisson(2.0, n)
    logit = -3.0 + 2.0 * add_to_carts + 2.0 * (channel == "email") + 0.1 * product_views
    frame = pd.DataFrame(
        {
            "session_id": [f"s{i}" for i in range(n)],
            "user_id": [f"u{i % 120}" for i in range(n)],
            "session_end": end,
            "converted": (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype("int64"),
        }
    )
    for column in training.feature_columns(spec):
        frame[column] = rng.poisson(3.0, n).astype("float64")
    frame["session_activity__channel"] = channel
    frame["session_activity__add_to_carts"] = add_to_carts
    frame["session_activity__product_views"] = product_views
    for column in ("platform", "device_type", "os", "country"):
        frame[f"session_activity__{column}"] = rng.choice(["a", "b", None], n)
    frame.loc[frame.index[:50], "user_history__sessions_28d"] = np.nan  # no history yet
    return fs.TrainingSet(frame=frame, features=list(spec.features), versions={"gold.sessions": 4})


def _alias(client: MlflowClient, spec: training.ModelSpec, alias: str) -> str:
    return str(client.get_model_version_by_alias(spec.registered_name, alias).version)


@pytest.fixture(scope="module")
def ml_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return settings.model_copy(update={"workspace": tmp_path_factory.mktemp("ml-workspace")})


@pytest.fixture(scope="module")
def spec(settings: Settings) -> training.ModelSpec:
    return training.load_model_spec(settings, "conversion_propensity")


def test_the_declared_model_expands_its_views_and_leaves_the_label_out(spec: training.ModelSpec) -> None:
    assert "session_activity:add_to_carts" in spec.features
    assert "user_history:conversion_rate_28d" in spec.features
    assert not [
        f for f in spec.features if f.split(":")[1] in {"converted", "purchases", "checkouts", "revenue"}
    ]
    assert spec.labels.keys == ("session_id", "user_id")
    # drift is watched on what the session did, not on the user's history (it grows with the data's age)
    assert spec.monitoring.features == tuple(f for f in spec.features if f.startswith("session_activity:"))
    assert training.task_name(spec) == "ml-train-conversion-propensity"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"features": ["nowhere:*"]}, "no feature view 'nowhere'"),
        ({"features": ["session_activity:revenue"]}, "has no feature 'revenue'"),
        ({"features": ["page_views"]}, "is not <view>:<feature>"),
        (
            {
                "labels": {
                    "table": "gold.sessions",
                    "column": "converted",
                    "timestamp": "session_end",
                    "keys": ["session_id"],
                }
            },
            r"must include \['user_id'\]",
        ),
        (
            {
                "labels": {
                    "table": "gold.sessions",
                    "column": "bought",
                    "timestamp": "session_end",
                    "keys": ["session_id", "user_id"],
                }
            },
            "'bought' is not a column",
        ),
        (
            {
                "labels": {
                    "table": "gold.sessions",
                    "column": "converted",
                    "timestamp": "session_date",
                    "keys": ["session_id", "user_id"],
                }
            },
            "must be a timestamp",
        ),
        ({"estimator": "xgboost"}, "estimator"),
        ({"monitoring": {"features": ["user_history:mood"]}}, "not a feature of the model"),
    ],
)
def test_a_wrong_declaration_is_refused_naming_its_file(
    settings: Settings, tmp_path: Path, edit: dict[str, object], message: str
) -> None:
    import yaml

    document = yaml.safe_load((training.models_root(settings) / "conversion_propensity.yaml").read_text())
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(document | edit))
    with pytest.raises(ConfigError, match=message) as raised:
        training.load_model_spec(settings, "broken", root=tmp_path)
    assert "broken.yaml" in str(raised.value)


def test_the_split_puts_the_latest_labels_in_the_test_window(spec: training.ModelSpec) -> None:
    frame = synthetic_training_set(spec).frame
    split = training.time_split(frame, "session_end", "converted", 0.25)
    assert split.train["session_end"].max() < split.cutoff <= split.test["session_end"].min()
    assert abs(len(split.test) - 150) <= 1
    with pytest.raises(DataError, match="not both classes"):
        training.time_split(frame.assign(converted=0), "session_end", "converted", 0.25)


@pytest.fixture(scope="module")
def first(ml_settings: Settings, spec: training.ModelSpec) -> tuple[training.TrainResult, training.Decision]:
    result = training.train(ml_settings, spec, synthetic_training_set(spec))
    return result, training.promote(ml_settings, spec, result)


def test_a_trained_model_is_tracked_registered_and_first_becomes_champion(
    ml_settings: Settings, spec: training.ModelSpec, first: tuple[training.TrainResult, training.Decision]
) -> None:
    result, decision = first
    assert result.metrics["roc_auc"] > 0.75, result.metrics  # it learned the signal
    client = MlflowClient(tracking_uri=ml_settings.mlflow_tracking_uri)
    run = client.get_run(result.run_id)
    assert json.loads(run.data.tags["lakehouse.features"]) == list(spec.features)
    assert json.loads(run.data.tags["lakehouse.lake_versions"]) == {"gold.sessions": 4}
    assert run.data.params["estimator"] == "lightgbm" and run.data.params["num_leaves"] == "8"
    assert run.data.tags["lakehouse.test_window"].startswith(str(result.cutoff.date()))
    assert (
        _alias(client, spec, training.CHAMPION) == _alias(client, spec, training.CHALLENGER) == result.version
    )
    assert decision.promoted and decision.reason == "no champion yet"
    # the signature names exactly the features, in order
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{spec.registered_name}@champion")
    assert model.metadata.get_input_schema().input_names() == training.feature_columns(spec)


def test_a_challenger_no_better_than_the_champion_by_the_margin_is_not_promoted(
    ml_settings: Settings, spec: training.ModelSpec, first: tuple[training.TrainResult, training.Decision]
) -> None:
    # the same data and seed: the same quality, which does not beat the champion by the margin
    again = training.train(ml_settings, spec, synthetic_training_set(spec))
    decision = training.promote(ml_settings, spec, again)
    assert not decision.promoted and decision.champion_version == first[0].version
    assert decision.champion_value == pytest.approx(decision.challenger_value)
    client = MlflowClient(tracking_uri=ml_settings.mlflow_tracking_uri)
    assert _alias(client, spec, training.CHAMPION) == first[0].version
    assert _alias(client, spec, training.CHALLENGER) == again.version
    tags = client.get_model_version(spec.registered_name, again.version).tags
    assert tags["promotion.decision"] == "kept_champion"
    recorded = training.promotions(ml_settings)
    assert recorded["challenger_version"].tolist()[-2:] == [first[0].version, again.version]
    assert recorded["promoted"].tolist()[-2:] == [True, False]


def test_a_better_challenger_replaces_a_weaker_champion(
    ml_settings: Settings, spec: training.ModelSpec, first: tuple[training.TrainResult, training.Decision]
) -> None:
    weak_spec = spec.model_copy(update={"registered_name": "weak-then-strong"})
    noise = synthetic_training_set(spec)
    noise.frame["converted"] = np.random.default_rng(9).permutation(noise.frame["converted"].to_numpy())
    weak = training.train(ml_settings, weak_spec, noise)
    assert training.promote(ml_settings, weak_spec, weak).promoted  # first of its name
    strong = training.train(ml_settings, weak_spec, synthetic_training_set(spec))
    decision = training.promote(ml_settings, weak_spec, strong)
    assert decision.promoted, decision.reason
    assert decision.challenger_value > decision.champion_value + spec.promotion.margin
    saved = json.loads(training.save_metrics(ml_settings, weak_spec, strong, decision).read_text())
    assert saved["champion_version"] == strong.version and saved["promoted"] is True
