"""Online scoring: features from Redis (the feature store's online store), the champion behind its endpoint.

:class:`OnlineScorer` takes entity rows (the model's keys), reads their features from Redis with Feast,
checks them against the model's signature and asks the model's ``mlflow models serve`` endpoint
(:mod:`lakehouse.stack.model_serving`) for the probabilities. Bad requests are the caller's errors, said
clearly: a row without its keys is a :class:`~lakehouse.errors.DataError` before anything is read, and the
endpoint's own 400 (a missing or ill-typed feature) is a :class:`ScoringRequestError` carrying its message.

:func:`check_signature` refuses a model version whose signature is not the declared features (a model
trained on other features cannot be served with these); the endpoint checks its champion with it when it
starts.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError, LakehouseError
from lakehouse.ml import features as fs
from lakehouse.ml import training
from lakehouse.ml.training import ModelSpec

log = logging.getLogger(__name__)


class ScoringRequestError(LakehouseError):
    """The endpoint refused the request (HTTP 4xx): the message says which feature and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def invoke(url: str, frame: pd.DataFrame, timeout: float = 10.0) -> np.ndarray[Any, Any]:
    """POST ``frame`` to an MLflow scoring server; the positive class's probability per row.

    Raises:
        ScoringRequestError: the server answered 4xx (its message, e.g. a missing feature).
        LakehouseError: it answered 5xx or not at all.
    """
    body = json.dumps(
        {"dataframe_split": json.loads(frame.to_json(orient="split", index=False, date_format="iso"))}
    ).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode("utf-8", errors="replace")
        try:
            text = json.loads(text).get("message", text)
        except ValueError:
            pass
        if 400 <= error.code < 500:
            raise ScoringRequestError(error.code, text) from None
        raise LakehouseError(f"{url} failed with HTTP {error.code}: {text}") from None
    except (urllib.error.URLError, TimeoutError) as error:
        raise LakehouseError(
            f"{url} does not answer ({error}): start it with `lakehouse up --only …`"
        ) from None
    return np.asarray(answer["predictions"], dtype="float64")[:, 1]


def check_signature(settings: Settings, spec: ModelSpec, version: str) -> None:
    """Refuse a model version whose input signature is not exactly the declared features.

    Raises:
        ConfigError: naming the features it lacks and those it has in excess.
    """
    import mlflow.models

    training.use_mlflow(settings)
    info = mlflow.models.get_model_info(f"models:/{spec.registered_name}/{version}")
    schema = info.signature.inputs if info.signature is not None else None
    if schema is None:
        raise ConfigError(
            f"{spec.registered_name} version {version} has no input signature: it cannot be served"
        )
    expected = training.feature_columns(spec)
    have = schema.input_names()
    if have != expected:
        missing = [c for c in expected if c not in have]
        extra = [c for c in have if c not in expected]
        raise ConfigError(
            f"{spec.registered_name} version {version} was trained on other features than "
            f"models/ml/{spec.name}.yaml declares: it lacks {missing} and has {extra} in excess"
            + (" (same features, another order)" if not missing and not extra else "")
        )


@dataclass
class OnlineScorer:
    """Score entities online: Redis features in, the champion's probabilities out."""

    settings: Settings
    spec: ModelSpec
    url: str  # the model's /invocations (lakehouse.stack.model_serving.endpoint_url)

    def __post_init__(self) -> None:
        self.store = fs.feature_store(self.settings)
        # read the declarations once: each request types its features by them
        self.categorical = training.categorical_columns(self.settings, self.spec)
        repo = fs.load_feature_repo(self.settings)
        self.key_types = {e.join_key: e.type for e in repo.entities.values()}

    def features(self, entity_rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """The model's inputs for each entity row, as Redis holds them (missing values as nulls)."""
        keys = self.spec.labels.keys
        for index, row in enumerate(entity_rows):
            absent = [key for key in keys if row.get(key) in (None, "")]
            if absent:
                raise DataError(
                    f"entity row {index} lacks {absent} (the keys of {self.spec.registered_name})"
                )
        requested = [
            {key: self._key(index, key, row[key]) for key in keys} for index, row in enumerate(entity_rows)
        ]
        response = self.store.get_online_features(
            features=list(self.spec.features), entity_rows=requested, full_feature_names=True
        ).to_df()
        return training.prepare_inputs(response, self.settings, self.spec, self.categorical)

    def _key(self, index: int, key: str, value: Any) -> Any:
        """An entity key as its entity's declared type (a string id, or an integer one)."""
        if self.key_types.get(key, "string") == "string":
            return str(value)
        try:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError(value)
            return int(value)
        except (TypeError, ValueError):
            raise DataError(f"entity row {index}: {key} must be an integer, not {value!r}") from None

    def score(self, entity_rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """One row per entity: its keys and ``prediction`` (probability of the positive class)."""
        inputs = self.features(entity_rows)
        probability = invoke(self.url, inputs[training.feature_columns(self.spec)])
        return inputs[list(self.spec.labels.keys)].assign(prediction=probability)
