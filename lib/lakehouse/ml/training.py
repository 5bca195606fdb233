"""Declared models: a training set from the feature store, trained, tracked and registered, promoted by alias.

A model is a file, ``models/ml/<name>.yaml``: where its labels are (a table, the label column, the column that
says when the label became known, the entity keys), which feature-store features it reads, the estimator and
its parameters, the time split and the promotion rule. Nothing here knows a demo table.

- :func:`build_training_set` asks the feature store for each label row's features as they were known at the
  label's time (point in time; see :func:`lakehouse.ml.features.training_set`).
- :func:`train` splits by time (the latest ``test_fraction`` of labels are the held-out window), fits a
  scikit-learn pipeline (LightGBM, histogram gradient boosting or a logistic regression after one-hot
  categories), logs parameters, metrics, the feature references, the lake versions read and the training
  window to MLflow with the model's signature and an input example, registers a new version and gives it the
  alias ``challenger``.
- :func:`promote` scores the current ``champion`` on the same later window; the challenger takes the alias
  ``champion`` only when it beats it by the declared margin (or there is none). The decision and both
  models' metrics are recorded on the model version (MLflow tags) and in ``audit.model_promotions`` (Delta).

Example (in a notebook)::

    spec = load_model_spec(settings, "conversion_propensity")
    result = train(settings, spec)
    decision = promote(settings, spec, result)
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lakehouse import arrow_lake
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.ml import features as fs

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame

log = logging.getLogger(__name__)

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
PROMOTIONS_TABLE: Final = ("audit", "model_promotions")
# Metrics where lower is better; every other one is higher-is-better.
LOWER_IS_BETTER: Final = frozenset({"log_loss"})
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")

Estimator = Literal["lightgbm", "hist_gradient_boosting", "logistic_regression"]
Metric = Literal["roc_auc", "average_precision", "log_loss", "accuracy"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(_Spec):
    """Where the labels are: one row per example."""

    table: str = Field(pattern=r"^(silver|gold)\.[a-z0-9_]+$")
    column: str
    timestamp: str = Field(description="when the label became known: features must be known by then")
    keys: tuple[str, ...] = Field(min_length=1, description="the join keys of the features' entities")


class SplitSpec(_Spec):
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0)


class PromotionSpec(_Spec):
    metric: Metric = "average_precision"
    margin: float = Field(0.0, ge=0.0, description="how much better than the champion, in the metric's units")


class MonitoringSpec(_Spec):
    """When a scored window asks for a retrain: too many features drifted, or quality fell too far."""

    features: tuple[str, ...] = Field(
        default=(), description="the features whose drift counts (<view>:<feature> or <view>:*; default all)"
    )
    drift_share: float = Field(0.5, gt=0.0, le=1.0, description="share of drifted features that is drift")
    quality_metric: Metric = "roc_auc"
    quality_drop: float = Field(0.05, ge=0.0, description="how far below its test value is a drop")
    min_rows: int = Field(30, ge=1, description="a smaller window is recorded but never asks for a retrain")


class ModelSpec(_Spec):
    """``models/ml/<name>.yaml``."""

    name: str = Field(pattern=_NAME.pattern)
    registered_name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    description: str = ""
    labels: LabelSpec
    features: tuple[str, ...] = Field(min_length=1)
    estimator: Estimator = "lightgbm"
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    split: SplitSpec = SplitSpec()
    promotion: PromotionSpec = PromotionSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    min_rows: int = Field(50, ge=10)

    @field_validator("features")
    @classmethod
    def _references(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for reference in value:
            if reference.count(":") != 1:
                raise ValueError(f"feature {reference!r} is not <view>:<feature> (or <view>:*)")
        return value


def models_root(settings: Settings) -> Path:
    return Path(settings.root) / "models" / "ml"


def declared_models(settings: Settings) -> list[str]:
    """The names of the declared models (``models/ml/<name>.yaml``)."""
    return sorted(path.stem for path in models_root(settings).glob("*.yaml"))


def task_name(spec: ModelSpec | str) -> str:
    """The DAG task that trains a model: ``ml-train-<name>`` in kebab case."""
    name = spec if isinstance(spec, str) else spec.name
    return "ml-train-" + name.replace("_", "-")


def input_tables(settings: Settings, spec: ModelSpec) -> list[str]:
    """The tables a training run reads: the labels' and each feature view's source."""
    repo = fs.load_feature_repo(settings)
    views = {reference.split(":")[0] for reference in spec.features}
    return sorted({spec.labels.table, *(table for v in views for table in repo.tables_of(v))})


def model_dir(settings: Settings, spec: ModelSpec) -> Path:
    """Where a model's files live in the workspace: metrics, reference data, scored windows, requests."""
    return settings.workspace / "ml" / spec.name


def metrics_path(settings: Settings, spec: ModelSpec) -> Path:
    return model_dir(settings, spec) / "metrics.json"


def reference_path(settings: Settings, spec: ModelSpec, version: str) -> Path:
    """The training window's inputs of one model version: the reference that drift is measured against."""
    return model_dir(settings, spec) / "reference" / f"v{version}.parquet"


def prepare_inputs(
    frame: pd.DataFrame, settings: Settings, spec: ModelSpec, categorical: Collection[str] | None = None
) -> pd.DataFrame:
    """The feature columns typed as the model expects: numbers as floats, text as text (None for missing).

    ``categorical`` (:func:`categorical_columns`) saves reading the declarations again on a hot path.
    """
    columns = feature_columns(spec)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{spec.name}: the frame lacks feature columns {missing}")
    categorical = set(categorical_columns(settings, spec) if categorical is None else categorical)
    typed = frame.copy()
    for column in columns:
        if column in categorical:
            typed[column] = typed[column].astype("object").where(typed[column].notna(), None)
        else:
            typed[column] = pd.to_numeric(typed[column], errors="coerce").astype("float64")
    return typed


def load_model_spec(settings: Settings, name: str, root: Path | None = None) -> ModelSpec:
    """Read ``models/ml/<name>.yaml``, with ``view:*`` expanded, checked against the features and catalog.

    Raises:
        ConfigError: naming the file: an unknown view or feature, a label column or key the label table
            does not have, a key no feature view needs.
    """
    path = (root or models_root(settings)) / f"{name}.yaml"
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read model declaration {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path} must be a mapping (registered_name, labels, features …)")
    try:
        spec = ModelSpec.model_validate({"name": name, **document})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid model declaration {path}: {problems}") from exc
    repo = fs.load_feature_repo(settings)
    expanded: list[str] = []
    for reference in spec.features:
        view_name, _, feature = reference.partition(":")
        try:
            view = repo.lookup(view_name)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        if feature == "*":
            expanded.extend(view.references())
        elif feature in view.features:
            expanded.append(reference)
        else:
            raise ConfigError(f"{path}: feature view {view_name!r} has no feature {feature!r}")
    monitored: list[str] = []
    for reference in spec.monitoring.features:
        view_name, _, feature = reference.partition(":")
        if feature == "*":
            monitored.extend(r for r in expanded if r.startswith(f"{view_name}:"))
        elif reference in expanded:
            monitored.append(reference)
        else:
            raise ConfigError(
                f"{path}: monitoring.features names {reference!r}, which is not a feature of the model"
            )
    if spec.monitoring.features and not monitored:
        raise ConfigError(f"{path}: monitoring.features selects none of the model's features")
    needed = {
        repo.entities[e].join_key for v in {r.split(":")[0] for r in expanded} for e in repo.entities_of(v)
    }
    missing = needed - set(spec.labels.keys)
    if missing:
        raise ConfigError(
            f"{path}: labels.keys must include {sorted(missing)} (the join keys of its features)"
        )
    from lakehouse.governance.catalog import load_catalog

    contract = load_catalog(settings).contract(spec.labels.table)
    columns = {c.name: c.type for c in contract.columns}
    for column in (spec.labels.column, spec.labels.timestamp, *spec.labels.keys):
        if column not in columns:
            raise ConfigError(f"{path}: {column!r} is not a column of {spec.labels.table}")
    if columns[spec.labels.timestamp] != "timestamp":
        raise ConfigError(f"{path}: labels.timestamp {spec.labels.timestamp!r} must be a timestamp column")
    monitoring = spec.monitoring.model_copy(update={"features": tuple(dict.fromkeys(monitored or expanded))})
    return spec.model_copy(update={"features": tuple(dict.fromkeys(expanded)), "monitoring": monitoring})


# -- the training set --------------------------------------------------------------------------------------
def label_rows(settings: Settings, spec: ModelSpec) -> pd.DataFrame:
    """The label table's keys, timestamp and label (0/1), rows without a label or time left out."""
    from deltalake import DeltaTable

    layer, table = spec.labels.table.split(".", 1)
    columns = list(dict.fromkeys([*spec.labels.keys, spec.labels.timestamp, spec.labels.column]))
    try:
        frame = arrow_lake.frame(DeltaTable(settings.table_path(layer, table)), columns)
    except Exception as exc:  # deltalake raises TableNotFoundError and friends
        raise DataError(f"cannot read the labels of {spec.name} from {spec.labels.table}: {exc}") from exc
    frame = frame.dropna(subset=[spec.labels.column, spec.labels.timestamp, *spec.labels.keys])
    frame[spec.labels.column] = frame[spec.labels.column].astype(bool).astype("int64")
    frame[spec.labels.timestamp] = pd.to_datetime(frame[spec.labels.timestamp], utc=True)
    return frame.reset_index(drop=True)


def label_frame(settings: Settings, spec: ModelSpec) -> tuple[SparkDataFrame, int]:
    """:func:`label_rows` in Spark, pinned to the label table's current Delta version (returned with it)."""
    from deltalake import DeltaTable
    from pyspark.sql import functions as F

    from lakehouse.spark import get_spark

    layer, table = spec.labels.table.split(".", 1)
    path = settings.table_path(layer, table)
    try:
        version = int(DeltaTable(path).version())
    except Exception as exc:  # deltalake raises TableNotFoundError and friends
        raise DataError(f"cannot read the labels of {spec.name} from {spec.labels.table}: {exc}") from exc
    label, stamp = spec.labels.column, spec.labels.timestamp
    frame = (
        get_spark(settings)
        .read.format("delta")
        .option("versionAsOf", version)
        .load(path)
        .select(*dict.fromkeys([*spec.labels.keys, stamp, label]))
        .dropna(subset=[label, stamp, *spec.labels.keys])
        .withColumn(label, F.col(label).cast("boolean").cast("long"))
        .withColumn(stamp, F.col(stamp).cast("timestamp"))
    )
    return frame, version


def build_training_set(
    settings: Settings, spec: ModelSpec, labels: pd.DataFrame | None = None
) -> fs.TrainingSet:
    """Each label row with its features as known at the label's time (feature columns ``<view>__<name>``).

    The label rows are read and joined in Spark, where they are: the set is bounded by this process's
    memory only (see :func:`lakehouse.ml.features.training_set`). ``labels`` given in pandas (a test's rows)
    are used instead of the label table.
    """
    rows: pd.DataFrame | SparkDataFrame
    version: int | None = None
    if labels is None:
        rows, version = label_frame(settings, spec)
        count = rows.count()
    else:
        rows, count = labels, len(labels)
    if count < spec.min_rows:
        raise DataError(
            f"{spec.labels.table} has {count} labelled rows: {spec.name} needs at least {spec.min_rows}"
        )
    built = fs.training_set(
        settings,
        rows,
        spec.features,
        timestamp=spec.labels.timestamp,
    )
    versions = dict(built.versions)
    if version is not None:
        versions[spec.labels.table] = version
    else:
        from deltalake import DeltaTable

        layer, table = spec.labels.table.split(".", 1)
        versions[spec.labels.table] = int(DeltaTable(settings.table_path(layer, table)).version())
    return fs.TrainingSet(frame=built.frame, features=built.features, versions=versions)


def feature_columns(spec: ModelSpec) -> list[str]:
    """The model's input columns: the training set's names of its features."""
    return [reference.replace(":", "__") for reference in spec.features]


def categorical_columns(settings: Settings, spec: ModelSpec) -> list[str]:
    """Which inputs are text (one-hot encoded): from the feature views' types."""
    repo = fs.load_feature_repo(settings)
    found = []
    for reference in spec.features:
        view_name, _, feature = reference.partition(":")
        if repo.type_of(view_name, feature) == "string":
            found.append(reference.replace(":", "__"))
    return found


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    test: pd.DataFrame
    cutoff: pd.Timestamp


def time_split(frame: pd.DataFrame, timestamp: str, label: str, test_fraction: float) -> Split:
    """The latest ``test_fraction`` of rows by ``timestamp`` are the test window (with the cut-off's rows).

    Raises:
        DataError: a side is empty or has one class only.
    """
    ordered = frame.sort_values(timestamp, kind="stable").reset_index(drop=True)
    position = min(len(ordered) - 1, math.floor(len(ordered) * (1.0 - test_fraction)))
    cutoff = ordered[timestamp].iloc[position]
    test = ordered[ordered[timestamp] >= cutoff]
    train = ordered[ordered[timestamp] < cutoff]
    for side, part in (("training", train), ("test", test)):
        if part[label].nunique() < 2:
            raise DataError(
                f"the {side} window (cut-off {cutoff}) has {len(part)} rows and not both classes: "
                "use more labels or another test_fraction"
            )
    return Split(train=train, test=test, cutoff=cutoff)


def build_pipeline(spec: ModelSpec, categorical: list[str], numeric: list[str], seed: int = 7) -> Any:
    """The unfitted scikit-learn pipeline: one-hot text, numbers as they are (scaled for the regression)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    text = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="unknown"),
        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
    )
    if spec.estimator == "logistic_regression":
        numbers: Any = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    else:
        numbers = "passthrough"  # trees take missing values as they are
    inputs = ColumnTransformer([("text", text, categorical), ("numbers", numbers, numeric)], remainder="drop")
    params: dict[str, Any] = dict(spec.params)
    classifier: Any
    if spec.estimator == "lightgbm":
        from lightgbm import LGBMClassifier

        classifier = LGBMClassifier(random_state=seed, verbose=-1, n_jobs=1, **params)
    elif spec.estimator == "hist_gradient_boosting":
        classifier = HistGradientBoostingClassifier(random_state=seed, **params)
    else:
        classifier = LogisticRegression(random_state=seed, max_iter=2000, **params)
    return Pipeline([("inputs", inputs), ("classifier", classifier)])


def evaluate(y_true: pd.Series, probability: np.ndarray[Any, Any]) -> dict[str, float]:
    """``roc_auc``, ``average_precision``, ``log_loss``, ``accuracy`` (at 0.5) and the window's base rate."""
    from sklearn.metrics import accuracy_score, average_precision_score, log_loss, roc_auc_score

    return {
        "roc_auc": float(roc_auc_score(y_true, probability)),
        "average_precision": float(average_precision_score(y_true, probability)),
        "log_loss": float(log_loss(y_true, probability, labels=[0, 1])),
        "accuracy": float(accuracy_score(y_true, probability >= 0.5)),
        "base_rate": float(y_true.mean()),
    }


# -- training ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    """A trained, registered challenger and the window it is judged on."""

    run_id: str
    version: str
    metrics: dict[str, float]
    cutoff: datetime
    test: pd.DataFrame = field(repr=False)
    versions: dict[str, int] = field(default_factory=dict)


def use_mlflow(settings: Settings) -> Any:
    """MLflow pointed at the environment's tracking and registry store (``models:/…`` resolves there)."""
    import mlflow

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return mlflow


def _experiment(settings: Settings, spec: ModelSpec) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    name = spec.registered_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        return str(
            client.create_experiment(name, artifact_location=settings.mlflow_artifacts.resolve().as_uri())
        )
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"the MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore)"
        )
    return str(experiment.experiment_id)


def train(
    settings: Settings, spec: ModelSpec, training: fs.TrainingSet | None = None, seed: int = 7
) -> TrainResult:
    """Fit the declared model on its training set, log it to MLflow and register it as ``challenger``.

    Raises:
        DataError: too few labels, or a window without both classes.
    """
    import skops.io
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    training = training or build_training_set(settings, spec)
    columns = feature_columns(spec)
    categorical = categorical_columns(settings, spec)
    numeric = [c for c in columns if c not in categorical]
    frame = prepare_inputs(training.frame, settings, spec)
    split = time_split(frame, spec.labels.timestamp, spec.labels.column, spec.split.test_fraction)
    pipeline = build_pipeline(spec, categorical, numeric, seed)
    pipeline.fit(split.train[columns], split.train[spec.labels.column])
    metrics = evaluate(split.test[spec.labels.column], pipeline.predict_proba(split.test[columns])[:, 1])
    metrics.update(n_train=float(len(split.train)), n_test=float(len(split.test)))

    mlflow = use_mlflow(settings)
    experiment_id = _experiment(settings, spec)
    timestamp = spec.labels.timestamp
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{spec.name}-{spec.estimator}") as run:
        mlflow.log_params(
            {"estimator": spec.estimator, "seed": seed, **spec.params, **spec.split.model_dump()}
        )
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {
                "lakehouse.model": spec.name,
                "lakehouse.features": json.dumps(list(spec.features)),
                "lakehouse.lake_versions": json.dumps(training.versions, sort_keys=True),
                "lakehouse.labels": spec.labels.table,
                "lakehouse.train_window": f"{split.train[timestamp].min()} .. {split.cutoff}",
                "lakehouse.test_window": f"{split.cutoff} .. {split.test[timestamp].max()}",
                "lakehouse.cutoff": split.cutoff.isoformat(),
            }
        )
        example = split.train[columns].head(5)
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            input_example=example,
            signature=infer_signature(example, pipeline.predict_proba(example)),
            pyfunc_predict_fn="predict_proba",
            registered_model_name=spec.registered_name,
            # skops refuses to load types it is not told to trust: these are the ones this run just built
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)),
        )
    version = info.registered_model_version
    if version is None:
        raise DataError(f"MLflow did not register {spec.registered_name!r} for run {run.info.run_id}")
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    client.set_registered_model_alias(spec.registered_name, CHALLENGER, str(version))
    # The training window's inputs: what drift is measured against while this version serves.
    reference = reference_path(settings, spec, str(version))
    reference.parent.mkdir(parents=True, exist_ok=True)
    split.train[columns].to_parquet(reference, index=False)
    log.info("%s version %s (challenger): %s", spec.registered_name, version, metrics)
    return TrainResult(
        run_id=run.info.run_id,
        version=str(version),
        metrics=metrics,
        cutoff=split.cutoff.to_pydatetime(warn=False),
        test=split.test,
        versions=training.versions,
    )


# -- promotion ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """Whether the challenger became champion, and the numbers it was decided on."""

    model: str
    challenger_version: str
    champion_version: str | None
    metric: str
    margin: float
    challenger_value: float
    champion_value: float | None
    promoted: bool
    reason: str
    window_start: datetime
    window_end: datetime
    decided_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _better(metric: str, challenger: float, champion: float, margin: float) -> bool:
    if metric in LOWER_IS_BETTER:
        return challenger <= champion - margin
    return challenger >= champion + margin


def promote(settings: Settings, spec: ModelSpec, result: TrainResult) -> Decision:
    """Give the challenger the ``champion`` alias if it beats the current champion on its test window.

    The champion is scored on the same rows, the latest labels, which neither model trained on. A champion
    that cannot score them (its inputs are not the declared features any more) cannot defend its title: the
    challenger is promoted and the reason says why.
    """
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    use_mlflow(settings)
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    name, metric, margin = spec.registered_name, spec.promotion.metric, spec.promotion.margin
    challenger_value = result.metrics[metric]
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    champion_version: str | None = None if champion is None else str(champion.version)
    champion_value: float | None = None
    if champion_version is None:
        promoted, reason = True, "no champion yet"
    elif champion_version == result.version:
        champion_value, promoted, reason = challenger_value, False, "already champion"
    else:
        try:
            model = mlflow.pyfunc.load_model(f"models:/{name}/{champion_version}")
            probability = np.asarray(model.predict(result.test[feature_columns(spec)]))[:, 1]
        except (MlflowException, KeyError, ValueError) as exc:
            promoted = True
            reason = f"the champion cannot score the declared features: {str(exc)[:300]}"
        else:
            champion_value = evaluate(result.test[spec.labels.column], probability)[metric]
            promoted = _better(metric, challenger_value, champion_value, margin)
            reason = (
                f"{metric} {challenger_value:.4f} vs champion {champion_value:.4f}: "
                f"{'beats' if promoted else 'does not beat'} it by the margin {margin}"
            )
    window = result.test[spec.labels.timestamp]
    decision = Decision(
        model=name,
        challenger_version=result.version,
        champion_version=champion_version,
        metric=metric,
        margin=margin,
        challenger_value=challenger_value,
        champion_value=champion_value,
        promoted=promoted,
        reason=reason,
        window_start=window.min().to_pydatetime(warn=False),
        window_end=window.max().to_pydatetime(warn=False),
    )
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, result.version)
    for key, value in {
        "promotion.decision": "promoted" if decision.promoted else "kept_champion",
        "promotion.reason": decision.reason,
        "promotion.champion_version": decision.champion_version or "",
        "promotion.champion_value": ""
        if decision.champion_value is None
        else f"{decision.champion_value:.6f}",
    }.items():
        client.set_model_version_tag(name, result.version, key, value)
    record_decision(settings, decision)
    log.info("%s: %s", name, decision.reason)
    return decision


def save_metrics(settings: Settings, spec: ModelSpec, result: TrainResult, decision: Decision) -> Path:
    """The task's product: the run, version, metrics and decision as JSON."""
    path = metrics_path(settings, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "model": spec.registered_name,
        "run_id": result.run_id,
        "version": result.version,
        "metrics": result.metrics,
        "lake_versions": result.versions,
        "promoted": decision.promoted,
        "champion_version": result.version if decision.promoted else decision.champion_version,
        "reason": decision.reason,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC") if stamp.tzinfo is not None else stamp.tz_localize("UTC")


def record_decision(settings: Settings, decision: Decision) -> None:
    """Append the decision to ``audit.model_promotions`` (delta-rs, no JVM)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    row = asdict(decision)
    for key in ("window_start", "window_end", "decided_at"):
        row[key] = _utc(row[key])
    schema = pa.schema(
        [
            ("model", pa.string()),
            ("challenger_version", pa.string()),
            ("champion_version", pa.string()),
            ("metric", pa.string()),
            ("margin", pa.float64()),
            ("challenger_value", pa.float64()),
            ("champion_value", pa.float64()),
            ("promoted", pa.bool_()),
            ("reason", pa.string()),
            ("window_start", pa.timestamp("us", tz="UTC")),
            ("window_end", pa.timestamp("us", tz="UTC")),
            ("decided_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    table = pa.Table.from_pylist([{k: row[k] for k in schema.names}], schema=schema)
    write_deltalake(settings.table_path(*PROMOTIONS_TABLE), table, mode="append")


def promotions(settings: Settings) -> pd.DataFrame:
    """Every recorded decision, newest last (empty before the first)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        frame = arrow_lake.frame(DeltaTable(settings.table_path(*PROMOTIONS_TABLE)))
    except TableNotFoundError:
        return pd.DataFrame()
    return frame.sort_values("decided_at", ignore_index=True)
