"""Shared fixtures and the test run's own service stack.

The run uses the ``test`` environment (env.test.yaml: its own workspace and ports). The first test that needs
Kafka or Spark starts a fresh stack — the test workspace is wiped first, so every run starts from the same
empty lake and topic — and the session stops it at the end. Notebook tests (nbval) run last, in layer order,
against the lake the DAG test built.
"""

from __future__ import annotations

import os
import shutil
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

_LAYER_ORDER = (
    "bronze/ingest_events",
    "bronze/pull_apis",
    "bronze",
    "silver/clean_events",
    "silver",
    "gold/build_sessions",
    "gold/build_daily_kpis",
    "gold",
    "ml",
)
_TIER_ORDER = ("unit", "integration", "dag", "browser")


class _Stack:
    """Kafka + Spark Connect (and on demand PostgreSQL, Mosquitto, InfluxDB), started once per session."""

    def __init__(self) -> None:
        self.started = False
        self.extra: set[str] = set()

    def start(self) -> Settings:
        settings = load_settings(TEST_ENV, root=ROOT)
        if self.started:
            return settings
        from lakehouse.jvm import fetch_jars
        from lakehouse.services import ServiceManager, ensure_topics

        fetch_jars(ROOT)
        manager = ServiceManager(settings)
        manager.stop()
        for folder in (settings.workspace, *manager.external_dirs()):
            if folder.exists():
                shutil.rmtree(folder)
        manager.start(["kafka", "spark", "fx_api", "postgres", "mqtt"])
        ensure_topics(settings)
        self.started = True
        return settings

    def require(self, *names: str) -> Settings:
        """Start more services of the stack (postgres, mqtt, influxdb) if they are not up yet."""
        settings = self.start()
        missing = [name for name in names if name not in self.extra]
        if missing:
            from lakehouse.services import ServiceManager

            ServiceManager(settings).start(missing)
            self.extra.update(missing)
        return settings

    def stop(self) -> None:
        if self.started:
            from pyspark.sql import SparkSession

            from lakehouse.services import ServiceManager

            # Close client sessions first: a Connect client whose server is gone retries for minutes at exit.
            active = SparkSession.getActiveSession()
            if active is not None:
                active.stop()
            ServiceManager(load_settings(TEST_ENV, root=ROOT)).stop()
            self.started = False
            self.extra.clear()


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


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[Any]) -> None:
    # Stable sort: tiers in order, notebooks last and bronze → silver → gold → ml.
    items.sort(key=lambda item: (_tier(item), _layer(item)))


def pytest_runtest_setup(item: pytest.Item) -> None:
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
def spark(stack: Settings) -> Iterator[Any]:
    """A Spark Connect session on the test stack (the same factory the notebooks use)."""
    from lakehouse.spark import get_spark

    session = get_spark(stack, mode="connect")
    yield session
    session.stop()
