"""Hand-made quality records for the quality dashboard's tests (unit readers and the Chromium page).

Validation results in the shape of ``audit/validation_results`` and OpenLineage events in the shape of
``reports/lineage/openlineage.jsonl``, small enough to know every number the dashboard should show.
Importable from any test folder: ``tests/`` is on ``sys.path`` through its ``conftest.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from deltalake import write_deltalake

from lakehouse.config import Settings
from lakehouse.quality import RESULTS_ARROW

T0 = datetime(2024, 11, 1, 12, tzinfo=UTC)


def result(
    run: str, batch: int, table: str, rule: str, success: bool, unexpected: int, minutes: int
) -> dict[str, object]:
    """One validation result of 100 rows; ``rule`` is ``<expectation>:<column>``; null rules quarantine."""
    expectation, _, column = rule.partition(":")
    return {
        "run_id": run,
        "batch_id": batch,
        "table": table,
        "suite": table,
        "expectation": expectation,
        "rule": rule,
        "column": column or None,
        "action": "quarantine" if "null" in rule else "warn",
        "success": success,
        "element_count": 100,
        "unexpected_count": unexpected,
        "unexpected_percent": float(unexpected),
        "engine": "pandas",
        "validated_at": T0 + timedelta(minutes=minutes),
        "details": "{}",
    }


def write_results(settings: Settings, rows: Sequence[dict[str, object]]) -> None:
    """Write ``rows`` (from :func:`result`) as the workspace's ``audit/validation_results`` table."""
    write_deltalake(
        settings.table_path("audit", "validation_results"), pa.Table.from_pylist(list(rows), RESULTS_ARROW)
    )


def lineage_event(kind: str, job: str, run: str, inputs: list[str], outputs: list[str], minute: int) -> str:
    """One OpenLineage run event (a JSON line) whose datasets carry the lake's table identities."""

    def dataset(identity: str) -> dict[str, object]:
        return {
            "namespace": "file",
            "name": f"/lake/{identity.replace('.', '/')}",
            "facets": {
                "symlinks": {"identifiers": [{"namespace": "lakehouse", "name": identity, "type": "TABLE"}]}
            },
        }

    return json.dumps(
        {
            "eventType": kind,
            "eventTime": (T0 + timedelta(minutes=minute)).isoformat(),
            "run": {"runId": run},
            "job": {"namespace": "lakehouse", "name": job},
            "inputs": [dataset(name) for name in inputs],
            "outputs": [dataset(name) for name in outputs],
            "producer": "tests",
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/definitions/RunEvent",
        }
    )
