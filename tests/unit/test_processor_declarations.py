"""Declared topic processors: the contract (lakehouse.contracts.processor) and one record at a time
(lakehouse.streaming.processors.process_record); the broker run is tests/integration/test_processors.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from lakehouse.config import Settings
from lakehouse.contracts.processor import ProcessorSpec
from lakehouse.errors import ConfigError
from lakehouse.sources.registry import KafkaSource, load_registry
from lakehouse.streaming.processors import ProcessorConfig, declared_processors, process_record

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def clickstream(settings: Settings) -> ProcessorSpec:
    """The demo's declaration in the committed sources.yaml."""
    source = load_registry(settings).get("clickstream")
    assert isinstance(source, KafkaSource) and source.processor is not None
    return source.processor


def _event(**fields: Any) -> bytes:
    base: dict[str, Any] = {"schema_version": 1, "event_id": "e1", "event_type": "search", "country": "DE"}
    return json.dumps({**base, **fields}).encode()


@pytest.mark.parametrize(
    ("platform", "device", "expected"),
    [
        ("ios", {"type": "mobile", "os": "iOS"}, "mobile_app"),
        ("android", {"type": "tablet", "os": "Android"}, "tablet_app"),
        ("ios", {"type": "mobile", "os": "iPadOS"}, "tablet_app"),
        ("web", {"type": "desktop", "os": "Windows"}, "desktop_web"),
        ("web", {"type": "mobile", "os": "Android"}, "mobile_web"),
        ("web", {"type": None, "os": "iOS"}, "mobile_web"),
        ("web", {"type": "tablet", "os": "Android"}, "tablet_web"),
        ("web", {"type": "console", "os": "PlayStation"}, "unknown"),
        ("tv", {"type": "desktop", "os": "Windows"}, "unknown"),
        (None, None, "unknown"),
    ],
)
def test_the_demo_declaration_classifies_devices(
    clickstream: ProcessorSpec, platform: str | None, device: dict[str, Any] | None, expected: str
) -> None:
    record = process_record(clickstream, _event(platform=platform, device=device)).record
    assert record is not None and record["device_class"] == expected


def test_regions_are_looked_up_case_insensitively_with_a_default(clickstream: ProcessorSpec) -> None:
    regions = {
        country: (process_record(clickstream, _event(country=country)).record or {}).get("region")
        for country in ("de", " US ", "BR", "JP", "ZZ", None, 49)
    }
    assert regions == {
        "de": "emea",
        " US ": "north_america",
        "BR": "latam",
        "JP": "apac",
        "ZZ": "other",
        None: "other",
        49: "other",
    }


def test_the_processing_time_is_stamped(clickstream: ProcessorSpec) -> None:
    record = process_record(clickstream, _event(), now_ms=1_700_000_000_000).record
    assert record is not None and record["enriched_at"] == 1_700_000_000_000


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "empty_payload"),
        (b"", "empty_payload"),
        (b"{not json", "malformed_json"),
        (b"\xff\xfe{\x00", "malformed_json"),  # not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # deeper than the parser goes
        (b'"just text"', "not_an_object"),
        (b"[1, 2]", "not_an_object"),
        (_event(schema_version=9), "unsupported_schema_version"),
        (_event(schema_version=True), "unsupported_schema_version"),  # true is not version 1
        (_event(schema_version="1"), "unsupported_schema_version"),
        (_event(event_id="   "), "missing_event_id"),
        (_event(event_id=None), "missing_event_id"),
        (_event(event_type="teleport"), "invalid_event_type"),
        (_event(event_type={"nested": "page_view"}), "invalid_event_type"),
    ],
)
def test_bad_records_are_dead_lettered_with_the_first_broken_rule(
    clickstream: ProcessorSpec, payload: bytes | None, reason: str
) -> None:
    outcome = process_record(clickstream, payload)
    assert (outcome.record, outcome.reason) == (None, reason)


def test_a_huge_record_passes_whole(clickstream: ProcessorSpec) -> None:
    record = process_record(clickstream, _event(search_query="x" * 900_000)).record
    assert record is not None and len(record["search_query"]) == 900_000 and record["region"] == "emea"


def test_another_domain_is_declared_without_code() -> None:
    spec = ProcessorSpec.model_validate(
        {
            "topic": "shipments.enriched",
            "dead_letter_topic": "shipments.dlq",
            "stamp": None,
            "require": [
                {"reason": "missing_shipment_id", "field": "shipment_id", "present": True},
                {"reason": "unknown_carrier", "field": "carrier.code", "in": ["dhl", "ups"]},
            ],
            "derive": {
                "speed": {
                    "default": "standard",
                    "cases": [
                        {"value": "express", "when": [{"field": "service", "in": ["next_day"]}]},
                        {"value": "freight", "when": [{"any": [{"field": "weight_kg", "above": 1000}]}]},
                    ],
                }
            },
        }
    )
    heavy = process_record(spec, b'{"shipment_id": "s1", "carrier": {"code": "DHL"}, "weight_kg": 1200.5}')
    assert heavy.record == {
        "shipment_id": "s1",
        "carrier": {"code": "DHL"},
        "weight_kg": 1200.5,
        "speed": "freight",
    }
    fast = process_record(spec, b'{"shipment_id": "s2", "carrier": {"code": "ups"}, "service": "NEXT_DAY"}')
    assert fast.record is not None and fast.record["speed"] == "express"
    text_weight = process_record(
        spec, b'{"shipment_id": "s3", "carrier": {"code": "ups"}, "weight_kg": "9999"}'
    )
    assert text_weight.record is not None and text_weight.record["speed"] == "standard"  # "9999" is no number
    assert process_record(spec, b'{"shipment_id": "s4", "carrier": "dhl"}').reason == "unknown_carrier"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"topic": "a", "dead_letter_topic": "a"}, "must differ"),
        ({"topic": "a", "dead_letter_topic": "b", "require": [{"reason": "r", "field": "x"}]}, "exactly one"),
        (
            {
                "topic": "a",
                "dead_letter_topic": "b",
                "require": [{"reason": "Bad Reason", "field": "x", "in": [1]}],
            },
            "lower_snake_case",
        ),
        ({"topic": "a", "dead_letter_topic": "b", "derive": {"r": {"lookup": "country"}}}, "needs map"),
        ({"topic": "a", "dead_letter_topic": "b", "derive": {"r": {"default": "x"}}}, "either lookup"),
        (
            {
                "topic": "a",
                "dead_letter_topic": "b",
                "derive": {"bad name": {"lookup": "c", "map": {"a": 1}}},
            },
            "plain",
        ),
        (
            {
                "topic": "a",
                "dead_letter_topic": "b",
                "require": [{"reason": "r", "field": "a..b", "in": [1]}],
            },
            "dotted",
        ),
        ({"topic": "a", "dead_letter_topic": "b", "unknown": 1}, "Extra inputs"),
    ],
)
def test_a_bad_declaration_says_what_is_wrong(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ProcessorSpec.model_validate(section)


def test_a_bad_processor_in_sources_yaml_names_the_entry(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n  orders:\n    {kind: kafka, topic: orders, bronze: orders,\n"
        "     processor: {topic: orders, dead_letter_topic: orders}}\n"
    )
    with pytest.raises(ConfigError, match=r"sources\.orders\.kafka\.processor.*must differ"):
        load_registry(settings, path)


def test_a_source_without_a_processor_is_refused_clearly(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  orders: {kind: kafka, topic: orders, bronze: orders}\n")
    registry = load_registry(settings, path)
    assert declared_processors(registry) == {}
    source = registry.get("orders")
    assert isinstance(source, KafkaSource)
    with pytest.raises(ConfigError, match="declares no processor"):
        ProcessorConfig.for_source(settings, source)


def test_the_cli_lists_the_declared_processors_and_names_a_missing_one() -> None:
    from lakehouse.cli import main

    runner = CliRunner()
    listed = runner.invoke(main, ["--env", "test", "processor", "list"])
    assert listed.exit_code == 0, listed.output
    assert "clickstream: clickstream → clickstream.enriched (dead letters: clickstream.dlq)" in listed.output
    missing = runner.invoke(main, ["--env", "test", "processor", "run", "fx_rates"])
    assert missing.exit_code != 0 and "not a kafka source" in missing.output
