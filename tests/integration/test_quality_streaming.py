"""Quality actions inside the real silver events stream (foreachBatch on Spark Connect), end to end."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lakehouse.clickstream import BRONZE_EVENTS
from lakehouse.config import Settings
from lakehouse.quality import QualityError, build_data_docs, results_for_run
from lakehouse.silver.events import CleanTables, clean_events

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
        (None, value, "clickstream", 0, offset_start + i, now, now, now.date())
        for i, value in enumerate(payloads)
    ]
    spark.createDataFrame(rows, BRONZE_EVENTS).write.format("delta").mode("append").save(path)


def _tables(tmp_path: Path) -> CleanTables:
    return CleanTables(
        bronze=str(tmp_path / "bronze"),
        silver=str(tmp_path / "silver"),
        quarantine=str(tmp_path / "quarantine"),
        reconciliation=str(tmp_path / "reconciliation"),
        checkpoint=str(tmp_path / "checkpoints" / "silver"),
    )


def test_warn_drop_and_quarantine_route_rows_in_foreach_batch(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    tables = _tables(tmp_path)
    good = [_payload(i) for i in range(20)]
    quarantine = [
        _payload(100, country="Germany"),
        _payload(101, event_type="purchase", quantity=5000, revenue=10.0, currency="EUR"),
    ]
    drop = [_payload(200, user_id="test-robot"), _payload(201, user_id="test-robot")]
    warn = [_payload(300, platform="smart_fridge")]
    parse_failure = ["{not json"]
    _write_bronze(spark, tables.bronze, good + quarantine + drop + warn + parse_failure)
    run_id = str(uuid.uuid4())

    report = clean_events(spark, stack, tables=tables, run_id=run_id)

    assert report.bronze_rows == 26
    assert report.dropped == 2
    assert report.quarantined == 3  # two by quality rules, one by the parser
    assert report.inserted == 21  # the warn row is kept
    assert report.totals.check().balanced and report.totals.dropped == 2
    quarantined = {r["event_id"]: r for r in spark.read.format("delta").load(tables.quarantine).collect()}
    by_reason = {r["reason"]: r for r in quarantined.values()}
    assert set(by_reason) == {"country_iso3166", "quantity_in_range", "malformed_json"}
    assert by_reason["country_iso3166"]["failed_rules"] == ["country_iso3166"]
    assert by_reason["country_iso3166"]["run_id"] == run_id
    assert by_reason["country_iso3166"]["value"] is not None
    assert by_reason["malformed_json"]["failed_rules"] == ["malformed_json"]
    silver_users = {r["user_id"] for r in spark.read.format("delta").load(tables.silver).collect()}
    assert "test-robot" not in silver_users and "u-0300" in silver_users

    results = results_for_run(stack, run_id)
    assert set(results["table"]) == {"silver.events"}
    rules = results.set_index("rule")
    assert not rules.loc["platform_known", "success"] and rules.loc["platform_known", "action"] == "warn"
    assert rules.loc["not_internal_test_traffic", "unexpected_count"] == 2
    assert rules.loc["event_id_not_null", "success"]
    assert set(results["engine"]) == {"pandas"}

    index = build_data_docs(stack)
    assert index.is_file()
    assert "silver.events" in index.read_text()
    pages = list(index.parent.glob("validations/silver/events/**/*.html"))
    assert pages, "a validation page for the silver.events suite"


def test_fail_action_stops_the_stream_after_persisting_results(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    tables = _tables(tmp_path)
    _write_bronze(spark, tables.bronze, [_payload(i) for i in range(5)], offset_start=-5)
    run_id = str(uuid.uuid4())

    with pytest.raises(QualityError, match="source_offset_non_negative"):
        clean_events(spark, stack, tables=tables, run_id=run_id)

    results = results_for_run(stack, run_id)
    failed = results[~results["success"]]
    assert list(failed["rule"]) == ["source_offset_non_negative"]
    assert failed.iloc[0]["action"] == "fail" and failed.iloc[0]["unexpected_count"] == 5
    assert spark.read.format("delta").load(tables.silver).count() == 0
