"""Building the Ploomber DAG (pipeline.yaml) for one environment, re-running bronze only when Kafka has news.

Ploomber decides staleness from source code and upstream products. A streaming source changes without either,
so before building we compare the topic's end offsets with the bronze checkpoint: when Kafka holds records
bronze has not taken yet, the bronze task is forced and Ploomber re-runs whatever depends on it. With nothing
new, nothing runs.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from lakehouse.config import Settings
from lakehouse.errors import LakehouseError
from lakehouse.lag import LagProbe

log = logging.getLogger(__name__)

# The Ploomber task that ingests every Kafka-backed source of the registry into bronze.
KAFKA_BRONZE_TASK = "bronze-ingest-events"


def ploomber_env(settings: Settings) -> dict[str, str]:
    """Environment variables that point Ploomber, notebooks and kernels at ``settings``' environment."""
    env_file = "env.yaml" if settings.env_name == "local" else f"env.{settings.env_name}.yaml"
    return {
        **os.environ,
        "PLOOMBER_ENV_FILENAME": env_file,
        "LAKEHOUSE_ENV": settings.env_name,
        "LAKEHOUSE_ROOT": str(settings.root),
        # No phoning home from a closed network: both would only time out.
        "PLOOMBER_STATS_ENABLED": "false",
        "PLOOMBER_VERSION_CHECK_DISABLED": "true",
        # env*.yaml also holds lakehouse's own settings, which Ploomber flags as unused placeholders.
        "PYTHONWARNINGS": "ignore:The following placeholders:UserWarning",
    }


def bronze_lag(settings: Settings, topic: str) -> int:
    """Records in Kafka that bronze has not ingested yet (0 when up to date)."""
    with LagProbe(settings.kafka.bootstrap_servers) as probe:
        return probe.lag(topic, settings.checkpoint_path(f"bronze_{topic}"))


def _ploomber(args: list[str], settings: Settings) -> None:
    command = [str(Path(sys.executable).parent / "ploomber"), *args, "--entry-point", "pipeline.yaml"]
    log.info("running %s", " ".join(command))
    result = subprocess.run(command, cwd=settings.root, env=ploomber_env(settings), check=False)
    if result.returncode != 0:
        raise LakehouseError(
            f"`ploomber {' '.join(args)}` failed (exit {result.returncode}); the executed notebooks under "
            f"{settings.workspace / 'notebooks'} show the failing cell"
        )


def build(settings: Settings, *, force: bool = False) -> list[str]:
    """Build the DAG; returns the bronze tasks that were forced because Kafka had new records."""
    from lakehouse.sources.registry import load_registry
    from lakehouse.streaming.continuous import running_topics

    forced = []
    if not force:
        streaming_now = running_topics(settings)  # continuous mode keeps those up to date itself
        topics = [topic for topic in load_registry(settings).kafka_ingest() if topic not in streaming_now]
        lags = {topic: bronze_lag(settings, topic) for topic in topics}
        news = {topic: lag for topic, lag in lags.items() if lag > 0}
        if news:
            log.info("new records in Kafka %s: re-running %s", news, KAFKA_BRONZE_TASK)
            _ploomber(["task", KAFKA_BRONZE_TASK, "--force"], settings)
            forced.append(KAFKA_BRONZE_TASK)
    _ploomber(["build", *(["--force"] if force else [])], settings)
    return forced
