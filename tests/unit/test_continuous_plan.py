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


def test_a_declared_rollup_over_a_streamed_table_joins_the_plan(settings: Settings, tmp_path: Path) -> None:
    root, registry = _project(tmp_path)
    internal = {"classification": "internal"}
    silver = {
        **SILVER,
        "columns": [
            *SILVER["columns"],  # type: ignore[list-item]
            {"name": "read_at", "type": "timestamp", "expr": "timestamp_millis(payload.seq)", **internal},
        ],
    }
    (root / "catalog" / "silver" / "meters.yaml").write_text(yaml.safe_dump(silver))
    kinds = {"window_start": "timestamp", "window_end": "timestamp", "meter": "string", "readings": "long"}
    kinds |= {"batch_id": "long", "emitted_at": "timestamp"}
    rollup = {
        "table": "gold.meter_minute",
        "owner": "tests",
        "description": "Readings per meter and minute.",
        "classification": "internal",
        "optional": True,
        "rollup": {
            "rows": "silver.meters",
            "input": "meter_raw",
            "event_time": "read_at",
            "group_by": ["meter"],
            "aggregate": {"readings": "count(1)"},
        },
        "columns": [{"name": n, "type": t, **internal} for n, t in kinds.items()],
    }
    (root / "catalog" / "gold").mkdir()
    (root / "catalog" / "gold" / "meter_minute.yaml").write_text(yaml.safe_dump(rollup))
    local = settings.model_copy(update={"root": root, "workspace": tmp_path / "ws"})
    specs = plan(local, SupervisorOptions(registry=str(registry)))
    assert [(s.name, s.kind) for s in specs] == [
        ("bronze_meters", "bronze"),
        ("silver_meters_meter_raw", "silver"),
        ("gold_meter_minute", "rollup"),
    ]
    query = specs[2]
    assert (query.topic, query.rollup, query.table) == (
        "meters",
        "gold.meter_minute",
        local.table_path("gold", "meter_minute"),
    )
    assert query.checkpoint == local.checkpoint_path("gold_meter_minute")
    assert [s.kind for s in plan(local, SupervisorOptions(registry=str(registry), realtime=False))] == [
        "bronze",
        "silver",
    ]


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
