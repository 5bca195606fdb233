"""silver.telemetry by declaration: the demo's own contract (catalog/silver/telemetry.yaml) and payload
(sources.yaml, iot_telemetry) run by the silver engine on inline bronze rows, as the DAG runs them.

The bridge delivers at least once and device clocks are skewed: re-deliveries are duplicates (within a batch
and across batches), lateness is judged per device, broken records are quarantined with the reasons the demo
has always used, and every bronze row is accounted for in ``audit/silver_batches``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.silver import engine
from lakehouse.silver.engine import RunContext, SilverTable
from lakehouse.sources.kafka import BRONZE_KAFKA
from lakehouse.sources.mqtt import Normalizer, normalize

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T0 = datetime(2024, 11, 1, 10, tzinfo=UTC)


def _payload(device: str, seq: int, minute: float, **fields: Any) -> bytes:
    document: dict[str, Any] = {
        "device_id": device,
        "seq": seq,
        "fw": "1.4.2",
        "ts": (T0 + timedelta(minutes=minute)).isoformat(),
        "unit": "C",
        "temperature": 21.5,
        "humidity": 40.1,
        "co2": 612,
        "battery": 88,
        **fields,
    }
    return json.dumps(document).encode()


def _record(device: str, seq: int, minute: float, normalizer: Normalizer | None = None, **fields: Any) -> str:
    """What the bridge writes to Kafka for one device message (its declared record)."""
    topic = f"devices/{device}/telemetry"
    return json.dumps(normalize(topic, _payload(device, seq, minute, **fields), NOW, normalizer))


def _local(settings: Settings, table: SilverTable, tmp_path: Path) -> SilverTable:
    """The declared table with its Delta paths under ``tmp_path``."""
    lake = tmp_path / "lake"
    return dataclasses.replace(
        table,
        path=str(lake / "telemetry"),
        quarantine=str(lake / "telemetry_quarantine"),
        audit=str(lake / "silver_batches"),
        checkpoints=str(tmp_path / "checkpoints"),
        input_paths={label: str(lake / label) for label in table.input_paths},
    )


class Bronze:
    """Feeds bronze micro-batches (Kafka partition 0, growing offsets) to the engine, as foreachBatch would."""

    def __init__(self, spark: Any, settings: Settings, table: SilverTable) -> None:
        self.spark, self.table = spark, table
        engine.ensure_tables(spark, table)
        self.ctx = RunContext(
            table=table,
            spec=table.build.inputs[0],
            settings=settings,
            run_id="run-1",
            app_id="app-telemetry",
            quality=False,
        )
        self.batch_id = 0
        self.offset = 0

    def feed(self, values: list[str]) -> engine.BatchCounts:
        rows = []
        for value in values:
            rows.append(("k", value, "iot.telemetry", 0, self.offset, NOW, NOW, NOW.date(), None, None))
            self.offset += 1
        counts = engine.process_batch(self.spark.createDataFrame(rows, BRONZE_KAFKA), self.batch_id, self.ctx)
        self.batch_id += 1
        return counts

    def silver(self) -> list[Any]:
        rows: list[Any] = (
            self.spark.read.format("delta").load(self.table.path).orderBy("source_offset").collect()
        )
        return rows

    def keys(self) -> set[tuple[str, int]]:
        return {(r["device_id"], r["seq"]) for r in self.silver()}

    def quarantine(self) -> list[Any]:
        rows: list[Any] = (
            self.spark.read.format("delta").load(self.table.quarantine).orderBy("offset").collect()
        )
        return rows


@pytest.fixture
def telemetry(spark: Any, settings: Settings, tmp_path: Path) -> Bronze:
    table = engine.silver_table(settings, "silver.telemetry")
    return Bronze(spark, settings, _local(settings, table, tmp_path))


def test_the_declaration_reads_the_bridged_record_by_the_sources_payload(settings: Settings) -> None:
    table = engine.silver_table(settings, "silver.telemetry")
    assert [i.table for i in table.build.inputs] == ["bronze.iot_telemetry"]
    record = table.payloads["iot_telemetry"]
    assert set(record.fields) <= set(table.columns)  # every declared field has its silver column
    assert (table.build.key, table.build.apply, table.build.dedupe) == (["device_id", "seq"], "append", True)
    assert table.build.event_time is not None
    assert (table.build.event_time.column, table.build.event_time.partition_by) == (
        "device_time",
        ["device_id"],
    )


def test_broken_records_are_quarantined_with_the_demo_s_reasons(telemetry: Bronze) -> None:
    values = [
        _record("d1", 1, 0),
        "{oops",
        json.dumps({"seq": 2, "device_time": "2024-11-01T10:00:00.000Z"}),
        json.dumps({"device_id": "d1", "device_time": "2024-11-01T10:00:00.000Z"}),
        json.dumps({"device_id": "d1", "seq": 3, "device_time": "half past ten"}),
        json.dumps({"device_id": "  ", "seq": 4, "device_time": "2024-11-01T10:00:00.000Z"}),
        json.dumps({"device_id": "d1", "seq": -5, "device_time": "2024-11-01T10:00:00.000Z"}),
    ]
    counts = telemetry.feed(values)
    assert (counts.input_rows, counts.applied, counts.quarantined, counts.duplicates) == (7, 1, 6, 0)
    assert [(r["reason"], r["offset"], r["record"]) for r in telemetry.quarantine()] == [
        ("malformed_json", 1, values[1]),
        ("missing_device_id", 2, values[2]),
        ("missing_seq", 3, values[3]),
        ("invalid_device_time", 4, values[4]),
        ("missing_device_id", 5, values[5]),
        ("missing_seq", 6, values[6]),
    ]
    (row,) = telemetry.silver()
    assert row["device_time"].replace(tzinfo=None) == datetime(2024, 11, 1, 10)  # session time zone: UTC
    assert (row["temperature_c"], row["humidity_pct"], row["co2_ppm"], row["battery_pct"]) == (
        21.5,
        40.1,
        612.0,
        88.0,
    )
    assert (row["firmware"], row["mqtt_topic"], row["event_date"]) == (
        "1.4.2",
        "devices/d1/telemetry",
        date(2024, 11, 1),
    )
    assert (row["source_partition"], row["source_offset"], row["received_at"] is not None) == (0, 0, True)


def test_duplicates_and_lateness_are_judged_per_device(telemetry: Bronze) -> None:
    counts = telemetry.feed(
        [
            _record("d1", 1, 0),
            _record("d1", 2, 60),  # d1 jumps an hour ahead
            _record("d2", 1, 0),  # d2's clock is behind: not late, it is another device
            _record("d1", 1, 0),  # re-delivery → duplicate
            _record("d1", 3, 50),  # 10 minutes behind d1's newest → accepted out of order
            _record("d1", 4, 30),  # 30 minutes behind → late beyond the declared 15-minute watermark
            _record("d2", 1, 0),  # re-delivery → duplicate
        ]
    )
    assert (counts.applied, counts.duplicates, counts.quarantined, counts.late) == (4, 2, 1, 1)
    assert telemetry.keys() == {("d1", 1), ("d1", 2), ("d2", 1), ("d1", 3)}
    assert [(r["reason"], r["device_id"], r["seq"]) for r in telemetry.quarantine()] == [
        ("late_beyond_watermark", "d1", 4)
    ]


def test_silver_carries_dedupe_and_each_device_s_watermark_across_batches(
    spark: Any, telemetry: Bronze
) -> None:
    telemetry.feed([_record("d1", 1, 0), _record("d1", 2, 60)])
    # A later batch — the bridge restarted and re-delivered what it had not acknowledged:
    later = telemetry.feed(
        [
            _record("d1", 2, 60),  # already in silver → duplicate
            _record("d1", 3, 20),  # 40 minutes behind d1's newest in silver → late
            _record("d2", 1, 20),  # d2 has no reading yet: d1's clock says nothing about it
        ]
    )
    assert (later.applied, later.duplicates, later.quarantined, later.late) == (1, 1, 1, 1)
    assert telemetry.keys() == {("d1", 1), ("d1", 2), ("d2", 1)}
    assert [(r["reason"], r["seq"]) for r in telemetry.quarantine()] == [("late_beyond_watermark", 3)]
    # bronze rows = applied + quarantined + duplicates + dropped, from the audit
    totals = engine.check_table(spark, telemetry.table)
    assert (totals["input_rows"], totals["applied"], totals["quarantined"], totals["duplicates"]) == (
        5,
        3,
        1,
        1,
    )


def test_values_the_payload_does_not_declare_reach_silver_in_extra(telemetry: Bronze) -> None:
    telemetry.feed([_record("d1", 1, 0, rssi=-71, radio={"channel": 11})])
    (row,) = telemetry.silver()
    assert json.loads(row["extra"]) == {"rssi": -71, "radio": {"channel": 11}}


def _project(
    settings: Settings, tmp_path: Path, field: dict[str, Any], column: dict[str, Any] | None
) -> Settings:
    """A copy of the project's catalog and registry with a reading field added to the iot_telemetry payload."""
    root = tmp_path / "project"
    shutil.copytree(Path(settings.root) / "catalog", root / "catalog")
    registry = yaml.safe_load((Path(settings.root) / "sources.yaml").read_text(encoding="utf-8"))
    registry["sources"]["iot_telemetry"]["payload"]["fields"].update(field)
    (root / "sources.yaml").write_text(yaml.safe_dump(registry, sort_keys=False), encoding="utf-8")
    if column is not None:
        path = root / "catalog" / "silver" / "telemetry.yaml"
        contract = yaml.safe_load(path.read_text(encoding="utf-8"))
        contract["columns"].append(column)
        path.write_text(yaml.safe_dump(contract, sort_keys=False), encoding="utf-8")
    return settings.model_copy(update={"root": root})


PRESSURE = {"pressure_kpa": {"path": "pressure", "type": "double", "unit": "hPa", "to": "kPa"}}


def test_a_reading_field_declared_in_the_payload_reaches_silver_by_configuration(
    spark: Any, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAKEHOUSE_SOURCES", raising=False)
    column = {"name": "pressure_kpa", "type": "double", "description": "Air pressure (kPa)."}
    project = _project(settings, tmp_path, PRESSURE, column)
    table = _local(project, engine.silver_table(project, "silver.telemetry"), tmp_path)
    run = Bronze(spark, project, table)
    normalizer = Normalizer.from_registry(project, "iot_telemetry")
    run.feed([_record("d1", 1, 0, normalizer, pressure=1013.2)])
    (row,) = run.silver()
    assert row["pressure_kpa"] == pytest.approx(101.32)
    assert json.loads(row["extra"] or "{}") == {}  # declared, so not an undeclared extra


def test_a_declared_field_without_its_silver_column_is_refused_naming_it(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAKEHOUSE_SOURCES", raising=False)
    project = _project(settings, tmp_path, PRESSURE, None)
    with pytest.raises(
        ConfigError, match=r"catalog/silver/telemetry\.yaml.*\['pressure_kpa'\] reach no column"
    ):
        engine.silver_table(project, "silver.telemetry")


def test_bronze_rows_without_the_record_column_are_a_data_error(spark: Any, telemetry: Bronze) -> None:
    with pytest.raises(DataError, match="no column 'value'"):
        engine.process_batch(spark.createDataFrame([("x",)], "other string"), 0, telemetry.ctx)
