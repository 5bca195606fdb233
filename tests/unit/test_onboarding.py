"""Onboarding by configuration: a registered source's silver table drafted from what it landed in bronze."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner
from deltalake import write_deltalake

from lakehouse.config import Settings
from lakehouse.declared_dag import declared_tasks
from lakehouse.errors import ConfigError
from lakehouse.governance.catalog import load_contract
from lakehouse.onboarding import scaffold_table
from lakehouse.silver.engine import silver_table
from project_files import copy_declarations

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
    copy_declarations(settings.root, root)
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


def test_a_sample_survives_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    from lakehouse.governance.catalog import sample_frame

    hostile = pa.array([b"\xff not json", b'{"id": 1}'], type=pa.binary()).view(pa.string())
    write_deltalake(tmp_path / "bronze", pa.table({"value": hostile, "offset": [0, 1]}))

    frame = sample_frame(DeltaTable(tmp_path / "bronze"), 10)
    assert list(frame["value"]) == ["\ufffd not json", '{"id": 1}']


# --- kinds drafted from their bronze shape: a PostgreSQL snapshot, an HTTP API's nested records -------------

EXTRACTS = {
    "birds": {
        "kind": "postgres",
        "mode": "snapshot",
        "table": "field.birds",
        "key": ["species", "ring"],
        "bronze": "birds",
        "owner": "field-team",
    },
    "tickets": {
        "kind": "http",
        "url": "http://127.0.0.1:9/v1/tickets",
        "pagination": {"style": "cursor", "records_path": "result.items", "next_cursor_path": "meta.next"},
        "key": ["ticket_id"],
        "bronze": "tickets",
    },
}


@pytest.fixture
def extracts(project: Settings) -> Settings:
    registry = yaml.safe_load((project.root / "sources.yaml").read_text())
    registry["sources"].update(EXTRACTS)
    (project.root / "sources.yaml").write_text(yaml.safe_dump(registry))
    return project


def _snapshot(project: Settings, number: int) -> None:
    """A snapshot as the extract lands it: the birds, then one reweighed and one gone (a tombstone)."""
    base = {"_extracted_at": datetime(2026, 1, number, tzinfo=UTC), "_batch_id": f"b{number}",
            "_source_table": "field.birds", "_row_hash": "h", "_snapshot": number}  # fmt: skip
    first = [
        {"species": s, "ring": r, "mass_g": 4000 + r, "_op": "insert", "_deleted": False, **base}
        for s in ("Adelie", "Gentoo")
        for r in range(1, 4)
    ]
    second = [
        {**first[0], "mass_g": 4100, "_op": "update"},
        {**first[4], "mass_g": None, "_op": "delete", "_deleted": True},
    ]
    schema = pa.Table.from_pylist(first).schema
    rows = first if number == 1 else second
    write_deltalake(
        project.table_path("bronze", "birds"), pa.Table.from_pylist(rows, schema=schema), mode="append"
    )


def test_a_snapshot_source_drafts_an_upsert_whose_tombstones_stay(extracts: Settings, spark: Any) -> None:
    _snapshot(extracts, 1)
    draft = scaffold_table(extracts, "birds")
    draft.write()
    contract = load_contract(draft.contract_path)
    assert contract.build is not None
    assert (contract.build.apply, contract.build.key) == ("upsert", ["species", "ring"])
    assert (contract.build.sequence, contract.build.deletes) == (["_snapshot"], "_deleted")
    names = [c.name for c in contract.columns]
    assert names == ["species", "ring", "mass_g", "_snapshot", "_deleted", "_source", "_merged_at"]
    assert contract.column("_snapshot").type == "long"

    from lakehouse.silver.engine import build_table

    build_table(spark, extracts, "silver.birds", run_id="unit-birds-1")
    _snapshot(extracts, 2)
    build_table(spark, extracts, "silver.birds", run_id="unit-birds-2")
    rows = {
        (r["species"], r["ring"]): r
        for r in spark.read.format("delta").load(extracts.table_path("silver", "birds")).collect()
    }
    assert len(rows) == 6 and rows[("Adelie", 1)]["mass_g"] == 4100 and rows[("Adelie", 1)]["_snapshot"] == 2
    assert [k for k, r in rows.items() if r["_deleted"]] == [("Gentoo", 2)]
    assert rows[("Gentoo", 2)]["mass_g"] == 4002  # a tombstone keeps what was known of the row


def _pages(project: Settings, records: list[dict[str, Any]]) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "record": json.dumps(r),
            "fetched_at": now,
            "batch_id": "p1",
            "dedupe_key": str(i),
            "request_url": "u",
        }
        for i, r in enumerate(records)
    ]
    write_deltalake(project.table_path("bronze", "tickets"), pa.Table.from_pylist(rows))


def test_nested_http_records_are_flattened_into_typed_columns(extracts: Settings, spark: Any) -> None:
    records: list[dict[str, Any]] = [
        {"ticket_id": f"t{i}", "customer": {"email": f"c{i}@example.org", "tier": i % 3}, "tags": ["a"],
         "opened_at": f"2026-01-0{1 + i % 5}T08:00:00Z"}
        for i in range(12)
    ]  # fmt: skip
    records.append({"ticket_id": "t99", "customer": {"email": "z@example.org", "tier": "gold"}, "tags": []})
    _pages(extracts, records)
    draft = scaffold_table(extracts, "tickets")
    document = yaml.safe_load(draft.contract)
    columns = {c["name"]: c for c in document["columns"]}
    assert list(columns) == [
        "ticket_id", "customer_email", "customer_tier", "tags", "opened_at", "fetched_at", "batch_id",
    ]  # fmt: skip
    assert columns["customer_tier"]["expr"] == "get_json_object(record, '$.customer.tier')"
    assert columns["customer_tier"]["type"] == "string"  # "gold" among the numbers: review it
    assert (columns["customer_email"]["pii"], columns["customer_email"]["treatment"]) == ("email", "tokenize")
    assert "expr" not in columns["ticket_id"] and columns["opened_at"]["type"] == "timestamp"
    document["columns"][2]["type"] = "long"  # the review: a tier is a number, what is not is quarantined
    draft.write()
    draft.contract_path.write_text(yaml.safe_dump(document, sort_keys=False))

    from lakehouse.silver.engine import build_table

    build_table(spark, extracts, "silver.tickets", run_id="unit-tickets")
    rows = spark.read.format("delta").load(extracts.table_path("silver", "tickets")).collect()
    assert sorted(r["customer_tier"] for r in rows) == sorted(i % 3 for i in range(12))
    assert all("@" not in r["customer_email"] for r in rows)
    quarantined = (
        spark.read.format("delta").load(extracts.table_path("silver", "tickets_quarantine")).collect()
    )
    assert [(q["reason"], q["ticket_id"]) for q in quarantined] == [("invalid_value:customer_tier", "t99")]


# --- a drafted table edited wrongly: the error names the file and the field ---------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["build"].update(key=["member"]), r"silver/members\.yaml.*build\.key names \['member'\]"),
        (
            lambda d: d["build"]["event_time"].update(column="member_id"),
            r"silver/members\.yaml.*build\.event_time\.column 'member_id' is string",
        ),
        (
            lambda d: d["build"].update(
                references=[{"columns": ["visits"], "table": "silver.fx_rates", "to": ["currency"]}]
            ),
            r"silver/members\.yaml: build\.references\[0\]: visits is long but silver\.fx_rates\.currency is "
            r"string",
        ),
        (
            lambda d: d["build"].update(
                references=[{"columns": ["member_id"], "table": "silver.members_list"}]
            ),
            r"silver/members\.yaml: build (reads|names) silver\.members_list",
        ),
        (
            lambda d: d["build"].update(references=[{"columns": ["member_id"], "table": "silver.members"}]),
            r"cycle.*silver\.members.*catalog/silver/members\.yaml",
        ),
    ],
    ids=[
        "unknown-column",
        "type-mismatch-event-time",
        "type-mismatch-reference",
        "unknown-reference",
        "cycle",
    ],
)
def test_a_wrong_edit_of_a_drafted_table_is_named_by_dag_sync_and_silver_build(
    project: Settings, edit: Any, message: str
) -> None:
    _bronze(project, "members", [{"member_id": "m1", "at": "2026-01-01T10:00:00Z", "visits": 1}])
    draft = scaffold_table(project, "members")
    draft.write()
    document = yaml.safe_load(draft.contract_path.read_text())
    edit(document)
    draft.contract_path.write_text(yaml.safe_dump(document, sort_keys=False))

    from lakehouse.cli import main

    shutil.copy(Path(__file__).resolve().parents[2] / "env.test.yaml", project.root / "env.test.yaml")
    runner = CliRunner()
    # A cycle is the DAG's to see; every other mistake stops the table's build before Spark starts, too.
    commands = [["dag", "sync"], *([["silver", "build", "silver.members"]] if "cycle" not in message else [])]
    for command in commands:
        result = runner.invoke(main, ["--env", "test", *command], env={"LAKEHOUSE_ROOT": str(project.root)})
        assert result.exit_code == 1, (command, result.output)
        assert re.search(message, " ".join(result.output.split())), (command, result.output)
        assert "Traceback" not in result.output
