"""The clickstream's silver table as declared (``catalog/silver/events.yaml``), run by the silver engine on
small inline bronze batches: both payload versions, every bad payload with its reason, re-deliveries, late
events per Kafka partition, the client IP tokenized, and every bronze row accounted for."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.privacy.tokenize import token
from lakehouse.silver import engine
from lakehouse.silver.engine import RunContext, SilverTable
from lakehouse.sources.kafka import BRONZE_KAFKA

pytestmark = pytest.mark.unit

BASE_MS = 1_730_419_200_000  # 2024-11-01T00:00:00Z
NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "unit-test-key"


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
        "client_ip": "203.0.113.9",
        "country": "de",
        "channel": "email",
        "page": "/",
        "currency": "EUR",
    }
    event.update(overrides)
    return json.dumps(event)


V2_PURCHASE = json.dumps(
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


@pytest.fixture
def events(settings: Settings, tmp_path: Path) -> SilverTable:
    """The repository's declaration of silver.events, with its tables in a private lake."""
    declared = engine.silver_table(settings, "silver.events")
    lake = tmp_path / "lake"
    return dataclasses.replace(
        declared,
        path=str(lake / "events"),
        quarantine=str(lake / "events_quarantine"),
        audit=str(lake / "silver_batches"),
        checkpoints=str(tmp_path / "checkpoints"),
        tokenization_key=KEY,
        input_paths={spec.label: str(lake / "clickstream") for spec in declared.build.inputs},
    )


def _bronze(spark: Any, values: list[str], partition: int = 0, first_offset: int = 0) -> Any:
    rows = [
        ("u-1", value, "clickstream", partition, first_offset + index, NOW, NOW, NOW.date(), None, None)
        for index, value in enumerate(values)
    ]
    return spark.createDataFrame(rows, BRONZE_KAFKA)


def _typed(spark: Any, table: SilverTable, bronze: Any) -> list[Any]:
    spec = table.build.inputs[0]
    rows: list[Any] = (
        engine.typed(engine.parse(bronze, spec, table), spec, table).orderBy("source_offset").collect()
    )
    return rows


class Batches:
    """Feeds bronze micro-batches to the engine as ``foreachBatch`` would (suite off unless asked)."""

    def __init__(self, spark: Any, settings: Settings, table: SilverTable, quality: bool = False) -> None:
        self.spark, self.table, self.batch_id = spark, table, 0
        engine.ensure_tables(spark, table)
        self.ctx = RunContext(
            table=table,
            spec=table.build.inputs[0],
            settings=settings,
            run_id="run-1",
            app_id="app-silver-events",
            quality=quality,
        )

    def feed(self, bronze: Any) -> engine.BatchCounts:
        counts = engine.process_batch(bronze, self.batch_id, self.ctx)
        self.batch_id += 1
        return counts

    def silver(self) -> dict[str, Any]:
        return {r["event_id"]: r for r in self.spark.read.format("delta").load(self.table.path).collect()}

    def quarantine(self) -> list[Any]:
        rows: list[Any] = (
            self.spark.read.format("delta").load(self.table.quarantine).orderBy("offset").collect()
        )
        return rows


def test_valid_v1_and_v2_normalise_to_the_same_columns(spark: Any, events: SilverTable) -> None:
    first, second = _typed(spark, events, _bronze(spark, [_v1("a", 10), V2_PURCHASE]))
    assert [first["_reason"], second["_reason"]] == [None, None]
    assert first["event_time"] == datetime(2024, 11, 1, 0, 0, 10)
    assert first["event_date"] == datetime(2024, 11, 1).date()
    assert first["country"] == "DE" and first["app_version"] == "5.2.1" and first["schema_version"] == 1
    assert first["device_type"] == "mobile" and first["client_session_id"] == "s-1"
    assert first["source_partition"] == 0 and first["source_offset"] == 0
    assert second["event_time"] == datetime(2024, 11, 1, 0, 0, 30, 500000)
    assert second["revenue"] == 59.9 and second["currency"] == "EUR" and second["schema_version"] == 2


BROKEN = [
    ('{"schema_version": 1, "event_id": "x"', "malformed_json"),
    ("[1, 2, 3]", "malformed_json"),
    ("", "malformed_json"),
    (_v1("x", schema_version=7), "unsupported_schema_version"),
    (_v1("x", schema_version=None), "unsupported_schema_version"),
    (_v1("", 0), "missing_event_id"),
    (_v1("   ", 0), "missing_event_id"),
    (_v1("x", user_id=None), "missing_user_id"),
    (_v1("x", event_type="hover"), "invalid_event_type"),
    (_v1("x", ts="yesterday"), "invalid_timestamp"),
    (_v1("x", ts=-5), "invalid_timestamp"),
    (_v1("x", ts=5_000_000_000_000), "invalid_timestamp"),  # the year 2128
    (json.dumps({**json.loads(V2_PURCHASE), "event_time": "soon"}), "invalid_timestamp"),
    # a v1 event's time is its epoch ms: an ISO field it should not carry does not stand in for it
    (_v1("x", ts=None, event_time="2024-11-01T00:00:00Z"), "invalid_timestamp"),
    (_v1("x", event_type="purchase", revenue=-3.0), "negative_revenue"),
    (_v1("x", event_type="purchase"), "missing_revenue"),
    (_v1("x", event_type="purchase", revenue=3.0, currency=None), "missing_currency"),
    # a value of another type than its field declares would read as null: it is held, not lost
    (_v1("x", price="forty-two"), "invalid_value:price"),
    (_v1("x", quantity=1.5), "invalid_value:quantity"),
    (_v1("x", consent={"analytics": "yes"}), "invalid_value:consent.analytics"),
]


@pytest.mark.parametrize(("payload", "reason"), BROKEN)
def test_each_broken_rule_has_its_reason(spark: Any, events: SilverTable, payload: str, reason: str) -> None:
    assert [r["_reason"] for r in _typed(spark, events, _bronze(spark, [payload]))] == [reason]


def test_the_allowed_types_and_versions_are_the_declaration_s(events: SilverTable) -> None:
    rules = {rule.reason: rule.when for rule in events.build.reject}
    assert list(rules)[:5] == [
        "unsupported_schema_version",
        "missing_event_id",
        "missing_user_id",
        "invalid_event_type",
        "invalid_timestamp",
    ]
    assert "(1, 2)" in rules["unsupported_schema_version"] and "'checkout'" in rules["invalid_event_type"]


def test_every_bad_payload_lands_in_the_quarantine_with_its_reason(
    spark: Any, settings: Settings, events: SilverTable
) -> None:
    batches = Batches(spark, settings, events)
    counts = batches.feed(_bronze(spark, [payload for payload, _ in BROKEN] + [_v1("ok")]))
    assert (counts.input_rows, counts.applied, counts.quarantined) == (len(BROKEN) + 1, 1, len(BROKEN))
    assert list(batches.silver()) == ["ok"]
    quarantined = batches.quarantine()
    assert [r["reason"] for r in quarantined] == [reason for _, reason in BROKEN]
    assert [r["record"] for r in quarantined] == [payload for payload, _ in BROKEN]  # kept whole
    assert [r["failed_rules"] for r in quarantined] == [[reason] for _, reason in BROKEN]
    assert {r["partition"] for r in quarantined} == {0} and quarantined[3]["event_id"] == "x"
    assert {r["run_id"] for r in quarantined} == {"run-1"}
    assert engine.check_table(spark, events)["quarantined"] == len(BROKEN)


def test_bytes_that_are_not_utf8_are_kept_exact_in_bronze_and_quarantined_in_silver(
    spark: Any, settings: Settings, events: SilverTable, tmp_path: Path
) -> None:
    """Kafka delivers bytes: bronze keeps them exact beside a text every reader takes (Arrow, DuckDB)."""
    import duckdb
    from deltalake import DeltaTable

    from lakehouse.sources.kafka import to_bronze

    good = _v1("ok").encode()
    bad = [
        _v1("latin1", page="/caf\u00e9").replace("\\u00e9", "\xe9").encode("latin-1"),  # é as one byte
        b"\xff\xfe" + _v1("bom").encode(),
        b'{"event_id": "\xc3\x28"}',  # a 2-byte sequence cut short
    ]
    records = spark.createDataFrame(
        [(b"u-\x80", value, "clickstream", 0, offset, NOW) for offset, value in enumerate([good, *bad])],
        "key binary, value binary, topic string, partition int, offset long, timestamp timestamp",
    )
    path = str(tmp_path / "bronze")
    to_bronze(records).write.format("delta").save(path)
    arrow = DeltaTable(path).to_pyarrow_table().sort_by("offset")  # Arrow validates UTF-8: it would raise
    rows = arrow.to_pylist()
    assert [r["value_bytes"] for r in rows] == [None, *bad]  # exact, and only where the text is not
    assert rows[0]["value"].encode() == good and all("\ufffd" in r["value"] for r in rows[1:])
    assert {r["key_bytes"] for r in rows} == {b"u-\x80"} and {r["key"] for r in rows} == {"u-\ufffd"}
    assert duckdb.sql("select count(*), count(value_bytes) from arrow").fetchall() == [(4, 3)]

    batches = Batches(spark, settings, events)
    counts = batches.feed(spark.read.format("delta").load(path))
    assert (counts.input_rows, counts.applied, counts.quarantined) == (4, 1, 3)
    assert list(batches.silver()) == ["ok"]
    quarantined = batches.quarantine()
    assert [r["reason"] for r in quarantined] == ["invalid_utf8"] * 3
    assert [r["record"] for r in quarantined] == [r["value"] for r in rows[1:]]


def test_duplicates_and_late_events(spark: Any, settings: Settings, events: SilverTable) -> None:
    batches = Batches(spark, settings, events)
    batches.feed(_bronze(spark, [_v1("known", 0)], first_offset=100))  # already in silver: batch 0
    counts = batches.feed(
        _bronze(
            spark,
            [
                _v1("a", 0),
                _v1("b", 3 * 3600),  # the stream moves three hours on
                _v1("a", 0),  # re-delivery of a: a duplicate, even though it is old
                _v1("c", 3 * 3600 - 1800),  # 30 minutes late: within the 1-hour watermark
                _v1("d", 0),  # 3 hours late: beyond the watermark
                _v1("known", 3 * 3600),  # in silver from an earlier batch, at another time: a conflict
                "not json",
            ],
        )
    )
    assert (counts.input_rows, counts.applied, counts.duplicates, counts.quarantined, counts.late) == (
        7,
        3,
        1,
        3,
        1,
    )
    silver = batches.silver()
    assert sorted(silver) == ["a", "b", "c", "known"]
    assert silver["a"]["source_offset"] == 0, "the first copy of a re-delivered event is kept"
    assert silver["known"]["source_offset"] == 100, "an event already in silver is not replaced"
    assert [(r["offset"], r["reason"], r["event_id"]) for r in batches.quarantine()] == [
        (4, "late_beyond_watermark", "d"),
        (5, "conflicting_duplicate", "known"),
        (6, "malformed_json", None),
    ]
    assert engine.check_table(spark, events) == {
        "input_rows": 8,
        "applied": 4,
        "quarantined": 3,
        "duplicates": 1,
        "late": 1,
        "dropped": 0,
        "orphans": 0,
    }


def test_lateness_is_judged_per_kafka_partition(spark: Any, settings: Settings, events: SilverTable) -> None:
    batches = Batches(spark, settings, events)
    ahead = _bronze(spark, [_v1("p0-new", 3 * 3600), _v1("p0-old", 0)], partition=0)
    behind = _bronze(spark, [_v1("p1-old", 0)], partition=1, first_offset=5)  # its own partition is not ahead
    counts = batches.feed(ahead.unionByName(behind))
    assert (counts.applied, counts.late) == (2, 1)
    assert sorted(batches.silver()) == ["p0-new", "p1-old"]
    assert [(r["event_id"], r["reason"]) for r in batches.quarantine()] == [
        ("p0-old", "late_beyond_watermark")
    ]


def test_watermark_carries_over_from_silver(spark: Any, settings: Settings, events: SilverTable) -> None:
    batches = Batches(spark, settings, events)
    batches.feed(_bronze(spark, [_v1("newest", 5 * 3600)]))  # silver's newest event: 05:00
    counts = batches.feed(_bronze(spark, [_v1("e", 3 * 3600)], first_offset=1))  # 03:00, a later batch
    assert (counts.applied, counts.late) == (0, 1)
    assert [(r["event_id"], r["reason"]) for r in batches.quarantine()] == [("e", "late_beyond_watermark")]


def test_client_ip_reaches_silver_only_as_its_token(
    spark: Any, settings: Settings, events: SilverTable
) -> None:
    assert events.pii_tokenized() == ["client_ip"]  # the contract's PII treatment, not code
    batches = Batches(spark, settings, events)
    batches.feed(_bronze(spark, [_v1("a", client_ip="2a02:1:2:3:4::5"), _v1("b", client_ip=None)]))
    silver = batches.silver()
    assert silver["a"]["client_ip"] == token("2a02:1:2:3:4::5", KEY) != "2a02:1:2:3:4::5"
    assert silver["b"]["client_ip"] is None


def test_the_suite_runs_on_the_new_events(
    spark: Any, settings: Settings, events: SilverTable, tmp_path: Path
) -> None:
    private = settings.model_copy(
        update={
            "workspace": tmp_path / "ws",
            "quality": settings.quality.model_copy(update={"data_docs": False}),
        }
    )
    batches = Batches(spark, private, events, quality=True)
    counts = batches.feed(
        _bronze(spark, [_v1("a"), _v1("robot", user_id="test-robot"), _v1("iso", country="Germany")])
    )
    assert (counts.applied, counts.dropped, counts.quarantined) == (1, 1, 1)
    assert [(r["event_id"], r["reason"]) for r in batches.quarantine()] == [("iso", "country_iso3166")]


def test_a_bronze_table_without_its_columns_is_a_clear_error(
    spark: Any, settings: Settings, events: SilverTable
) -> None:
    spec = events.build.inputs[0]
    with pytest.raises(DataError, match="no column 'value'"):
        engine.parse(spark.createDataFrame([("x",)], "payload string"), spec, events)
    spark.createDataFrame([("{}",)], "value string").write.format("delta").save(
        events.input_paths["clickstream"]
    )
    with pytest.raises(ConfigError, match=r"catalog/silver/events\.yaml: input clickstream"):
        engine.check_declaration(spark, events)


def test_an_audit_that_does_not_balance_is_an_error(
    spark: Any, settings: Settings, events: SilverTable
) -> None:
    batches = Batches(spark, settings, events)
    batches.feed(_bronze(spark, [_v1("a"), _v1("a"), "{"]))
    assert engine.check_table(spark, events)["input_rows"] == 3
    lost = (events.name, "clickstream", "run-x", 9, 1, 0, 0, 0, 0, 0, 0, NOW)  # a row that went nowhere
    spark.createDataFrame([lost], engine.AUDIT).write.format("delta").mode("append").save(events.audit)
    with pytest.raises(DataError, match="input rows 4 != applied"):
        engine.check_table(spark, events)
