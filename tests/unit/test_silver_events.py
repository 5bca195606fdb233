"""Silver rules on small inline bronze batches: every bad payload gets its reason, nothing is dropped."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from lakehouse.clickstream import BRONZE_EVENTS
from lakehouse.errors import DataError
from lakehouse.silver.events import Reconciliation, classify, mark_duplicates_and_late

pytestmark = pytest.mark.unit

BASE_MS = 1_730_419_200_000  # 2024-11-01T00:00:00Z
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _v1(event_id: str, offset_s: int = 0, **overrides: Any) -> str:
    event = {
        "schema_version": 1,
        "event_id": event_id,
        "event_type": "page_view",
        "ts": BASE_MS + offset_s * 1000,
        "user_id": "u-1",
        "session_id": "s-1",
        "platform": "ios",
        "device": {"type": "mobile", "os": "iOS", "app_version": "5.2.1"},
        "country": "de",
        "channel": "email",
        "page": "/",
        "currency": "EUR",
    }
    event.update(overrides)
    return json.dumps(event)


def _bronze(spark: Any, values: list[str], partition: int = 0) -> Any:
    rows = [
        ("u-1", value, "clickstream", partition, offset, NOW, NOW, NOW.date())
        for offset, value in enumerate(values)
    ]
    return spark.createDataFrame(rows, BRONZE_EVENTS)


def _reasons(spark: Any, values: list[str]) -> list[str | None]:
    rows = classify(_bronze(spark, values)).orderBy("source_offset").collect()
    return [row["reason"] for row in rows]


def test_valid_v1_and_v2_normalise_to_the_same_columns(spark: Any) -> None:
    v2 = json.dumps(
        {
            "schema_version": 2,
            "event_id": "b",
            "event_type": "purchase",
            "event_time": "2024-11-01T00:00:30.500Z",
            "user_id": "u-1",
            "country": "DE",
            "amount": {"value": 59.9, "currency": "eur"},
            "order_id": "o-1",
            "consent": {"analytics": True},
        }
    )
    rows = classify(_bronze(spark, [_v1("a", 10), v2])).orderBy("source_offset").collect()
    assert [r["reason"] for r in rows] == [None, None]
    first, second = rows
    assert first["event_time"] == datetime(2024, 11, 1, 0, 0, 10)
    assert first["country"] == "DE" and first["app_version"] == "5.2.1" and first["schema_version"] == 1
    assert second["event_time"] == datetime(2024, 11, 1, 0, 0, 30, 500000)
    assert second["revenue"] == 59.9 and second["currency"] == "EUR" and second["schema_version"] == 2


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"schema_version": 1, "event_id": "x"', "malformed_json"),
        ("[1, 2, 3]", "malformed_json"),
        ("", "malformed_json"),
        (_v1("x", schema_version=7), "unsupported_schema_version"),
        (_v1("", 0), "missing_event_id"),
        (_v1("x", user_id=None), "missing_user_id"),
        (_v1("x", event_type="hover"), "invalid_event_type"),
        (_v1("x", ts="yesterday"), "invalid_timestamp"),
        (_v1("x", ts=-5), "invalid_timestamp"),
        (_v1("x", event_type="purchase", revenue=-3.0), "negative_revenue"),
        (_v1("x", event_type="purchase"), "missing_revenue"),
        (_v1("x", event_type="purchase", revenue=3.0, currency=None), "missing_currency"),
    ],
)
def test_each_broken_rule_has_its_reason(spark: Any, payload: str, reason: str) -> None:
    assert _reasons(spark, [payload]) == [reason]


def test_duplicates_and_late_events(spark: Any) -> None:
    values = [
        _v1("a", 0),
        _v1("b", 3 * 3600),  # the stream moves three hours on
        _v1("a", 0),  # re-delivery of a: a duplicate, even though it is old
        _v1("c", 3 * 3600 - 1800),  # 30 minutes late: within the 1-hour watermark
        _v1("d", 0),  # 3 hours late: beyond the watermark
        _v1("known", 3 * 3600),  # already in silver from an earlier batch
        "not json",
    ]
    known = spark.createDataFrame([("known",)], "event_id string")
    marked = mark_duplicates_and_late(classify(_bronze(spark, values)), known, None, "1 hour")
    rows = {r["source_offset"]: (r["outcome"], r["reason"]) for r in marked.collect()}
    assert rows == {
        0: ("insert", None),
        1: ("insert", None),
        2: ("duplicate", None),
        3: ("insert", None),
        4: ("quarantine", "late_beyond_watermark"),
        5: ("duplicate", None),
        6: ("quarantine", "malformed_json"),
    }


def test_watermark_carries_over_from_silver(spark: Any) -> None:
    newest_in_silver = datetime(2024, 11, 1, 5, 0, 0)
    marked = mark_duplicates_and_late(
        classify(_bronze(spark, [_v1("e", 3 * 3600)])),
        spark.createDataFrame([], "event_id string"),
        newest_in_silver,
        "1 hour",
    )
    assert [(r["outcome"], r["reason"]) for r in marked.collect()] == [
        ("quarantine", "late_beyond_watermark")
    ]


def test_classify_needs_bronze_columns(spark: Any) -> None:
    with pytest.raises(DataError, match="missing"):
        classify(spark.createDataFrame([("x",)], "value string"))


def test_reconciliation_check() -> None:
    assert Reconciliation(10, 6, 3, 1).check().balanced
    with pytest.raises(DataError, match="do not reconcile"):
        Reconciliation(10, 6, 3, 0).check()
