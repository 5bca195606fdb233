"""The one place that builds a Spark session.

Notebooks, dashboards, the CLI and tests all call :func:`get_spark`. It attaches to the Spark Connect server
when one answers at the configured URL (the local one ``lakehouse up`` starts, or a cluster's), and otherwise
starts a classic local session with the same configuration. Pointing at a cluster is a settings change only.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pyspark.sql import SparkSession

from lakehouse.config import Settings, load_settings
from lakehouse.errors import ServiceError

log = logging.getLogger(__name__)

Mode = Literal["auto", "connect", "classic"]
MODE_VARIABLE = "LAKEHOUSE_SPARK_MODE"

# Artifacts the pyspark wheel already carries win over the copies Maven brings transitively.
SPARK_JARS_SUBDIR = "spark-jars"


def spark_jars(settings: Settings) -> list[Path]:
    """The jars handed to Spark with ``spark.jars`` (Delta, Kafka source, JDBC driver).

    Raises:
        ServiceError: the jars have not been fetched yet.
    """
    folder = settings.jars_dir / SPARK_JARS_SUBDIR
    jars = sorted(folder.glob("*.jar"))
    if not jars or not any(jar.name.startswith("delta-spark") for jar in jars):
        raise ServiceError(f"Spark's jars are missing in {folder}: run `make jars` (Maven fetches them)")
    return jars


OPENLINEAGE_LISTENER = "io.openlineage.spark.agent.OpenLineageSparkListener"
OPENLINEAGE_JAR_PREFIX = "openlineage-spark_"


def openlineage_conf(settings: Settings, jars: list[Path]) -> dict[str, str]:
    """The OpenLineage Spark listener's configuration (empty when switched off or its jar is missing).

    Events (with column-level lineage) go to ``<reports>/lineage/spark.jsonl`` with the file transport;
    ``settings.lineage.spark_listener: false`` turns the listener off.
    """
    if not settings.lineage.spark_listener:
        return {}
    if not any(jar.name.startswith(OPENLINEAGE_JAR_PREFIX) for jar in jars):
        log.warning(
            "the OpenLineage Spark listener jar is missing: run `make jars` (Spark runs without lineage)"
        )
        return {}
    events = settings.reports / "lineage" / "spark.jsonl"
    events.parent.mkdir(parents=True, exist_ok=True)
    return {
        "spark.extraListeners": OPENLINEAGE_LISTENER,
        "spark.openlineage.transport.type": "file",
        "spark.openlineage.transport.location": str(events),
        "spark.openlineage.namespace": settings.lineage.namespace,
        # The serialized logical plan and unknown-node facets are large and only useful to debug the listener.
        "spark.openlineage.facets.spark.logicalPlan.disabled": "true",
        "spark.openlineage.facets.spark_unknown.disabled": "true",
        "spark.openlineage.facets.debug.disabled": "true",
    }


def _openlineage_java_options(lineage: dict[str, str]) -> list[str]:
    # The listener defines its extension-provider class in each class loader by reflection; without this
    # opening every session start logs an InaccessibleObjectException stack trace (the listener still works).
    return ["--add-opens=java.base/java.security=ALL-UNNAMED"] if lineage else []


def spark_conf(settings: Settings) -> dict[str, str]:
    """The configuration every session gets, local or server: Delta, UTC, the jars, loopback only.

    The OpenLineage listener (see :func:`openlineage_conf`) is part of it, so the Connect server and a
    classic session emit the same lineage.
    """
    warehouse = settings.workspace / "warehouse"
    jars = spark_jars(settings)
    lineage = openlineage_conf(settings, jars)
    return {
        "spark.jars": ",".join(str(jar) for jar in jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.sql.catalogImplementation": "in-memory",
        "spark.sql.streaming.stopActiveRunOnRestart": "true",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.showConsoleProgress": "false",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # A declared silver table casts every column and judges each cast in one CASE: the optimizer's
        # constraint propagation grows with the product of those aliases and predicates, and a 17-column
        # upsert ran a 1 GiB driver out of heap planning one micro-batch. Off, it plans in milliseconds; the
        # inferred IsNotNull filters it would add are not what our joins rely on.
        "spark.sql.constraintPropagation.enabled": "false",
        # Delta rebuilds a table snapshot in 50 tasks by default: on a laptop that dominates each micro-batch.
        "spark.databricks.delta.snapshotPartitions": str(settings.spark.shuffle_partitions),
        # VACUUM lists a table's files in a job of this many tasks (Spark's default: 10,000): 35-40 s per
        # table on two cores for a table of a few files, which was nine tenths of an erasure.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(settings.spark.shuffle_partitions),
        "spark.driver.extraJavaOptions": " ".join(
            [f"-Dderby.system.home={settings.workspace / 'metastore'}", *_openlineage_java_options(lineage)]
        ),
        **lineage,
    }


def connect_endpoint(url: str) -> tuple[str, int]:
    """Host and port of an ``sc://host:port`` URL."""
    parsed = urlparse(url.replace("sc://", "http://", 1))
    return parsed.hostname or "127.0.0.1", parsed.port or 15002


def connect_reachable(url: str, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections at the Connect URL."""
    host, port = connect_endpoint(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def get_spark(
    settings: Settings | None = None, *, mode: Mode | None = None, app_name: str = "lakehouse"
) -> SparkSession:
    """A Spark session for ``settings`` (default: the active environment).

    Args:
        settings: which environment; ``load_settings()`` when omitted.
        mode: ``connect`` (must attach), ``classic`` (always a local JVM) or ``auto`` (attach when the
            server answers, else start locally). ``$LAKEHOUSE_SPARK_MODE`` sets the default.
        app_name: shown in the Spark UI of a classic session.

    Returns:
        A Spark Connect client session or a classic session, both with Delta configured.

    Raises:
        ServiceError: ``connect`` was asked for (or the environment manages no local Spark) and the
            server does not answer.
    """
    settings = settings or load_settings()
    mode = mode or os.environ.get(MODE_VARIABLE, "auto")  # type: ignore[assignment]
    if mode not in ("auto", "connect", "classic"):
        raise ServiceError(f"{MODE_VARIABLE} must be auto, connect or classic (got {mode!r})")
    url = settings.spark.connect_url
    if mode != "classic" and url:
        if connect_reachable(url):
            log.info("attaching to Spark Connect at %s", url)
            builder = SparkSession.builder.remote(url)
            return builder.config("spark.sql.session.timeZone", "UTC").getOrCreate()
        if mode == "connect" or not settings.spark.managed:
            raise ServiceError(
                f"Spark Connect does not answer at {url}: start it with `lakehouse up` "
                "(or check the URL in the environment file)"
            )
    log.info("starting a classic local Spark session (%s)", settings.spark.master)
    # A Connect client created earlier in this process (or a parent's) flags the process as Connect-only.
    for variable in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE"):
        os.environ.pop(variable, None)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(settings.spark.master).appName(app_name)
    builder = builder.config("spark.driver.memory", settings.spark.driver_memory)
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
