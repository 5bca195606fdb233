"""Onboarding by configuration: a registered source's silver table drafted from what it landed in bronze."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from deltalake import write_deltalake

from lakehouse.config import Settings
from lakehouse.declared_dag import declared_tasks
from lakehouse.errors import ConfigError
from lakehouse.governance.catalog import load_contract
from lakehouse.onboarding import scaffold_table
from lakehouse.silver.engine import silver_table

pytestmark = pytest.mark.unit

SOURCES = {
    "members": {
        "kind": "kafka",
        "description": "Gym members signing in.",
        "owner": "gym-ops",
        "topic": "members",
        "bronze": "members",
        "key": ["member_id"],
        "payload": {
            "key": ["member_id"],
            "event_time": "signed_in_at",
            "fields": {
                "member_id": {"type": "string"},
                "email": {"path": "contact.email", "type": "string"},
                "signed_in_at": {"path": "at", "type": "timestamp"},
                "visits": {"type": "bigint"},
            },
        },
    },
    "loose": {"kind": "kafka", "topic": "loose", "bronze": "loose", "key": ["id"]},
}


@pytest.fixture
def project(settings: Settings, tmp_path: Path) -> Settings:
    root = tmp_path / "project"
    root.mkdir()
    for name in ("pipeline.yaml", "pipeline.declared.yaml", "sources.yaml"):
        shutil.copy(settings.root / name, root / name)
    for folder in ("catalog", "models", "quality"):
        shutil.copytree(settings.root / folder, root / folder)
    registry = yaml.safe_load((root / "sources.yaml").read_text())
    registry["sources"].update(SOURCES)
    (root / "sources.yaml").write_text(yaml.safe_dump(registry))
    return settings.model_copy(update={"root": root, "workspace": tmp_path / "ws"})


def _bronze(project: Settings, name: str, values: list[dict[str, object]]) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "key": str(i),
            "value": json.dumps(v),
            "topic": name,
            "partition": 0,
            "offset": i,
            "ingested_at": now,
        }
        for i, v in enumerate(values)
    ]
    write_deltalake(project.table_path("bronze", name), pa.Table.from_pylist(rows))


def test_a_declared_payload_drafts_a_table_the_engine_and_the_dag_take(project: Settings) -> None:
    _bronze(
        project,
        "members",
        [
            {
                "member_id": f"m{i}",
                "contact": {"email": f"person{i}@example.org"},
                "at": "2026-01-01T10:00:00Z",
            }
            for i in range(30)
        ],
    )
    draft = scaffold_table(project, "members")
    draft.write()
    contract = load_contract(draft.contract_path)
    assert contract.build is not None and contract.build.inputs[0].payload == "members"
    assert sorted(c.name for c in contract.columns) == sorted(
        ["member_id", "email", "signed_in_at", "visits", "ingested_at"]
    )
    assert contract.column("visits").type == "long"
    email = contract.column("email")
    assert (email.pii, email.treatment) == ("email", "tokenize")  # proposed from the sampled values
    assert contract.build.event_time is not None and contract.build.event_time.column == "signed_in_at"
    suite = json.loads(draft.suite_path.read_text())
    assert {e["meta"]["rule"] for e in suite["expectations"]} == {
        "row_count",
        "member_id_not_null",
        "key_unique",
    }
    assert silver_table(project, "silver.members").payloads["members"].key == ["member_id"]
    tasks = {t["name"]: t for t in declared_tasks(project)}
    assert tasks["silver-members"]["upstream"] == ["bronze-ingest-events"]
    with pytest.raises(ConfigError, match="exists"):
        draft.write()


def test_records_without_a_declaration_are_sampled_for_their_fields(project: Settings) -> None:
    _bronze(project, "loose", [{"id": i, "score": i / 2, "day": "2026-01-02", "ok": True} for i in range(5)])
    draft = scaffold_table(project, "loose")
    document = yaml.safe_load(draft.contract)
    assert [(c["name"], c["type"]) for c in document["columns"]] == [
        ("id", "long"),
        ("score", "double"),
        ("day", "date"),
        ("ok", "boolean"),
        ("ingested_at", "timestamp"),
    ]
    assert document["build"]["key"] == ["id"]


def test_a_source_that_landed_nothing_says_what_to_do_first(project: Settings) -> None:
    with pytest.raises(ConfigError, match=r"no data yet.*land the source first"):
        scaffold_table(project, "members")


def test_a_sample_survives_bytes_that_are_not_utf8() -> None:
    import pyarrow.dataset as ds

    from lakehouse.governance.catalog import sample_frame

    hostile = pa.array([b"\xff not json", b'{"id": 1}'], type=pa.binary()).view(pa.string())
    table = pa.table({"value": hostile, "offset": [0, 1]})

    class Table:
        def to_pyarrow_dataset(self) -> ds.Dataset:
            return ds.dataset(table)

    frame = sample_frame(Table(), 10)
    assert list(frame["value"]) == ["\ufffd not json", '{"id": 1}']
