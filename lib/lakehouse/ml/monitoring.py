"""Batch scoring into ``gold.predictions`` and monitoring of each scored window; a drift asks for a retrain.

- :func:`score` scores, with the model's ``champion``, the label rows it has not scored yet from the
  champion's held-out window on (a model never scores the rows it learned from): the features come from the
  feature store as known at each row's time. Each row of ``gold.predictions`` says which model, version and
  alias scored it, which entity (its keys as JSON), as of when its features were read and from which lake
  versions. The scored inputs of the window are kept beside (``<workspace>/ml/<model>/scored/``).
- :func:`monitor` compares each window not yet monitored with the champion's training window (Evidently's
  data drift preset, an HTML report per window under ``reports/ml/<model>/``) and, where the labels have
  arrived, measures the champion's quality on it. Both land in ``audit.model_monitoring``. A share of
  drifted features or a quality drop beyond the model's ``monitoring`` thresholds writes a retrain request
  (``<workspace>/ml/<model>/retrain.json``): the training task watches that file, so the next pass of the
  build retrains (see :data:`lakehouse.rebuild.WATCH_PARAM`). No drift, no request, no retrain.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from lakehouse import arrow_lake
from lakehouse.config import Settings
from lakehouse.ml import features as fs
from lakehouse.ml import training
from lakehouse.ml.training import CHAMPION, ModelSpec

log = logging.getLogger(__name__)

PREDICTIONS_TABLE: Final = ("gold", "predictions")
MONITORING_TABLE: Final = ("audit", "model_monitoring")


def task_name(kind: str, spec: ModelSpec | str) -> str:
    """``ml-score-<model>`` or ``ml-monitor-<model>``, in kebab case."""
    name = spec if isinstance(spec, str) else spec.name
    return f"ml-{kind}-" + name.replace("_", "-")


@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str
    cutoff: datetime
    metrics: dict[str, float]


def champion(settings: Settings, spec: ModelSpec) -> Champion | None:
    """The model version with the ``champion`` alias and what its run recorded, or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    training.use_mlflow(settings)
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    try:
        version = client.get_model_version_by_alias(spec.registered_name, CHAMPION)
    except MlflowException:
        return None
    run = client.get_run(str(version.run_id))
    cutoff = pd.Timestamp(run.data.tags["lakehouse.cutoff"])
    return Champion(
        version=str(version.version),
        run_id=str(version.run_id),
        cutoff=(cutoff if cutoff.tzinfo else cutoff.tz_localize("UTC")).to_pydatetime(warn=False),
        metrics=dict(run.data.metrics),
    )


def _read(settings: Settings, table: tuple[str, str]) -> pd.DataFrame | None:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return arrow_lake.frame(DeltaTable(settings.table_path(*table)))
    except TableNotFoundError:
        return None


def entity_key(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.Series:
    """Each row's entity as JSON text, keys sorted: ``{"session_id": "…", "user_id": "…"}``."""
    ordered = sorted(keys)
    texts = [
        json.dumps(dict(zip(ordered, values, strict=True)))
        for values in frame[ordered].astype(str).itertuples(index=False)
    ]
    return pd.Series(texts, index=frame.index, dtype="object")


# -- scoring -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreReport:
    model: str
    version: str | None
    batch_id: str | None
    rows: int
    skipped: str | None = None


def scored_path(settings: Settings, spec: ModelSpec, batch_id: str) -> Path:
    return training.model_dir(settings, spec) / "scored" / f"{batch_id}.parquet"


def score(settings: Settings, spec: ModelSpec) -> ScoreReport:
    """Score the label rows the champion has not scored yet, from its held-out window on."""
    import mlflow.pyfunc
    from deltalake import write_deltalake

    current = champion(settings, spec)
    if current is None:
        return ScoreReport(spec.registered_name, None, None, 0, skipped="no champion yet")
    timestamp, keys = spec.labels.timestamp, spec.labels.keys
    rows = training.label_rows(settings, spec)
    rows = rows[rows[timestamp] >= current.cutoff]
    done = _read(settings, PREDICTIONS_TABLE)
    if done is not None:
        done = done[done["model"] == spec.registered_name]
        if len(done):
            rows = rows[~entity_key(rows, keys).isin(set(done["entity_key"]))]
    if rows.empty:
        return ScoreReport(spec.registered_name, current.version, None, 0, skipped="nothing new to score")
    built = fs.training_set(settings, rows[[*keys, timestamp]], spec.features, timestamp=timestamp)
    frame = training.prepare_inputs(built.frame, settings, spec)
    model = mlflow.pyfunc.load_model(f"models:/{spec.registered_name}/{current.version}")
    probability = np.asarray(model.predict(frame[training.feature_columns(spec)]))[:, 1]
    batch_id = uuid.uuid4().hex
    scored_at = pd.Timestamp.now(tz="UTC")
    predictions = pd.DataFrame(
        {
            "model": spec.registered_name,
            "model_version": current.version,
            "alias": CHAMPION,
            "entity_key": entity_key(frame, keys),
            "event_timestamp": pd.to_datetime(frame[timestamp], utc=True),
            "features_as_of": pd.to_datetime(frame[timestamp], utc=True),
            "prediction": probability.astype("float64"),
            "lake_versions": json.dumps(built.versions, sort_keys=True),
            "batch_id": batch_id,
            "scored_at": scored_at,
        }
    )
    path = scored_path(settings, spec, batch_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.assign(prediction=probability).to_parquet(path, index=False)
    write_deltalake(
        settings.table_path(*PREDICTIONS_TABLE), _arrow(predictions, PREDICTIONS_TABLE), mode="append"
    )
    log.info("%s v%s scored %d rows (batch %s)", spec.registered_name, current.version, len(frame), batch_id)
    return ScoreReport(spec.registered_name, current.version, batch_id, len(frame))


def _schema(table: tuple[str, str]) -> Any:
    """The Arrow schema of gold.predictions or audit.model_monitoring (their contracts say the same)."""
    import pyarrow as pa

    stamp = pa.timestamp("us", tz="UTC")
    if table == PREDICTIONS_TABLE:
        names = ["model", "model_version", "alias", "entity_key", "event_timestamp", "features_as_of"]
        names += ["prediction", "lake_versions", "batch_id", "scored_at"]
        kinds = [pa.string()] * 4 + [stamp, stamp, pa.float64(), pa.string(), pa.string(), stamp]
    else:
        names = ["model", "model_version", "batch_id", "window_start", "window_end", "rows", "drift_share"]
        names += ["drifted_features", "labelled_rows", "quality_metric", "quality", "reference_quality"]
        names += ["retrain", "reason", "report", "monitored_at"]
        kinds = [pa.string()] * 3 + [stamp, stamp, pa.int64(), pa.float64(), pa.string(), pa.int64()]
        kinds += [pa.string(), pa.float64(), pa.float64(), pa.bool_(), pa.string(), pa.string(), stamp]
    return pa.schema(list(zip(names, kinds, strict=True)))


def _arrow(frame: pd.DataFrame, table: tuple[str, str]) -> Any:
    import pyarrow as pa

    schema = _schema(table)
    data = frame.copy()
    for field in schema:
        if pa.types.is_timestamp(field.type):
            data[field.name] = pd.to_datetime(data[field.name], utc=True).dt.floor("us")
    return pa.Table.from_pandas(data[schema.names], schema=schema, preserve_index=False)


def ensure_tables(settings: Settings) -> None:
    """Create gold.predictions and audit.model_monitoring, empty, when missing: they are task products."""
    from deltalake import write_deltalake

    for table in (PREDICTIONS_TABLE, MONITORING_TABLE):
        if _read(settings, table) is None:
            write_deltalake(settings.table_path(*table), _schema(table).empty_table(), mode="append")


# -- monitoring --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowReport:
    """One scored window against the champion's training window."""

    model: str
    model_version: str
    batch_id: str
    window_start: datetime
    window_end: datetime
    rows: int
    drift_share: float
    drifted_features: str
    labelled_rows: int
    quality_metric: str
    quality: float | None
    reference_quality: float | None
    retrain: bool
    reason: str
    report: str
    monitored_at: datetime


def retrain_request_path(settings: Settings, spec: ModelSpec) -> Path:
    return training.model_dir(settings, spec) / "retrain.json"


def report_dir(settings: Settings, spec: ModelSpec) -> Path:
    return settings.reports / "ml" / spec.name


def monitor(settings: Settings, spec: ModelSpec) -> list[WindowReport]:
    """Monitor every scored window not monitored yet; request a retrain when one drifted or lost quality.

    Before any champion exists the model has never been trained: that is a retrain request too.
    """
    if champion(settings, spec) is None:
        request_retrain(settings, spec, "no champion yet")
        return []
    predictions = _read(settings, PREDICTIONS_TABLE)
    if predictions is None:
        return []
    predictions = predictions[predictions["model"] == spec.registered_name]
    seen = _read(settings, MONITORING_TABLE)
    monitored = set() if seen is None else set(seen.loc[seen["model"] == spec.registered_name, "batch_id"])
    reports = []
    for batch_id, window in predictions.groupby("batch_id", sort=False):
        if batch_id in monitored:
            continue
        reports.append(_monitor_window(settings, spec, str(batch_id), window))
    for report in reports:
        if report.retrain:
            request_retrain(settings, spec, report.reason, batch_id=report.batch_id)
    return reports


def _monitor_window(settings: Settings, spec: ModelSpec, batch_id: str, window: pd.DataFrame) -> WindowReport:
    from deltalake import write_deltalake
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    version = str(window["model_version"].iloc[0])
    columns = [reference.replace(":", "__") for reference in spec.monitoring.features]
    categorical = [c for c in training.categorical_columns(settings, spec) if c in columns]
    numeric = [c for c in columns if c not in categorical]
    current = pd.read_parquet(scored_path(settings, spec, batch_id))
    reference = pd.read_parquet(training.reference_path(settings, spec, version))
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    snapshot = Report([DataDriftPreset(drift_share=spec.monitoring.drift_share)]).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    document = snapshot.dict()
    share = float(document["metrics"][0]["value"]["share"])
    drifted = [
        m["metric_name"].split("column=", 1)[1].split(",", 1)[0]
        for m in document["metrics"][1:]
        if m["metric_name"].startswith("ValueDrift") and _drifted(m)
    ]
    folder = report_dir(settings, spec)
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / f"{batch_id}.html"
    snapshot.save_html(str(html))

    # Quality where labels have arrived: the champion's predictions against the outcomes.
    labels = training.label_rows(settings, spec)
    labels = labels.assign(entity_key=entity_key(labels, spec.labels.keys))
    joined = window.merge(labels[["entity_key", spec.labels.column]], on="entity_key", how="inner")
    metric = spec.monitoring.quality_metric
    quality: float | None = None
    if len(joined) and joined[spec.labels.column].nunique() == 2:
        quality = training.evaluate(joined[spec.labels.column], joined["prediction"].to_numpy())[metric]
        _quality_report(joined, spec.labels.column, folder / f"{batch_id}-quality.html")
    reference_quality = _reference_quality(settings, spec, version, metric)

    reasons = []
    if len(window) >= spec.monitoring.min_rows:
        if share > spec.monitoring.drift_share:
            reasons.append(f"{share:.0%} of features drifted ({', '.join(drifted)})")
        if quality is not None and reference_quality is not None:
            lower_is_better = metric in training.LOWER_IS_BETTER
            fell = quality - reference_quality if lower_is_better else reference_quality - quality
            if fell > spec.monitoring.quality_drop:
                reasons.append(f"{metric} fell from {reference_quality:.3f} to {quality:.3f}")
    retrain = bool(reasons)
    report = WindowReport(
        model=spec.registered_name,
        model_version=version,
        batch_id=batch_id,
        window_start=window["event_timestamp"].min().to_pydatetime(),
        window_end=window["event_timestamp"].max().to_pydatetime(),
        rows=len(window),
        drift_share=share,
        drifted_features=",".join(drifted),
        labelled_rows=len(joined),
        quality_metric=metric,
        quality=quality,
        reference_quality=reference_quality,
        retrain=retrain,
        reason="; ".join(reasons)
        if reasons
        else (
            f"{len(window)} rows: fewer than {spec.monitoring.min_rows} to judge"
            if len(window) < spec.monitoring.min_rows
            else "within thresholds"
        ),
        report=str(html),
        monitored_at=datetime.now(UTC),
    )
    row = pd.DataFrame([asdict(report)])
    write_deltalake(settings.table_path(*MONITORING_TABLE), _arrow(row, MONITORING_TABLE), mode="append")
    log.info("%s batch %s: drift %.2f, %s: %s", spec.registered_name, batch_id, share, metric, report.reason)
    return report


def _quality_report(joined: pd.DataFrame, label: str, path: Path) -> None:
    """Evidently's classification preset on the window's labelled rows, beside its drift report."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    frame = joined[[label, "prediction"]].astype({label: "int64", "prediction": "float64"})
    definition = DataDefinition(
        classification=[BinaryClassification(target=label, prediction_probas="prediction")]
    )
    snapshot = Report([ClassificationPreset()]).run(
        current_data=Dataset.from_pandas(frame, data_definition=definition), reference_data=None
    )
    snapshot.save_html(str(path))


def _drifted(metric: dict[str, Any]) -> bool:
    """Whether one ValueDrift result crossed its threshold (a p-value below it, a distance above it)."""
    name, value = metric["metric_name"], float(metric["value"])
    threshold = float(name.rsplit("threshold=", 1)[1].rstrip(")"))
    return value < threshold if "p_value" in name else value >= threshold


def _reference_quality(settings: Settings, spec: ModelSpec, version: str, metric: str) -> float | None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    run = client.get_run(str(client.get_model_version(spec.registered_name, version).run_id))
    value = run.data.metrics.get(metric)
    return None if value is None else float(value)


def request_retrain(settings: Settings, spec: ModelSpec, reason: str, batch_id: str | None = None) -> Path:
    """Write the retrain request the training task watches (a new request is a new file content)."""
    path = retrain_request_path(settings, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "model": spec.registered_name,
        "reason": reason,
        "batch_id": batch_id,
        "requested_at": datetime.now(UTC).isoformat(),
    }
    previous = json.loads(path.read_text()) if path.is_file() else None
    if previous and previous.get("reason") == reason and previous.get("batch_id") == batch_id:
        return path  # asked already: the same request again would retrain again
    path.write_text(json.dumps(document, indent=2) + "\n")
    log.info("%s: retrain requested: %s", spec.registered_name, reason)
    return path


def monitoring_history(settings: Settings, model: str | None = None) -> pd.DataFrame:
    """Every monitored window (newest last), of one model or all."""
    frame = _read(settings, MONITORING_TABLE)
    if frame is None:
        return pd.DataFrame()
    if model is not None:
        frame = frame[frame["model"] == model]
    return frame.sort_values("monitored_at", ignore_index=True)


def predictions(settings: Settings, model: str | None = None) -> pd.DataFrame:
    """``gold.predictions`` (of one model or all); empty before the first scoring."""
    frame = _read(settings, PREDICTIONS_TABLE)
    if frame is None:
        return pd.DataFrame()
    return frame if model is None else frame[frame["model"] == model].reset_index(drop=True)
