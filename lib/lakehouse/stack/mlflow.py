"""The MLflow tracking server (UI) over the run's SQLite store and artifacts."""

from __future__ import annotations

from lakehouse.config import Settings
from lakehouse.stack.java import venv_program
from lakehouse.stack.supervisor import Service
from lakehouse.stack.web import http_ok


def recipe(settings: Settings) -> Service:
    """``mlflow server`` on loopback with one worker and no job runner."""
    s = settings
    port = s.mlflow.port
    return Service(
        name="mlflow",
        port=port,
        url=f"http://127.0.0.1:{port}",
        command=[
            venv_program("mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            s.mlflow_tracking_uri,
            "--default-artifact-root",
            str(s.mlflow_artifacts),
        ],
        health=lambda: http_ok(f"http://127.0.0.1:{port}/health"),
        # The UI needs no job runner; MLflow's spawns seven worker processes (~2 GiB) by default.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        prepare=lambda: s.mlflow_artifacts.mkdir(parents=True, exist_ok=True),
        startup_timeout=60,
    )
