"""Shared fixtures and the test run's own service stack.

The run uses the ``test`` environment (env.test.yaml: its own workspace and ports). The first test that needs
Kafka or Spark starts a fresh stack — the test workspace is wiped first, so every run starts from the same
empty lake and topic — and the session stops it at the end. Notebook tests (nbval) run last, in layer order,
against the lake the DAG test built.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]

# The environment the tests run in: env.test.yaml unless LAKEHOUSE_TEST_ENV names another (a developer
# running two suites side by side gives each its own env file, so their stacks do not collide).
TEST_ENV = os.environ.get("LAKEHOUSE_TEST_ENV", "test")

# Kernels that nbval and Ploomber start inherit these: notebooks run against the test environment.
os.environ["LAKEHOUSE_ENV"] = TEST_ENV
os.environ["LAKEHOUSE_ROOT"] = str(ROOT)
os.environ["PLOOMBER_ENV_FILENAME"] = f"env.{TEST_ENV}.yaml"
os.environ["PLOOMBER_STATS_ENABLED"] = "false"
os.environ["PLOOMBER_VERSION_CHECK_DISABLED"] = "true"
# Every service this run starts is recorded with this id; the run refuses any it did not start (see _Stack).
RUN_ID = os.environ.setdefault("LAKEHOUSE_RUN_ID", f"pytest-{uuid.uuid4().hex[:12]}")
RUN_STARTED = time.time()

_LAYER_ORDER = (
    "bronze/ingest_events",
    "bronze/pull_apis",
    "bronze",
    "silver",
    "gold",
    "ml",
)
_TIER_ORDER = ("unit", "integration", "dag", "browser")


class _Stack:
    """Kafka, Spark Connect, the FX API, PostgreSQL, Mosquitto, Redis (InfluxDB on demand), once per session.

    The run starts every service itself, from the project's files, in a wiped workspace: a service of an
    earlier run still alive in the test workspace, or any process on one of the test ports, stops the run with
    a message naming it (``ServiceManager(fresh=True)``) instead of being talked to.
    """

    BASE = ("kafka", "spark", "fx_api", "postgres", "mqtt", "redis")

    def __init__(self) -> None:
        self.started = False
        self.names: list[str] = []

    def start(self) -> Settings:
        settings = load_settings(TEST_ENV, root=ROOT)
        if self.started:
            return settings
        from lakehouse.errors import ServiceError
        from lakehouse.jvm import fetch_jars
        from lakehouse.stack import ServiceManager, ensure_topics

        fetch_jars(ROOT)
        manager = ServiceManager(settings, fresh=True)
        leftovers = [name for name in manager.services() if manager.pid(name) is not None]
        if leftovers:
            raise ServiceError(
                f"services of an earlier run are still alive in {settings.workspace}: {leftovers}. "
                f"The test run starts its own: `.venv/bin/lakehouse --env {TEST_ENV} down`, then run again"
            )
        manager.remove_data()
        try:
            manager.start(self.BASE)
            ensure_topics(settings)
        except BaseException:
            manager.stop()  # a failed start leaves nothing running: the next run starts clean
            raise
        self.started = True
        self.names = list(self.BASE)
        return settings

    def require(self, *names: str) -> Settings:
        """Start more services of the stack (postgres, mqtt, influxdb, redis) if they are not up yet."""
        settings = self.start()
        missing = [name for name in names if name not in self.names]
        if missing:
            from lakehouse.stack import ServiceManager

            ServiceManager(settings, fresh=True).start(missing)
            self.names.extend(missing)
        return settings

    def verify(self) -> list[Any]:
        """The start records of every service of the stack, each proven to be this run's own."""
        from lakehouse.stack import ServiceManager

        settings = self.start()
        return ServiceManager(settings, fresh=True).verify_own(self.names, since=RUN_STARTED)

    def stop(self) -> None:
        if self.started:
            from pyspark.sql import SparkSession

            from lakehouse.stack import ServiceManager

            # Close client sessions first: a Connect client whose server is gone retries for minutes at exit.
            active = SparkSession.getActiveSession()
            if active is not None:
                active.stop()
            ServiceManager(load_settings(TEST_ENV, root=ROOT)).stop()
            self.started = False
            self.names.clear()


_STACK = _Stack()


def _tier(item: pytest.Item) -> int:
    if item.nodeid.endswith(".ipynb") or ".ipynb::" in item.nodeid:
        return len(_TIER_ORDER)
    for index, marker in enumerate(_TIER_ORDER):
        if item.get_closest_marker(marker):
            return index
    return 0


def _layer(item: pytest.Item) -> int:
    path = item.nodeid.replace("\\", "/")
    for index, layer in enumerate(_LAYER_ORDER):
        if f"notebooks/{layer}" in path:
            return index
    return len(_LAYER_ORDER)


# Fixtures that start services: a unit test may not ask for them (the unit tier runs without services).
SERVICE_FIXTURES = frozenset({"stack", "stack_records", "postgres", "mqtt", "influxdb", "redis"})


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[Any]) -> None:
    misplaced = [
        f"{item.nodeid} uses {sorted(SERVICE_FIXTURES & set(getattr(item, 'fixturenames', ())))}"
        for item in items
        if item.get_closest_marker("unit") and SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if misplaced:
        raise pytest.UsageError(
            "unit tests run without services; move these to tests/integration:\n  " + "\n  ".join(misplaced)
        )
    # Stable sort: tiers in order, notebooks last and bronze → silver → gold → ml.
    items.sort(key=lambda item: (_tier(item), _layer(item)))


def _end_classic_spark() -> None:
    """Stop the unit tier's classic session: PySpark refuses a Connect client beside a classic session."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is None:
        return
    classic = SparkSession._instantiatedSession
    if classic is not None:
        classic.stop()
    else:
        SparkContext._active_spark_context.stop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _tier(item) > 0:
        _end_classic_spark()
    if _tier(item) == len(_TIER_ORDER):
        _STACK.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _STACK.stop()


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The test environment's settings (no services needed)."""
    return load_settings(TEST_ENV, root=ROOT)


@pytest.fixture(scope="session")
def stack() -> Settings:
    """The running test stack (Kafka with its topics, Spark Connect); its settings."""
    return _STACK.start()


@pytest.fixture(scope="session")
def postgres(stack: Settings) -> Settings:
    """The stack with the operational PostgreSQL running (database created)."""
    return _STACK.require("postgres")


@pytest.fixture(scope="session")
def mqtt(stack: Settings) -> Settings:
    """The stack with the Mosquitto broker running."""
    return _STACK.require("mqtt")


@pytest.fixture(scope="session")
def influxdb(stack: Settings) -> Settings:
    """The stack with InfluxDB running (database created)."""
    return _STACK.require("influxdb")


@pytest.fixture(scope="session")
def redis(stack: Settings) -> Settings:
    """The stack with Redis (the feature store's online store) running."""
    return _STACK.require("redis")


@pytest.fixture(scope="session")
def stack_records(stack: Settings) -> list[Any]:
    """Proof that every service of the running stack was started by this run (its start records)."""
    return _STACK.verify()


@pytest.fixture(scope="session")
def spark(stack: Settings) -> Iterator[Any]:
    """A Spark Connect session on the test stack (the same factory the notebooks use)."""
    from lakehouse.spark import get_spark

    session = get_spark(stack, mode="connect")
    yield session
    session.stop()
