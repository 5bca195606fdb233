"""Fixtures of the integration tier beyond the stack's (``tests/conftest.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from lakehouse.config import Settings


@pytest.fixture(scope="module")
def own_db(postgres: Settings) -> Iterator[str]:
    """A database of its own on the test server, reached only through a connection URL (dropped after)."""
    pg = postgres.postgres
    name = f"it_own_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(**pg.connect_kwargs(), autocommit=True)  # type: ignore[arg-type]
    admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{name}"
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # type: ignore[arg-type]
        admin.close()
