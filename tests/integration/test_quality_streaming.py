"""Quality actions inside the declared silver events stream (foreachBatch on Spark Connect), end to end."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.quality import QualityError, build_data_docs, results_for_run
from lakehouse.quality.compiled import ENGINE
from lakehouse.silver import engine
from lakehouse.silver.engine import SilverTable
from lakehouse.sources.kafka import BRONZE_KAFKA

pytestmark = pytest.mark.integration

_T0 = 1_730_419_200_000  # 2024-11-01T00:00:00Z in epoch ms


def _payload(index: int, **overrides: Any) -> str:
    event = {
        "schema_version": 1,
        "event_id": f"e-{index}-{uuid.uuid4().hex[:6]}",
        "event_type": "page_view",
        "ts": _T0 + index * 1000,
        "user_id": f"u-{index:04d}",
        "session_id": "s-1",
        "platform": "web",
        "device": {"type": "desktop", "os": "Linux", "app_version": None},
        "country": "DE",
        "channel": "direct",
        "page": "/",
    }
    event.update(overrides)
    return json.dumps(event)


def _write_bronze(spark: Any, path: str, payloads: list[str], offset_start: int = 0) -> None:
    now = datetime.now(UTC)
    rows = [
        (None, value, "clickstream", 0, offset_start + i, now, now, now.date(), None, None)
        for i, value in enumerate(payloads)
    ]
    spark.createDataFrame(rows, BRONZE_KAFKA).write.format("delta").mode("append").save(path)


def _events(settings: Settings, tmp_path: Path) -> SilverTable:
    """The declared silver.events, reading and writing a private lake."""
    declared = engine.silver_table(settings, "silver.events")
    return dataclasses.replace(
        declared,
        path=str(tmp_path / "silver"),
        quarantine=str(tmp_path / "quarantine"),
        audit=str(tmp_path / "silver_batches"),
        checkpoints=str(tmp_path / "checkpoints" / "silver"),
        input_paths={label: str(tmp_path / "bronze") for label in declared.input_paths},
    )


def test_warn_drop_and_quarantine_route_rows_in_foreach_batch(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    table = _events(stack, tmp_path)
    good = [_payload(i) for i in range(20)]
    quarantine = [
        _payload(100, country="Germany"),
        _payload(101, event_type="purchase", quantity=5000, revenue=10.0, currency="EUR"),
    ]
    drop = [_payload(200, user_id="test-robot"), _payload(201, user_id="test-robot")]
    warn = [_payload(300, platform="smart_fridge")]
    parse_failure = ["{not json"]
    _write_bronze(spark, table.input_paths["clickstream"], good + quarantine + drop + warn + parse_failure)
    run_id = str(uuid.uuid4())

    report = engine.build_table(spark, stack, table.name, run_id=run_id, table=table).total

    assert report.input_rows == 26
    assert report.dropped == 2
    assert report.quarantined == 3  # two by quality rules, one by the parser
    assert report.applied == 21  # the warn row is kept
    assert engine.check_table(spark, table)["dropped"] == 2  # and the audit balances
    quarantined = {r["event_id"]: r for r in spark.read.format("delta").load(table.quarantine).collect()}
    by_reason = {r["reason"]: r for r in quarantined.values()}
    assert set(by_reason) == {"country_iso3166", "quantity_in_range", "malformed_json"}
    assert by_reason["country_iso3166"]["failed_rules"] == ["country_iso3166"]
    assert by_reason["country_iso3166"]["run_id"] == run_id
    assert by_reason["country_iso3166"]["record"] is not None
    assert by_reason["malformed_json"]["failed_rules"] == ["malformed_json"]
    silver_users = {r["user_id"] for r in spark.read.format("delta").load(table.path).collect()}
    assert "test-robot" not in silver_users and "u-0300" in silver_users

    results = results_for_run(stack, run_id)
    assert set(results["table"]) == {"silver.events"}
    rules = results.set_index("rule")
    assert not rules.loc["platform_known", "success"] and rules.loc["platform_known", "action"] == "warn"
    assert rules.loc["not_internal_test_traffic", "unexpected_count"] == 2
    assert rules.loc["event_id_not_null", "success"]
    assert set(results["engine"]) == {ENGINE}  # the suite compiled into the stream's own Spark plan

    index = build_data_docs(stack)
    assert index.is_file()
    assert "silver.events" in index.read_text()
    pages = list(index.parent.glob("validations/silver/events/**/*.html"))
    assert pages, "a validation page for the silver.events suite"


def test_fail_action_stops_the_stream_after_persisting_results(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    table = _events(stack, tmp_path)
    _write_bronze(spark, table.input_paths["clickstream"], [_payload(i) for i in range(5)], offset_start=-5)
    run_id = str(uuid.uuid4())

    with pytest.raises(QualityError, match="source_offset_non_negative"):
        engine.build_table(spark, stack, table.name, run_id=run_id, table=table)

    results = results_for_run(stack, run_id)
    failed = results[~results["success"]]
    assert list(failed["rule"]) == ["source_offset_non_negative"]
    assert failed.iloc[0]["action"] == "fail" and failed.iloc[0]["unexpected_count"] == 5
    assert spark.read.format("delta").load(table.path).count() == 0
