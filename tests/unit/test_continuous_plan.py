"""Continuous mode's plan: a declared silver table fed by a Kafka-backed bronze table is streamed too.

The plan is read from configuration only (the registry and the catalog of a project of its own), so a user's
new source and table join continuous mode with no code; ``--no-silver`` leaves silver to the DAG.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lakehouse.config import Settings
from lakehouse.silver import engine
from lakehouse.streaming.continuous import SupervisorOptions, plan, running_silver_inputs

pytestmark = pytest.mark.unit

BRONZE = {
    "table": "bronze.meter_raw",
    "owner": "tests",
    "description": "Meter readings as Kafka delivered them.",
    "classification": "internal",
    "columns": [
        {"name": "value", "type": "string", "classification": "internal"},
        {"name": "offset", "type": "long", "classification": "internal"},
    ],
}
SILVER = {
    "table": "silver.meters",
    "owner": "tests",
    "description": "Meter readings, one per meter and sequence number.",
    "classification": "internal",
    "build": {
        "inputs": [
            {"table": "bronze.meter_raw", "format": "json", "fields": {"meter": "string", "seq": "bigint"}},
            {"table": "bronze.meter_fixes", "name": "fixes"},
        ],
        "key": ["meter", "seq"],
        "sequence": ["offset"],
        "apply": "upsert",
    },
    "columns": [
        {"name": "meter", "type": "string", "classification": "internal", "expr": "payload.meter"},
        {"name": "seq", "type": "long", "classification": "internal", "expr": "payload.seq"},
        {"name": "offset", "type": "long", "classification": "internal"},
    ],
}


def _project(tmp_path: Path) -> tuple[Path, Path]:
    fixes = {**BRONZE, "table": "bronze.meter_fixes", "description": "Corrections loaded by hand."}
    for document in (BRONZE, fixes, SILVER):
        layer, name = document["table"].split(".")  # type: ignore[attr-defined]
        path = tmp_path / "catalog" / layer / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document))
    registry = tmp_path / "sources.yaml"
    registry.write_text(
        yaml.safe_dump({"sources": {"meters": {"kind": "kafka", "topic": "meters", "bronze": "meter_raw"}}})
    )
    return tmp_path, registry


def test_a_declared_table_fed_by_a_streamed_bronze_is_streamed_input_by_input(
    settings: Settings, tmp_path: Path
) -> None:
    root, registry = _project(tmp_path)
    local = settings.model_copy(update={"root": root, "workspace": tmp_path / "ws"})
    specs = plan(local, SupervisorOptions(registry=str(registry), realtime=False))
    assert [(s.name, s.kind) for s in specs] == [
        ("bronze_meters", "bronze"),
        ("silver_meters_meter_raw", "silver"),
    ]
    silver = specs[1]
    table = engine.silver_table(local, "silver.meters")
    # Only the input continuous mode feeds; the hand-loaded one stays the DAG's.
    assert (silver.silver, silver.input, silver.topic) == ("silver.meters", "meter_raw", "meters")
    assert silver.checkpoint == engine.input_checkpoint(table, table.build.inputs[0])
    assert silver.table == table.path

    bronze_only = plan(local, SupervisorOptions(registry=str(registry), realtime=False, silver=False))
    assert [s.kind for s in bronze_only] == ["bronze"]
    assert "--no-silver" in SupervisorOptions(silver=False).to_args()
    # No supervisor runs in this workspace: the DAG streams every input itself.
    assert running_silver_inputs(local, "silver.meters") == set()


@pytest.mark.parametrize(
    ("message", "conflict"),
    [
        ("io.delta.exceptions.ConcurrentAppendException: Files were added to the root of the table", True),
        ("[DELTA_CONCURRENT_APPEND] ConcurrentAppendException: Files were added …", True),
        ("[DELTA_CONCURRENT_DELETE_READ] ConcurrentDeleteReadException", True),
        ("[DELTA_MERGE_UNRESOLVED_EXPRESSION] Cannot resolve s.x", False),
        ("Table does not exist", False),
    ],
)
def test_only_delta_write_conflicts_are_retried(message: str, conflict: bool) -> None:
    assert engine.is_write_conflict(RuntimeError(message)) is conflict
