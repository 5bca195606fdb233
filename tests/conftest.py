"""Shared fixtures. Every Spark test uses the one session factory, against the test environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lakehouse.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings("test", root=ROOT)


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[object]:
    from lakehouse.spark import get_spark

    session = get_spark(settings)
    yield session
