"""Purchase propensity per session: features from gold sessions, a scikit-learn pipeline, MLflow tracking.

The model answers "will this session convert?" from what is known before the purchase funnel closes:
device, acquisition channel, country, time of day and the browsing counts up to add-to-cart. Checkout and
purchase counts, revenue, currency and the session's end are left out because they reveal the answer.

Example (in a notebook)::

    sessions = deltalake.DeltaTable(gold_sessions_path).to_pandas()
    result = train_conversion_model(
        sessions, tracking_uri=f"sqlite:///{workspace}/mlflow.db", experiment="conversion-propensity",
        artifact_location=f"{workspace}/mlflow-artifacts",
    )
    model = load_model(result.model_uri, tracking_uri=...)
    sessions["p_convert"] = score_sessions(model, sessions)
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, average_precision_score, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from lakehouse.errors import ConfigError, DataError

log = logging.getLogger(__name__)

REGISTERED_MODEL_NAME: Final = "conversion-propensity"
LABEL: Final = "converted"
CATEGORICAL_FEATURES: Final = ("platform", "device_type", "os", "channel", "country")
# Derived from session_start (UTC): when the session began, not how it ended.
TIME_FEATURES: Final = ("start_hour", "start_day_of_week")
COUNT_FEATURES: Final = ("page_views", "product_views", "searches", "add_to_carts")
NUMERIC_FEATURES: Final = (*TIME_FEATURES, *COUNT_FEATURES)
FEATURES: Final = (*CATEGORICAL_FEATURES, *NUMERIC_FEATURES)
# Columns of gold sessions that reveal the outcome; never features.
LEAKAGE_COLUMNS: Final = (
    "checkouts",
    "purchases",
    "revenue",
    "converted",
    "currency",
    "session_end",
    "duration_s",
    "events",
)
MIN_ROWS: Final = 20
# skops (MLflow's default sklearn format) refuses this type unless named: its node indices are not bounds
# checked, which matters for files from strangers, not for the model this module has just trained.
SKOPS_TRUSTED_TYPES: Final = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
MISSING_CATEGORY: Final = "unknown"

_SOURCE_COLUMNS: Final = ("session_start", *CATEGORICAL_FEATURES, *COUNT_FEATURES)

ModelKind = Literal["hgb", "logreg"]


class ProbabilisticClassifier(Protocol):
    """Anything with scikit-learn's ``predict_proba`` (the pipeline :func:`train_conversion_model` logs)."""

    def predict_proba(self, X: Any) -> Any: ...


@dataclass(frozen=True)
class ConversionParams:
    """Hyper-parameters of the propensity model.

    Attributes:
        model: ``"hgb"`` (HistGradientBoostingClassifier, default) or ``"logreg"`` (LogisticRegression on
            one-hot categories and standardised numbers).
        test_fraction: share of sessions, the latest by ``session_start``, held out for evaluation.
        learning_rate, max_iter, max_leaf_nodes, l2_regularization: HistGradientBoosting settings.
        c: inverse regularisation strength of the logistic regression.
    """

    model: ModelKind = "hgb"
    test_fraction: float = 0.25
    # Small, slow trees: a few thousand sessions overfit the library defaults (test log loss above the
    # base-rate baseline on the simulator's data).
    learning_rate: float = 0.05
    max_iter: int = 100
    max_leaf_nodes: int = 4
    l2_regularization: float = 1.0
    c: float = 1.0

    def __post_init__(self) -> None:
        if self.model not in ("hgb", "logreg"):
            raise ConfigError(f"ConversionParams.model must be 'hgb' or 'logreg' (got {self.model!r})")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must lie strictly between 0 and 1 (got {self.test_fraction})")
        if self.learning_rate <= 0 or self.max_iter < 1 or self.max_leaf_nodes < 2 or self.c <= 0:
            raise ConfigError(f"ConversionParams out of range: {self}")


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        run_id: the MLflow run.
        model_uri: ``models:/conversion-propensity/<version>``, loadable with :func:`load_model`.
        metrics: the test metrics logged to MLflow (see :func:`train_conversion_model`).
        model_version: the registered model version, as a string.
    """

    run_id: str
    model_uri: str
    metrics: dict[str, float] = field(hash=False)
    model_version: str


def _require(sessions: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [name for name in columns if name not in sessions.columns]
    if missing:
        raise DataError(f"sessions lack columns {missing}: pass gold sessions (catalog/gold/sessions.yaml)")


def feature_frame(sessions: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns (:data:`FEATURES`) from gold sessions; no label needed.

    Categories keep their text (missing ones become ``"unknown"``; the pipeline one-hot encodes them);
    numbers are floats; hour and day of week (Monday = 0) come from ``session_start`` in UTC.

    Args:
        sessions: gold sessions as pandas (e.g. ``deltalake.DeltaTable(path).to_pandas()``).

    Returns:
        A frame with exactly the :data:`FEATURES` columns, indexed like ``sessions``.

    Raises:
        DataError: a needed column is missing.
    """
    _require(sessions, _SOURCE_COLUMNS)
    start = pd.to_datetime(sessions["session_start"], utc=True)
    features = pd.DataFrame(index=sessions.index)
    for name in CATEGORICAL_FEATURES:
        features[name] = sessions[name].astype("object").where(sessions[name].notna(), MISSING_CATEGORY)
        features[name] = features[name].astype(str)
    features["start_hour"] = start.dt.hour.astype("float64")
    features["start_day_of_week"] = start.dt.dayofweek.astype("float64")
    for name in COUNT_FEATURES:
        features[name] = pd.to_numeric(sessions[name]).fillna(0).astype("float64")
    return features[list(FEATURES)]


def build_features(sessions: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Features and label for training, checked to be trainable.

    Args:
        sessions: gold sessions as pandas, with ``converted``.

    Returns:
        ``(X, y)``: :func:`feature_frame` of the sessions and ``converted`` as 0/1 integers.

    Raises:
        DataError: a column is missing, there are fewer than :data:`MIN_ROWS` sessions, or every session
            has the same outcome.
    """
    _require(sessions, (*_SOURCE_COLUMNS, LABEL))
    if len(sessions) < MIN_ROWS:
        raise DataError(
            f"only {len(sessions)} sessions: at least {MIN_ROWS} are needed to train the conversion model "
            "(run the simulator for longer or widen the date range)"
        )
    if sessions[LABEL].isna().any():
        raise DataError(f"{int(sessions[LABEL].isna().sum())} sessions have no '{LABEL}' value")
    y = sessions[LABEL].astype(bool).astype("int64").rename(LABEL)
    if y.nunique() < 2:
        raise DataError(
            f"every session has {LABEL}={bool(y.iloc[0])}: the model needs both converting and "
            "non-converting sessions"
        )
    return feature_frame(sessions), y


def build_pipeline(params: ConversionParams, seed: int = 7) -> Pipeline:
    """The unfitted scikit-learn pipeline: one-hot categories, numeric columns, then the classifier.

    Args:
        params: which classifier and its settings.
        seed: random state of the classifier.

    Returns:
        A :class:`sklearn.pipeline.Pipeline` with steps ``features`` and ``classifier``.
    """
    # Trees need no scaling; the logistic regression converges badly on raw counts and hours.
    numeric: Any = "passthrough" if params.model == "hgb" else StandardScaler()
    features = ColumnTransformer(
        [
            (
                "categories",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                list(CATEGORICAL_FEATURES),
            ),
            ("numbers", numeric, list(NUMERIC_FEATURES)),
        ],
        remainder="drop",
    )
    classifier: Any
    if params.model == "hgb":
        classifier = HistGradientBoostingClassifier(
            learning_rate=params.learning_rate,
            max_iter=params.max_iter,
            max_leaf_nodes=params.max_leaf_nodes,
            l2_regularization=params.l2_regularization,
            early_stopping=False,
            random_state=seed,
        )
    else:
        classifier = LogisticRegression(C=params.c, max_iter=2000, random_state=seed)
    return Pipeline([("features", features), ("classifier", classifier)])


def time_split(
    X: pd.DataFrame,
    y: pd.Series,
    session_start: pd.Series,
    test_fraction: float,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series, pd.Timestamp]:
    """Split by time: sessions starting at or after the cut-off are the test set, the rest train.

    The cut-off is the start of the first session in the latest ``test_fraction`` of sessions, so no test
    session starts before a training one and sessions starting at the same instant stay together.

    Returns:
        ``(X_train, X_test, y_train, y_test, cutoff)``.

    Raises:
        DataError: either side is empty or lacks one of the two outcomes.
    """
    start = pd.to_datetime(session_start, utc=True)
    ordered = start.sort_values(kind="stable")
    position = min(len(ordered) - 1, math.floor(len(ordered) * (1.0 - test_fraction)))
    cutoff = ordered.iloc[position]
    is_test = (start >= cutoff).to_numpy()
    X_train, X_test = X[~is_test], X[is_test]
    y_train, y_test = y[~is_test], y[is_test]
    for side, labels in (("training", y_train), ("test", y_test)):
        if labels.nunique() < 2:
            raise DataError(
                f"the {side} window (cut-off {cutoff}) has {len(labels)} sessions and not both outcomes: "
                "use more sessions or a different test_fraction"
            )
    return X_train, X_test, y_train, y_test, cutoff


def evaluate(
    y_true: pd.Series, probability: np.ndarray[Any, Any], base_rate_train: float
) -> dict[str, float]:
    """Test metrics of predicted probabilities, and how they compare with guessing the base rate.

    Returns:
        ``roc_auc``, ``average_precision``, ``log_loss``, ``accuracy`` (threshold 0.5), ``base_rate`` (test
        positive rate), ``baseline_log_loss`` (always predicting the training base rate) and
        ``lift_over_baseline_ap`` (average precision / base rate; 1.0 is no better than chance).
    """
    base_rate = float(y_true.mean())
    average_precision = float(average_precision_score(y_true, probability))
    clipped_base = min(max(base_rate_train, 1e-6), 1 - 1e-6)
    return {
        "roc_auc": float(roc_auc_score(y_true, probability)),
        "average_precision": average_precision,
        "log_loss": float(log_loss(y_true, probability, labels=[0, 1])),
        "accuracy": float(accuracy_score(y_true, probability >= 0.5)),
        "base_rate": base_rate,
        "baseline_log_loss": float(log_loss(y_true, np.full(len(y_true), clipped_base), labels=[0, 1])),
        "lift_over_baseline_ap": average_precision / base_rate,
    }


def _artifact_uri(location: str) -> str:
    return location if "://" in location else Path(location).resolve().as_uri()


def _experiment_id(client: MlflowClient, name: str, artifact_location: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        log.info("creating MLflow experiment %r with artifacts in %s", name, artifact_location)
        return client.create_experiment(name, artifact_location=_artifact_uri(artifact_location))
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"the MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore) "
            "or choose another experiment name"
        )
    if experiment.artifact_location != _artifact_uri(artifact_location):
        log.warning(
            "experiment %r keeps its artifacts in %s, not %s",
            name,
            experiment.artifact_location,
            artifact_location,
        )
    return str(experiment.experiment_id)


def train_conversion_model(
    sessions: pd.DataFrame,
    *,
    tracking_uri: str,
    experiment: str,
    artifact_location: str,
    params: ConversionParams | None = None,
    seed: int = 7,
) -> TrainResult:
    """Train, evaluate, log and register the session purchase-propensity model.

    The latest ``params.test_fraction`` of sessions by ``session_start`` are held out (a time split: the
    model is judged on sessions later than any it learned from). The MLflow run logs the parameters, the
    metrics of :func:`evaluate` plus ``n_train``/``n_test``, and the fitted pipeline with an input example
    and signature; its pyfunc flavour serves ``predict_proba``. The model is registered as
    :data:`REGISTERED_MODEL_NAME`.

    Args:
        sessions: gold sessions as pandas.
        tracking_uri: the MLflow store, e.g. ``sqlite:////abs/path/mlflow.db`` (sets the process's tracking
            and registry URI).
        experiment: experiment name, created when missing.
        artifact_location: where a new experiment keeps its artifacts (a folder or a URI); ignored with a
            warning when the experiment already exists elsewhere.
        params: model choice and hyper-parameters; defaults to :class:`ConversionParams`.
        seed: random state of the classifier.

    Returns:
        The run id, the registered model's URI and version, and the metrics.

    Raises:
        DataError: the sessions cannot train a model (see :func:`build_features`, :func:`time_split`).
        ConfigError: the experiment is deleted.
    """
    params = params or ConversionParams()
    X, y = build_features(sessions)
    X_train, X_test, y_train, y_test, cutoff = time_split(
        X, y, sessions["session_start"], params.test_fraction
    )

    pipeline = build_pipeline(params, seed)
    pipeline.fit(X_train, y_train)
    probability = pipeline.predict_proba(X_test)[:, 1]
    metrics = evaluate(y_test, probability, base_rate_train=float(y_train.mean()))
    metrics.update(n_train=float(len(X_train)), n_test=float(len(X_test)))

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = _experiment_id(client, experiment, artifact_location)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"conversion-{params.model}") as run:
        mlflow.set_tags({"lakehouse.model": REGISTERED_MODEL_NAME, "split": "time"})
        mlflow.log_params(
            {
                **asdict(params),
                "seed": seed,
                "features": ",".join(FEATURES),
                "test_cutoff": cutoff.isoformat(),
            }
        )
        mlflow.log_metrics(metrics)
        example = X_train.head(5)
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            input_example=example,
            signature=infer_signature(example, pipeline.predict_proba(example)),
            pyfunc_predict_fn="predict_proba",
            registered_model_name=REGISTERED_MODEL_NAME,
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        )
    version = info.registered_model_version
    if version is None:
        raise DataError(f"MLflow did not register {REGISTERED_MODEL_NAME!r} for run {run.info.run_id}")
    log.info(
        "trained %s: roc_auc %.3f, average precision %.3f (base rate %.3f); registered version %s",
        params.model,
        metrics["roc_auc"],
        metrics["average_precision"],
        metrics["base_rate"],
        version,
    )
    return TrainResult(
        run_id=run.info.run_id,
        model_uri=f"models:/{REGISTERED_MODEL_NAME}/{version}",
        metrics=metrics,
        model_version=str(version),
    )


def load_model(model_uri: str, tracking_uri: str) -> Pipeline:
    """Load a logged conversion pipeline (e.g. ``models:/conversion-propensity/3``) from the MLflow store.

    Args:
        model_uri: a ``models:/``, ``runs:/`` or artifact URI.
        tracking_uri: the MLflow store that resolves it (also used as registry URI).

    Returns:
        The fitted scikit-learn pipeline; pass it to :func:`score_sessions`.

    Raises:
        ConfigError: the URI does not hold a scikit-learn pipeline.
    """
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model = mlflow.sklearn.load_model(model_uri)
    if not isinstance(model, Pipeline):
        raise ConfigError(f"{model_uri} holds a {type(model).__name__}, not the conversion pipeline")
    return model


def score_sessions(model: ProbabilisticClassifier, sessions: pd.DataFrame) -> pd.Series:
    """Purchase probability of each session.

    Args:
        model: the pipeline from :func:`load_model` (or any classifier over :data:`FEATURES`).
        sessions: gold sessions as pandas; no label needed.

    Returns:
        Probabilities in [0, 1], indexed like ``sessions``, named ``conversion_probability``.

    Raises:
        DataError: a needed column is missing.
    """
    features = feature_frame(sessions)
    probability = np.asarray(model.predict_proba(features))[:, 1]
    return pd.Series(probability, index=sessions.index, name="conversion_probability", dtype="float64")
