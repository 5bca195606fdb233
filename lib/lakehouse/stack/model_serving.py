"""``mlflow models serve`` of each declared model's champion, one endpoint per model (on demand).

The endpoint resolves ``models:/<name>@champion`` when it starts; ``lakehouse.stack.follow_champion``
restarts it when a promotion moves the alias. MLflow's own scoring server enforces the model's signature:
a request missing a feature or with one of the wrong type is answered 400, not 500.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.stack.java import venv_program
from lakehouse.stack.supervisor import Service
from lakehouse.stack.web import http_ok

log = logging.getLogger(__name__)


def service_name(registered_name: str) -> str:
    return f"model-{registered_name}"


def _require_champion(settings: Settings, name: str, registered_name: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(
        tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri
    )
    try:
        client.get_model_version_by_alias(registered_name, "champion")
    except MlflowException as exc:
        raise ServiceError(
            f"{registered_name} has no champion yet: build the DAG first (lakehouse build), which trains it"
        ) from exc


def recipes(settings: Settings) -> dict[str, Service]:
    """One on-demand service per declared model (``models/ml/<name>.yaml``), on consecutive ports."""
    from lakehouse.ml import training

    found: dict[str, Service] = {}
    for index, name in enumerate(training.declared_models(settings)):
        spec = training.load_model_spec(settings, name)
        port = settings.model_serving.port + index
        found[service_name(spec.registered_name)] = Service(
            name=service_name(spec.registered_name),
            port=port,
            url=f"http://127.0.0.1:{port}/invocations",
            command=[
                venv_program("mlflow"),
                "models",
                "serve",
                "--model-uri",
                f"models:/{spec.registered_name}@champion",
                "--env-manager",
                "local",  # the project's environment: MLflow's default builds one with pyenv and pip
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(settings.model_serving.workers),
            ],
            health=functools.partial(http_ok, f"http://127.0.0.1:{port}/ping"),
            prepare=functools.partial(_require_champion, settings, name, spec.registered_name),
            env={
                "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                "MLFLOW_REGISTRY_URI": settings.mlflow_tracking_uri,
                # the server execs uvicorn by name: the project's, from its virtual environment
                "PATH": f"{Path(venv_program('mlflow')).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            },
            startup_timeout=120,
            on_demand=True,
        )
    return found


def endpoint_url(settings: Settings, registered_name: str) -> str:
    """The ``/invocations`` URL of a declared model's endpoint."""
    return recipes(settings)[service_name(registered_name)].url
