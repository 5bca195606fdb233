"""The declarative silver engine on crafted edge cases, one apply mode at a time.

Each test declares a table the way a user would (a contract with a ``build`` section), feeds the engine
small micro-batches and reads the Delta tables back: out-of-order and repeated sequences, deletes, null keys,
a key whose type changes, a column added upstream, late events, orphans, and quality rules that route rows.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.governance.catalog import TableContract, load_contract
from lakehouse.quality.validate import QualityError
from lakehouse.silver import engine
from lakehouse.silver.engine import RunContext, SilverTable

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _settings(settings: Settings, tmp_path: Path) -> Settings:
    quality = settings.quality.model_copy(update={"suites_dir": str(tmp_path / "suites"), "data_docs": False})
    return settings.model_copy(update={"workspace": tmp_path / "ws", "quality": quality})


def _table(settings: Settings, document: dict[str, Any], tmp_path: Path) -> SilverTable:
    contract = TableContract.model_validate(document)
    assert contract.build is not None
    name = contract.name
    lake = tmp_path / "lake"
    return SilverTable(
        contract=contract,
        build=contract.build,
        path=str(lake / name),
        quarantine=str(lake / f"{name}_quarantine"),
        audit=str(lake / "silver_batches"),
        checkpoints=str(tmp_path / "checkpoints" / name),
        tokenization_key="unit-test-key",
        input_paths={spec.label: str(lake / spec.label) for spec in contract.build.inputs},
        reference_paths={ref.table: str(lake / ref.table.split(".")[1]) for ref in contract.build.references},
    )


class Runner:
    """Feeds one input's micro-batches to the engine, as ``foreachBatch`` would."""

    def __init__(self, spark: Any, settings: Settings, table: SilverTable, quality: bool = False) -> None:
        self.spark, self.table = spark, table
        engine.ensure_tables(spark, table)
        self.ctx = RunContext(
            table=table,
            spec=table.build.inputs[0],
            settings=settings,
            run_id="run-1",
            app_id=f"app-{table.contract.name}",
            quality=quality,
        )
        self.batch_id = 0

    def feed(self, rows: list[dict[str, Any]], schema: str) -> engine.BatchCounts:
        frame = self.spark.createDataFrame([tuple(r.get(c) for c in _names(schema)) for r in rows], schema)
        counts = engine.process_batch(frame, self.batch_id, self.ctx)
        self.batch_id += 1
        return counts

    def rows(self, order: str) -> list[Any]:
        rows: list[Any] = (
            self.spark.read.format("delta").load(self.table.path).orderBy(*order.split(",")).collect()
        )
        return rows

    def quarantine(self) -> list[Any]:
        rows: list[Any] = (
            self.spark.read.format("delta").load(self.table.quarantine).orderBy("reason").collect()
        )
        return rows


def _names(schema: str) -> list[str]:
    return [part.strip().split(" ")[0] for part in schema.split(",")]


# --- append -----------------------------------------------------------------------------------------------

READINGS = {
    "table": "silver.readings",
    "owner": "tests",
    "description": "Device readings.",
    "classification": "internal",
    "build": {
        "inputs": [{"table": "bronze.raw_readings", "format": "json", "keep": ["offset"]}],
        "key": ["device_id", "seq"],
        "sequence": ["offset"],
        "event_time": {"column": "measured_at", "watermark": "1 hour", "order_by": ["offset"]},
        "reject": [{"reason": "implausible_value", "when": "value < 0"}],
    },
    "columns": [
        {"name": "device_id", "type": "string"},
        {"name": "seq", "type": "long"},
        {"name": "measured_at", "type": "timestamp", "expr": "timestamp_millis(CAST(payload.ts AS BIGINT))"},
        {"name": "value", "type": "double", "expr": "payload.reading.v"},
        {"name": "offset", "type": "long"},
    ],
}
READINGS["build"]["inputs"][0]["fields"] = {  # type: ignore[index]
    "device_id": "string",
    "seq": "string",
    "ts": "string",
    "reading": "struct<v:string>",
}
RAW_SCHEMA = "value string, offset long"
T0 = 1_730_419_200_000  # 2024-11-01T00:00:00Z


def _reading(device: str | None, seq: Any, minutes: int, value: Any = 1.5) -> str:
    return json.dumps({"device_id": device, "seq": seq, "ts": T0 + minutes * 60_000, "reading": {"v": value}})


def test_append_parses_rejects_dedupes_and_accounts_for_every_row(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    table = _table(settings, READINGS, tmp_path)
    run = Runner(spark, _settings(settings, tmp_path), table)
    first = run.feed(
        [
            {"value": _reading("d1", 1, 0), "offset": 0},
            {"value": _reading("d1", 1, 0), "offset": 1},  # the same reading again
            {"value": _reading("d1", 2, 5, value=-3), "offset": 2},  # a declared reject
            {"value": '{"device_id": "d1", "seq": 3', "offset": 3},  # not JSON
            {"value": _reading("d1", "three", 6), "offset": 4},  # a key value that does not cast
            {"value": _reading(None, 4, 7), "offset": 5},  # no key
            {"value": _reading("d2", 1, 200), "offset": 6},
            {"value": _reading("d2", 2, 10), "offset": 7},  # 190 minutes behind the newest: late
        ],
        RAW_SCHEMA,
    )
    assert (first.input_rows, first.applied, first.duplicates, first.quarantined, first.late) == (
        8,
        2,
        1,
        5,
        1,
    )
    second = run.feed([{"value": _reading("d1", 1, 0), "offset": 8}], RAW_SCHEMA)  # re-delivered later
    assert (second.applied, second.duplicates) == (0, 1)
    rows = run.rows("device_id,seq")
    assert [(r["device_id"], r["seq"], r["value"]) for r in rows] == [("d1", 1, 1.5), ("d2", 1, 1.5)]
    assert rows[0]["measured_at"] == datetime(2024, 11, 1, 0, 0)
    reasons = sorted((r["reason"], r["offset"]) for r in run.quarantine())
    assert reasons == [
        ("implausible_value", 2),
        ("invalid_value:seq", 4),
        ("late_beyond_watermark", 7),
        ("malformed_json", 3),
        ("missing_key", 5),
    ]
    assert all(
        r["record"] and r["input"] == "raw_readings" and r["failed_rules"] == [r["reason"]]
        for r in run.quarantine()
    )
    totals = engine.reconcile(spark, table)
    assert (
        totals["input_rows"]
        == totals["applied"] + totals["quarantined"] + totals["duplicates"] + totals["dropped"]
    )


def test_a_clock_in_the_future_cannot_move_the_watermark(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    # One device dated 2099: before the bound it became the newest event and every later reading was late.
    document = json.loads(json.dumps(READINGS))
    document["build"]["event_time"].update(relative_to="offset_time", not_before="2020-01-01")
    document["build"]["inputs"][0]["keep"] = ["offset", "offset_time"]
    table = _table(settings, document, tmp_path)
    run = Runner(spark, _settings(settings, tmp_path), table)
    schema = "value string, offset long, offset_time timestamp"
    ingest = datetime(2024, 11, 1, 6, tzinfo=UTC)  # six hours after T0
    year_2099 = int(datetime(2099, 1, 1, tzinfo=UTC).timestamp() * 1000)
    first = run.feed(
        [
            {"value": _reading("d1", 1, 0), "offset": 0, "offset_time": ingest},
            {"value": _reading("d9", 1, (year_2099 - T0) // 60_000), "offset": 1, "offset_time": ingest},
            # a day and six hours ahead of T0 is a day ahead of the ingest, and a minute more
            {"value": _reading("d1", 2, 60 * 30 + 1), "offset": 2, "offset_time": ingest},
            {"value": _reading("d7", 1, -60 * 24 * 365 * 6), "offset": 3, "offset_time": ingest},  # 2018
        ],
        schema,
    )
    assert (first.applied, first.quarantined, first.late) == (1, 3, 0)
    # The next readings are an hour after the first: on time, whatever the quarantined clocks said.
    later = [
        {"value": _reading("d1", 4 + i, 60 + i), "offset": 4 + i, "offset_time": ingest} for i in range(3)
    ]
    second = run.feed(later, schema)
    assert (second.applied, second.quarantined, second.late) == (3, 0, 0)
    reasons = sorted((r["reason"], r["offset"]) for r in run.quarantine())
    assert reasons == [
        ("event_time_before_floor", 3),
        ("event_time_in_future", 1),
        ("event_time_in_future", 2),
    ]
    assert [r["offset"] for r in run.rows("offset")] == [0, 4, 5, 6]
    # At the bound itself a reading is kept: a day ahead of its ingest, to the millisecond.
    edge = run.feed([{"value": _reading("d1", 9, 60 * 30), "offset": 7, "offset_time": ingest}], schema)
    assert (edge.applied, edge.quarantined) == (1, 0)


def test_the_future_is_judged_against_processing_time_by_default(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    table = _table(settings, READINGS, tmp_path)  # max_future: 1 day of the time the batch is processed
    run = Runner(spark, _settings(settings, tmp_path), table)
    tomorrow = int((datetime.now(UTC).timestamp() + 3 * 3600) * 1000)  # three hours ahead: a skewed clock
    next_week = int((datetime.now(UTC).timestamp() + 7 * 86400) * 1000)
    counts = run.feed(
        [
            {"value": _reading("d1", 1, (tomorrow - T0) // 60_000), "offset": 0},
            {"value": _reading("d2", 1, (next_week - T0) // 60_000), "offset": 1},
        ],
        RAW_SCHEMA,
    )
    assert (counts.applied, counts.quarantined) == (1, 1)
    assert [(r["reason"], r["offset"]) for r in run.quarantine()] == [("event_time_in_future", 1)]


def test_a_duplicate_that_disagrees_is_quarantined_not_resolved_by_arrival_order(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    document = json.loads(json.dumps(READINGS))
    document["build"]["conflicts"] = {"compare": ["measured_at", "value"]}
    table = _table(settings, document, tmp_path)
    run = Runner(spark, _settings(settings, tmp_path), table)
    first = run.feed(
        [
            {"value": _reading("d1", 1, 0, value=1.5), "offset": 0},
            {"value": _reading("d1", 1, 0, value=1.5), "offset": 1},  # a re-delivery: the same content
            {"value": _reading("d1", 1, 0, value=9.0), "offset": 2},  # the same key, another value
            {"value": _reading("d2", 1, 0, value=None), "offset": 3},
            {"value": _reading("d2", 1, 0, value=None), "offset": 4},  # nulls compare equal
        ],
        RAW_SCHEMA,
    )
    assert (first.applied, first.duplicates, first.quarantined) == (2, 2, 1)
    # Later batches compare with the table's row: a re-delivery is a duplicate, a disagreement is held.
    second = run.feed(
        [
            {"value": _reading("d1", 1, 0, value=1.5), "offset": 5},
            {"value": _reading("d1", 1, 1, value=1.5), "offset": 6},  # another time for the same key
        ],
        RAW_SCHEMA,
    )
    assert (second.applied, second.duplicates, second.quarantined) == (0, 1, 1)
    assert sorted((r["reason"], r["offset"]) for r in run.quarantine()) == [
        ("conflicting_duplicate", 2),
        ("conflicting_duplicate", 6),
    ]
    assert [(r["device_id"], r["value"]) for r in run.rows("device_id")] == [("d1", 1.5), ("d2", None)]
    totals = engine.reconcile(spark, table)
    assert totals["input_rows"] == totals["applied"] + totals["quarantined"] + totals["duplicates"]


def test_a_duplicate_that_disagrees_can_be_only_counted(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    document = json.loads(json.dumps(READINGS))
    document["build"]["conflicts"] = {"compare": ["value"], "action": "warn"}
    table = _table(settings, document, tmp_path)
    run = Runner(spark, _settings(settings, tmp_path), table)
    counts = run.feed(
        [
            {"value": _reading("d1", 1, 0, value=1.5), "offset": 0},
            {"value": _reading("d1", 1, 0, value=2), "offset": 1},
        ],
        RAW_SCHEMA,
    )
    assert (counts.applied, counts.duplicates, counts.quarantined) == (1, 1, 0)


def test_a_replayed_micro_batch_is_written_once(spark: Any, settings: Settings, tmp_path: Path) -> None:
    table = _table(settings, READINGS, tmp_path)
    run = Runner(spark, _settings(settings, tmp_path), table)
    batch = [{"value": _reading("d1", 1, 0), "offset": 0}, {"value": "nope", "offset": 1}]
    run.feed(batch, RAW_SCHEMA)
    run.batch_id = 0  # the same batch id again: Delta's txnVersion skips every write
    run.feed(batch, RAW_SCHEMA)
    assert len(run.rows("seq")) == 1 and len(run.quarantine()) == 1
    assert len(spark.read.format("delta").load(table.audit).collect()) == 1


# --- upsert (SCD1) ----------------------------------------------------------------------------------------

ACCOUNTS = {
    "table": "silver.accounts",
    "owner": "tests",
    "description": "Accounts, latest version per id.",
    "classification": "internal",
    "build": {
        "inputs": [{"table": "bronze.accounts_extract"}],
        "key": ["account_id"],
        "sequence": ["updated_at"],
        "apply": "upsert",
        "deletes": "op = 'D'",
    },
    "columns": [
        {"name": "account_id", "type": "long"},
        {"name": "plan", "type": "string"},
        {"name": "updated_at", "type": "timestamp"},
        {"name": "_deleted", "type": "boolean"},
        {"name": "_source", "type": "string"},
        {"name": "_merged_at", "type": "timestamp"},
    ],
}
EXTRACT = "account_id string, plan string, updated_at timestamp, op string"


def _at(hour: int) -> datetime:
    return datetime(2026, 1, 1, hour)


def test_upsert_keeps_the_latest_sequence_whatever_the_arrival_order(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    run = Runner(spark, _settings(settings, tmp_path), _table(settings, ACCOUNTS, tmp_path))
    counts = run.feed(
        [
            {"account_id": "1", "plan": "pro", "updated_at": _at(3)},
            {"account_id": "1", "plan": "free", "updated_at": _at(1)},  # older, same batch
            {"account_id": "2", "plan": "free", "updated_at": _at(1)},
        ],
        EXTRACT,
    )
    assert (counts.applied, counts.duplicates) == (2, 1)
    run.feed([{"account_id": "1", "plan": "team", "updated_at": _at(2)}], EXTRACT)  # older, later batch
    run.feed([{"account_id": "2", "plan": "other", "updated_at": _at(1)}], EXTRACT)  # same sequence again
    rows = run.rows("account_id")
    assert [(r["account_id"], r["plan"], r["_deleted"]) for r in rows] == [
        (1, "pro", False),
        (2, "free", False),
    ]
    assert rows[0]["_source"] == "accounts_extract"
    totals = engine.reconcile(spark, run.table)
    assert totals["applied"] == len(rows) == 2  # the table holds what was applied; the rest are duplicates
    assert totals["input_rows"] == 5 == totals["applied"] + totals["quarantined"] + totals["duplicates"]


def test_upsert_deletes_leave_a_tombstone_an_older_insert_cannot_undo(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    run = Runner(spark, _settings(settings, tmp_path), _table(settings, ACCOUNTS, tmp_path))
    run.feed([{"account_id": "1", "plan": "pro", "updated_at": _at(1)}], EXTRACT)
    run.feed([{"account_id": "1", "updated_at": _at(2), "op": "D"}], EXTRACT)  # a delete carries its key
    run.feed([{"account_id": "1", "plan": "pro", "updated_at": _at(1)}], EXTRACT)  # re-delivered insert
    run.feed([{"account_id": "9", "updated_at": _at(5), "op": "D"}], EXTRACT)  # delete of an unknown key
    run.feed([{"account_id": "9", "plan": "free", "updated_at": _at(4)}], EXTRACT)  # its older insert
    rows = run.rows("account_id")
    assert [(r["account_id"], r["plan"], r["_deleted"]) for r in rows] == [(1, "pro", True), (9, None, True)]
    run.feed([{"account_id": "1", "plan": "team", "updated_at": _at(6)}], EXTRACT)  # re-created later
    first = run.rows("account_id")[0]
    assert (first["plan"], first["_deleted"]) == ("team", False)


WIDTH = 24  # a real table's width: 8 such columns already ran the planner out of a 1 GiB heap once
WIDE = {
    "table": "silver.wide",
    "owner": "tests",
    "description": "A wide snapshot table with a composite key.",
    "classification": "internal",
    "build": {
        "inputs": [{"table": "bronze.wide_extract"}],
        "key": ["site", "day"],
        "sequence": ["_snapshot"],
        "apply": "upsert",
        "deletes": "_gone",
    },
    "columns": [
        {"name": "site", "type": "string"},
        {"name": "day", "type": "long"},
        *[{"name": f"m{i}", "type": "double"} for i in range(WIDTH)],
        {"name": "_snapshot", "type": "long"},
        {"name": "_deleted", "type": "boolean"},
        {"name": "_source", "type": "string"},
        {"name": "_merged_at", "type": "timestamp"},
    ],
}
WIDE_EXTRACT = (
    "site string, day long, "
    + ", ".join(f"m{i} string" for i in range(WIDTH))
    + ", _snapshot long, _gone boolean"
)


def _wide(site: str, day: int, snapshot: int, scale: float, **changes: Any) -> dict[str, Any]:
    row = {f"m{i}": str(day * scale + i) for i in range(WIDTH)}
    return {"site": site, "day": day, "_snapshot": snapshot, "_gone": False, **row, **changes}


def test_a_wide_table_upserts_and_judges_every_column(spark: Any, settings: Settings, tmp_path: Path) -> None:
    run = Runner(spark, _settings(settings, tmp_path), _table(settings, WIDE, tmp_path))
    first = run.feed([_wide(site, day, 1, 1.0) for site in ("a", "b") for day in range(100)], WIDE_EXTRACT)
    assert (first.applied, first.quarantined) == (200, 0)
    second = run.feed(
        [
            _wide("a", 3, 2, 10.0),  # changed
            _wide("a", 4, 2, 1.0, m7="not a number"),  # one bad column among many
            _wide("b", 5, 2, 1.0, _gone=True),  # deleted
            _wide("b", 6, 1, 99.0),  # an older snapshot's version: superseded by what is there
        ],
        WIDE_EXTRACT,
    )
    # applied counts rows the table gained: versions of known keys are counted with the duplicates
    assert (second.input_rows, second.applied, second.quarantined, second.duplicates) == (4, 0, 1, 3)
    rows = {(r["site"], r["day"]): r for r in run.rows("site,day")}
    assert len(rows) == 200
    assert [rows[("a", 3)][f"m{i}"] for i in (0, WIDTH - 1)] == [30.0, 30.0 + WIDTH - 1]
    assert rows[("a", 4)]["m7"] == 11.0 and rows[("b", 6)]["m0"] == 6.0
    assert rows[("b", 5)]["_deleted"] is True
    assert [q["reason"] for q in run.quarantine()] == ["invalid_value:m7"]


def test_upsert_quarantines_null_keys_key_type_changes_and_missing_sequences(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    run = Runner(spark, _settings(settings, tmp_path), _table(settings, ACCOUNTS, tmp_path))
    counts = run.feed(
        [
            {"account_id": None, "plan": "pro", "updated_at": _at(1)},
            {"account_id": "acc-7", "plan": "pro", "updated_at": _at(1)},  # the key became text upstream
            {"account_id": "3", "plan": "pro", "updated_at": None},
            {"account_id": "4", "plan": "pro", "updated_at": _at(1)},
        ],
        EXTRACT,
    )
    assert (counts.applied, counts.quarantined) == (1, 3)
    assert [r["reason"] for r in run.quarantine()] == [
        "invalid_value:account_id",
        "missing_key",
        "missing_sequence",
    ]


def test_a_column_added_upstream_neither_breaks_nor_vanishes(
    spark: Any, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = Runner(spark, _settings(settings, tmp_path), _table(settings, ACCOUNTS, tmp_path))
    run.feed([{"account_id": "1", "plan": "pro", "updated_at": _at(1)}], EXTRACT)
    with caplog.at_level("WARNING"):
        counts = run.feed(
            [{"account_id": "2", "plan": "pro", "updated_at": _at(1), "region": "eu"}],
            EXTRACT + ", region string",
        )
    assert counts.applied == 1 and len(run.rows("account_id")) == 2
    assert "region" in caplog.text and "does not read" in caplog.text


# --- SCD2 ---------------------------------------------------------------------------------------------------

CUSTOMERS = {
    "table": "silver.customer_history",
    "owner": "tests",
    "description": "Customer history.",
    "classification": "internal",
    "build": {
        "inputs": [{"table": "bronze.customers_extract"}],
        "key": ["customer_id"],
        "sequence": ["updated_at"],
        "apply": "scd2",
        "deletes": "op = 'D'",
        "scd2": {"track": ["segment"], "valid_from": "valid_from", "surrogate_key": "customer_key"},
    },
    "columns": [
        {"name": "customer_key", "type": "long"},
        {"name": "customer_id", "type": "long"},
        {"name": "segment", "type": "string"},
        {"name": "updated_at", "type": "timestamp"},
        {"name": "valid_from", "type": "timestamp"},
        {"name": "valid_to", "type": "timestamp"},
        {"name": "is_current", "type": "boolean"},
    ],
}
CUSTOMER_ROWS = "customer_id long, segment string, updated_at timestamp, op string"


def test_scd2_opens_a_version_per_change_and_is_safe_to_replay(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    run = Runner(spark, _settings(settings, tmp_path), _table(settings, CUSTOMERS, tmp_path))
    batch = [
        {"customer_id": 1, "segment": "new", "updated_at": _at(1)},
        {"customer_id": 1, "segment": "new", "updated_at": _at(2)},  # nothing tracked changed
        {"customer_id": 1, "segment": "loyal", "updated_at": _at(3)},
    ]
    run.feed(batch, CUSTOMER_ROWS)
    run.feed(batch, CUSTOMER_ROWS)  # replayed under a new batch id: nothing is newer than the current row
    run.feed([{"customer_id": 1, "segment": "vip", "updated_at": _at(5)}], CUSTOMER_ROWS)
    rows = run.rows("valid_from")
    assert [(r["segment"], r["valid_from"], r["valid_to"], r["is_current"]) for r in rows] == [
        ("new", _at(1), _at(3), False),
        ("loyal", _at(3), _at(5), False),
        ("vip", _at(5), None, True),
    ]
    assert len({r["customer_key"] for r in rows}) == 3


def test_scd2_delete_closes_the_current_version(spark: Any, settings: Settings, tmp_path: Path) -> None:
    run = Runner(spark, _settings(settings, tmp_path), _table(settings, CUSTOMERS, tmp_path))
    run.feed([{"customer_id": 1, "segment": "new", "updated_at": _at(1)}], CUSTOMER_ROWS)
    run.feed([{"customer_id": 1, "updated_at": _at(4), "op": "D"}], CUSTOMER_ROWS)
    rows = run.rows("valid_from")
    assert [(r["segment"], r["valid_to"], r["is_current"]) for r in rows] == [("new", _at(4), False)]


def test_scd2_on_delete_keep_leaves_the_last_version_current(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    local = _settings(settings, tmp_path)
    # A rule on valid_from (set at apply) is the table's, not the batch's: it must not break the batch.
    _suite(
        tmp_path,
        "silver.customer_history",
        [
            _rule("expect_column_values_to_not_be_null", "valid_from_present", "fail", column="valid_from"),
            _rule("expect_column_values_to_not_be_null", "segment_present", "quarantine", column="segment"),
        ],
    )
    build = {**CUSTOMERS["build"], "scd2": {**CUSTOMERS["build"]["scd2"], "on_delete": "keep"}}  # type: ignore[dict-item]
    table = _table(local, {**CUSTOMERS, "build": build}, tmp_path)
    run = Runner(spark, local, table, quality=True)
    run.feed([{"customer_id": 1, "segment": "new", "updated_at": _at(1)}], CUSTOMER_ROWS)
    deleted = run.feed([{"customer_id": 1, "segment": "new", "updated_at": _at(4), "op": "D"}], CUSTOMER_ROWS)
    assert (deleted.applied, deleted.duplicates) == (0, 1)  # accounted for, changing nothing
    rows = run.rows("valid_from")
    assert [(r["segment"], r["valid_to"], r["is_current"]) for r in rows] == [("new", None, True)]
    assert engine.check_table(spark, table)["input_rows"] == 2


def test_an_input_can_say_it_carries_no_deletes(spark: Any, settings: Settings, tmp_path: Path) -> None:
    build = {**ACCOUNTS["build"], "inputs": [{"table": "bronze.accounts_extract", "deletes": "false"}]}  # type: ignore[dict-item]
    run = Runner(
        spark, _settings(settings, tmp_path), _table(settings, {**ACCOUNTS, "build": build}, tmp_path)
    )
    # no `op` column: the build's predicate (op = 'D') is not this input's
    counts = run.feed(
        [{"account_id": "1", "plan": "pro", "updated_at": _at(1)}],
        "account_id string, plan string, updated_at timestamp",
    )
    assert counts.applied == 1 and not run.rows("account_id")[0]["_deleted"]
    with pytest.raises(ValueError, match="deletes needs apply"):
        TableContract.model_validate(
            {
                **ACCOUNTS,
                "build": {
                    **build,
                    "apply": "append",
                    "deletes": None,
                    "inputs": [{"table": "bronze.a", "deletes": "op = 'D'"}],
                },
            }
        )


def test_check_table_finds_a_broken_scd2_history(spark: Any, settings: Settings, tmp_path: Path) -> None:
    from lakehouse.errors import DataError
    from lakehouse.tables import delta_ref

    build = {**CUSTOMERS["build"], "scd2": {**CUSTOMERS["build"]["scd2"], "on_delete": "keep"}}  # type: ignore[dict-item]
    table = _table(settings, {**CUSTOMERS, "build": build}, tmp_path)
    run = Runner(spark, _settings(settings, tmp_path), table)
    run.feed(
        [
            {"customer_id": 1, "segment": "new", "updated_at": _at(1)},
            {"customer_id": 1, "segment": "loyal", "updated_at": _at(3)},
            {"customer_id": 2, "segment": "new", "updated_at": _at(1)},
        ],
        CUSTOMER_ROWS,
    )
    engine.check_table(spark, table)  # a sound history passes
    ref = delta_ref(table.path)
    spark.sql(f"UPDATE {ref} SET valid_to = NULL WHERE customer_id = 1 AND NOT is_current")
    with pytest.raises(DataError, match="SCD2 history"):
        engine.check_table(spark, table)
    spark.sql(
        f"UPDATE {ref} SET valid_to = valid_from + INTERVAL 5 HOURS WHERE customer_id = 1 AND NOT is_current"
    )
    with pytest.raises(DataError, match="SCD2 history"):  # overlaps the next version
        engine.check_table(spark, table)
    spark.sql(
        f"UPDATE {ref} SET valid_to = valid_from + INTERVAL 2 HOURS WHERE customer_id = 1 AND NOT is_current"
    )
    engine.check_table(spark, table)
    spark.sql(
        f"UPDATE {ref} SET is_current = false, valid_to = valid_from + INTERVAL 1 HOUR WHERE customer_id = 2"
    )
    with pytest.raises(DataError, match="no current version"):
        engine.check_table(spark, table)


# --- references and quality ---------------------------------------------------------------------------------

ORDERS = {
    "table": "silver.orders",
    "owner": "tests",
    "description": "Orders.",
    "classification": "internal",
    "build": {
        "inputs": [{"table": "bronze.orders_extract"}],
        "key": ["order_id"],
        "references": [{"columns": ["account_id"], "table": "silver.accounts", "action": "quarantine"}],
    },
    "columns": [
        {"name": "order_id", "type": "long"},
        {"name": "account_id", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "status", "type": "string"},
    ],
}
ORDER_ROWS = "order_id long, account_id long, amount double, status string"


def _suite(tmp_path: Path, table: str, expectations: list[dict[str, Any]]) -> None:
    layer, name = table.split(".")
    path = tmp_path / "suites" / layer / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": table, "expectations": expectations}))


def _rule(kind: str, rule: str, action: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"rule": rule, "action": action}}


def test_orphans_are_quarantined_with_the_reference_as_reason(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    accounts = Runner(spark, _settings(settings, tmp_path), _table(settings, ACCOUNTS, tmp_path))
    accounts.feed([{"account_id": "1", "plan": "pro", "updated_at": _at(1)}], EXTRACT)
    orders = Runner(spark, _settings(settings, tmp_path), _table(settings, ORDERS, tmp_path))
    counts = orders.feed(
        [{"order_id": 10, "account_id": 1, "amount": 5.0}, {"order_id": 11, "account_id": 2, "amount": 5.0}],
        ORDER_ROWS,
    )
    assert (counts.applied, counts.quarantined, counts.orphans) == (1, 1, 1)
    assert [(r["order_id"], r["reason"]) for r in orders.quarantine()] == [(11, "orphan_accounts")]


def test_compiled_rules_route_rows_and_agree_with_gx(spark: Any, settings: Settings, tmp_path: Path) -> None:
    local = _settings(settings, tmp_path)
    expectations = [
        _rule("expect_table_row_count_to_be_between", "rows", "warn", min_value=1),
        _rule("expect_column_values_to_not_be_null", "status_present", "quarantine", column="status"),
        _rule(
            "expect_column_values_to_be_between",
            "amount_range",
            "drop",
            column="amount",
            min_value=0,
            max_value=100,
        ),
        _rule(
            "expect_column_values_to_be_in_set",
            "status_known",
            "warn",
            column="status",
            value_set=["paid", "open"],
        ),
        _rule(
            "expect_column_values_to_match_regex",
            "status_lower",
            "quarantine",
            column="status",
            regex="^[a-z]+$",
            mostly=0.5,
        ),
    ]
    _suite(tmp_path, "silver.orders", expectations)
    declaration = {**ORDERS, "build": {**ORDERS["build"], "references": []}}  # type: ignore[dict-item]
    run = Runner(spark, local, _table(local, declaration, tmp_path), quality=True)
    rows: list[dict[str, Any]] = [
        {"order_id": 1, "amount": 10.0, "status": "paid"},
        {"order_id": 2, "amount": -1.0, "status": "paid"},  # dropped
        {"order_id": 3, "amount": 500.0, "status": None},  # quarantined: quarantine wins over drop
        {"order_id": 4, "amount": 10.0, "status": "Refund"},  # warned (set), regex passes thanks to mostly
    ]
    counts = run.feed(rows, ORDER_ROWS)
    assert (counts.applied, counts.dropped, counts.quarantined) == (2, 1, 1)
    assert [(r["order_id"], r["reason"], r["failed_rules"]) for r in run.quarantine()] == [
        (3, "status_present", ["status_present", "amount_range"])
    ]
    compiled = {
        r["rule"]: (r["unexpected_count"], r["success"])
        for r in spark.read.format("delta").load(local.table_path("audit", "validation_results")).collect()
    }
    # The same rows through GX's own engine give the same verdicts and counts.
    from lakehouse.quality.suites import load_suite
    from lakehouse.quality.validate import check_batch

    frame = spark.createDataFrame([tuple(r.get(c) for c in _names(ORDER_ROWS)) for r in rows], ORDER_ROWS)
    checked = check_batch(
        frame,
        "silver.orders",
        settings=local,
        run_id="gx",
        batch_id=0,
        persist=False,
        suite=load_suite(local, "silver.orders"),
        engine="pandas",
    )
    assert {r.rule: (r.unexpected_count, r.success) for r in checked.results} == compiled


def test_a_failing_fail_rule_stops_the_batch_before_anything_is_written(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    local = _settings(settings, tmp_path)
    _suite(
        tmp_path,
        "silver.orders",
        [_rule("expect_column_values_to_not_be_null", "amount_present", "fail", column="amount")],
    )
    declaration = {**ORDERS, "build": {**ORDERS["build"], "references": []}}  # type: ignore[dict-item]
    run = Runner(spark, local, _table(local, declaration, tmp_path), quality=True)
    with pytest.raises(QualityError, match="amount_present"):
        run.feed([{"order_id": 1, "amount": None, "status": "paid"}], ORDER_ROWS)
    assert run.rows("order_id") == []


# --- declarations that are wrong ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["build"].update(key=["nope"]), r"build\.key names \['nope'\]"),
        (lambda d: d["build"].update(apply="upsert", sequence=[]), "needs sequence"),
        (lambda d: d["build"]["event_time"].update(watermark="soon"), "not an interval"),
        (lambda d: d["build"]["event_time"].update(max_future="tomorrow"), "not an interval"),
        (lambda d: d["build"]["event_time"].update(not_before="the nineties"), "not an ISO date"),
        (lambda d: d["build"]["event_time"].update(relative_to="received"), "relative_to 'received'"),
        (
            lambda d: d["build"].update(conflicts={"compare": ["colour"]}),
            r"conflicts\.compare names \['colour'\]",
        ),
        (lambda d: d["build"].update(conflicts={"compare": []}), r"build\.conflicts\.compare"),
        (
            lambda d: d["build"].update(dedupe=False, conflicts={"compare": ["value"]}),
            "conflicts needs apply",
        ),
        (lambda d: d["build"]["inputs"][0].update(format="xml"), r"build\.inputs\[0\]\.format"),
    ],
)
def test_a_bad_declaration_names_the_file_and_the_field(tmp_path: Path, change: Any, message: str) -> None:
    document = json.loads(json.dumps(READINGS))
    change(document)
    path = tmp_path / "silver" / "readings.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=message) as error:
        load_contract(path)
    assert str(path) in str(error.value)


# --- a source's declared payload ----------------------------------------------------------------------------

GLUCOSE = {
    "table": "silver.glucose",
    "owner": "tests",
    "description": "Glucose readings.",
    "classification": "internal",
    "build": {
        "inputs": [{"table": "bronze.glucose", "format": "json", "payload": "cgm"}],
        "key": ["device_id", "seq"],
        "sequence": ["offset"],
    },
    "columns": [
        {"name": "device_id", "type": "string"},
        {"name": "seq", "type": "long"},
        {"name": "measured_at", "type": "timestamp"},
        {"name": "glucose_g_l", "type": "double"},
        {"name": "offset", "type": "long"},
    ],
}
CGM_PAYLOAD = {
    "key": ["device_id"],
    "sequence": "seq",
    "event_time": "measured_at",
    "time_format": "epoch_s",
    "fields": {
        "device_id": {"path": "sensor.serial", "type": "string"},
        "seq": {"type": "bigint", "required": True},
        "measured_at": {"path": ["t", "time"], "type": "timestamp"},
        "glucose_g_l": {"path": "reading.value", "type": "double", "unit": "mg/dL", "to": "g/L"},
    },
}


def test_an_input_reads_its_source_s_declared_payload(spark: Any, settings: Settings, tmp_path: Path) -> None:
    from lakehouse.contracts.payload import PayloadSpec

    table = _table(settings, GLUCOSE, tmp_path)
    table = dataclasses.replace(table, payloads={"glucose": PayloadSpec.model_validate(CGM_PAYLOAD)})
    run = Runner(spark, _settings(settings, tmp_path), table)

    def message(serial: str | None, seq: int | None, **extra: Any) -> str:
        return json.dumps({"sensor": {"serial": serial}, "seq": seq, "reading": {"value": 99.0}, **extra})

    counts = run.feed(
        [
            {"value": message("cgm-1", 1, t=1_700_000_000), "offset": 0},
            {"value": message("cgm-1", 2, time=1_700_000_300), "offset": 1},  # the other time path
            {"value": message("cgm-1", None, t=1_700_000_600), "offset": 2},  # a required field missing
            {"value": message(None, 3, t=1_700_000_900), "offset": 3},  # no device
        ],
        RAW_SCHEMA,
    )
    assert (counts.applied, counts.quarantined) == (2, 2)
    rows = run.rows("seq")
    assert [(r["device_id"], r["seq"], r["glucose_g_l"]) for r in rows] == [
        ("cgm-1", 1, 0.99),
        ("cgm-1", 2, 0.99),
    ]
    assert rows[1]["measured_at"] == datetime(2023, 11, 14, 22, 18, 20)
    assert sorted(r["reason"] for r in run.quarantine()) == ["missing_device_id", "missing_seq"]


# --- streams: the DAG's availableNow run and continuous mode share checkpoints --------------------------


def test_an_input_streamed_by_continuous_mode_is_left_to_it(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    local = _settings(settings, tmp_path)
    table = _table(settings, READINGS, tmp_path)
    (spec,) = table.build.inputs
    spark.createDataFrame(
        [(_reading("d1", 1, 0), 0), (_reading("d1", 2, 1), 1), ("not json", 2)], RAW_SCHEMA
    ).write.format("delta").save(table.input_paths[spec.label])

    left = engine.build_table(spark, local, table.name, run_id="dag-1", table=table, skip={spec.label})
    assert left.counts == {} and spark.read.format("delta").load(table.path).count() == 0

    built = engine.build_table(spark, local, table.name, run_id="dag-2", table=table)
    assert (built.total.input_rows, built.total.applied, built.total.quarantined) == (3, 2, 1)
    # The checkpoint remembers: a second run (or continuous mode after it) reads nothing twice.
    again = engine.build_table(spark, local, table.name, run_id="dag-3", table=table)
    assert again.counts == {} and engine.check_table(spark, table)["input_rows"] == 3


# --- a MERGE killed before its audit row ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "schema", "first", "killed", "added"),
    [
        (
            ACCOUNTS,
            EXTRACT,
            [{"account_id": "1", "plan": "free", "updated_at": _at(1)}],
            [
                {"account_id": "1", "plan": "pro", "updated_at": _at(2)},  # an update: not a row added
                {"account_id": "2", "plan": "free", "updated_at": _at(2)},
            ],
            1,
        ),
        (
            CUSTOMERS,
            CUSTOMER_ROWS,
            [{"customer_id": 1, "segment": "new", "updated_at": _at(1)}],
            [
                {"customer_id": 1, "segment": "loyal", "updated_at": _at(3)},  # a new version: a row added
                {"customer_id": 2, "segment": "new", "updated_at": _at(2)},
            ],
            2,
        ),
    ],
    ids=["upsert", "scd2"],
)
def test_a_merge_killed_before_its_audit_row_is_counted_when_replayed(
    spark: Any,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    document: dict[str, Any],
    schema: str,
    first: list[dict[str, Any]],
    killed: list[dict[str, Any]],
    added: int,
) -> None:
    # The kill matrix's point "after the table's commit, before the audit row", for a MERGE: replayed, the
    # MERGE changes nothing (its versions are no longer newer), yet the batch did add its rows.
    run = Runner(spark, _settings(settings, tmp_path), _table(settings, document, tmp_path))
    run.ctx.checkpoint = str(tmp_path / "checkpoint")  # where a batch notes the version it first saw
    run.feed(first, schema)
    merge = engine._apply

    def merge_then_die(*args: Any, **kwargs: Any) -> int:
        merge(*args, **kwargs)
        raise RuntimeError("killed after the MERGE committed")

    monkeypatch.setattr(engine, "_apply", merge_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        run.feed(killed, schema)
    monkeypatch.setattr(engine, "_apply", merge)
    replayed = run.feed(killed, schema)  # the stream replays the batch: same id, same rows
    assert replayed.applied == added
    totals = engine.check_table(spark, run.table)  # the table holds what the audit applied
    assert totals["input_rows"] == len(first) + len(killed)
