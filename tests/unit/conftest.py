"""The unit tier: no service runs. Spark transforms get a classic local session (the factory's classic path).

The session keeps its warehouse and Derby metastore in a workspace of its own (a pytest temporary folder):
``make test`` runs this tier beside the service tiers, whose Spark Connect server owns the test workspace's
metastore (Derby admits one JVM) and wipes that workspace when it starts.

``spark`` here shadows the root conftest's Spark Connect fixture, so a transform test reads the same in both
tiers; the root conftest refuses a unit test that asks for a service fixture (``stack``, ``postgres``…).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lakehouse.config import Settings


@pytest.fixture(scope="session")
def spark(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A classic local Spark session with the project's Delta configuration; no Spark Connect server.

    Without the OpenLineage listener: it plans every job a second time (about a tenth of this tier's Spark
    time) and no unit test reads its events; tests/integration/test_lineage_runs.py proves it on the stack.
    """
    from lakehouse.spark import get_spark

    local = settings.spark.model_copy(update={"master": "local[2]", "driver_memory": "1g"})
    lineage = settings.lineage.model_copy(update={"spark_listener": False})
    own = tmp_path_factory.mktemp("unit-spark-workspace")
    session = get_spark(
        settings.model_copy(update={"spark": local, "lineage": lineage, "workspace": own}),
        mode="classic",
        app_name="lakehouse-unit",
    )
    yield session
    session.stop()
