"""The fuzz corpus (lakehouse.simulate.fuzz): seeded, every category, and — through bronze's Kafka shape and
the silver engine on classic Spark — every input accounted for as its category expects. The same corpus
goes through the real broker in ``tests/integration/test_fuzz_kafka.py`` (small) and ``make fuzz`` (full)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fuzz_cases import clickstream_corpus, events_in, expectations, land_in_bronze, outcomes, unexpected
from lakehouse.config import Settings
from lakehouse.contracts.payload import PayloadSpec
from lakehouse.errors import ConfigError
from lakehouse.quality import results_for_run
from lakehouse.silver import engine
from lakehouse.simulate.fuzz import CATEGORIES, corpus, summary

pytestmark = pytest.mark.unit

SPEC = PayloadSpec.model_validate(
    {
        "key": ["id"],
        "event_time": "at",
        "fields": {"id": {}, "at": {"path": "meta.at", "type": "timestamp"}, "n": {"type": "double"}},
    }
)
VALID = [{"id": "a", "meta": {"at": "2026-01-01T00:00:00Z"}, "n": 1.5, "note": "x"}]


def test_a_corpus_is_seeded_and_covers_at_least_fifteen_categories() -> None:
    assert len(CATEGORIES) >= 15
    first = corpus(VALID, SPEC, count=len(CATEGORIES) * 3, seed=11)
    again = corpus(VALID, SPEC, count=len(CATEGORIES) * 3, seed=11)
    other = corpus(VALID, SPEC, count=len(CATEGORIES) * 3, seed=12)
    assert [(c.category, c.key, c.value) for c in first] == [(c.category, c.key, c.value) for c in again]
    assert [c.value for c in first] != [c.value for c in other]
    assert summary(first) == dict.fromkeys(sorted(CATEGORIES), 3)
    by = {c.category: c for c in first}
    assert json.loads(by["valid"].value)["meta"]["at"].startswith("2026-01-01T00:0")  # the corpus clock
    assert by["empty"].value == b""
    with pytest.raises(UnicodeDecodeError):
        by["invalid_utf8"].value.decode()
    assert len(by["huge_value"].value) > 900_000 and by["deep_nesting"].value.count(b"[") >= 5_000
    valid_ids = {json.loads(c.value)["id"] for c in first if c.category == "valid"}
    assert len(valid_ids) == 3  # each valid record has its own key


def test_bad_fuzz_requests_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="at least one valid record"):
        corpus([], SPEC, count=3)
    with pytest.raises(ConfigError, match="unknown fuzz categories"):
        corpus(VALID, SPEC, count=3, categories=["valid", "gremlins"])
    with pytest.raises(ConfigError, match="at least one input"):
        corpus(VALID, SPEC, count=0)


def test_every_fuzz_input_lands_as_its_category_expects(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    """Six inputs of each category, as the Kafka ingest lands them, built into silver.events."""
    from deltalake import DeltaTable

    cases = clickstream_corpus(settings, per_category=6)
    bronze = str(tmp_path / "bronze")
    coordinates = land_in_bronze(spark, cases, bronze)
    table = events_in(settings, tmp_path, bronze)
    run_id = f"fuzz-{uuid.uuid4()}"
    total = engine.build_table(spark, settings, table.name, table=table, run_id=run_id).total
    totals = engine.check_table(
        spark, table
    )  # raises unless input = applied + quarantined + duplicates + dropped
    assert totals["input_rows"] == total.input_rows == len(cases)

    found = outcomes(spark, table, cases, coordinates)
    assert unexpected(cases, found, expectations(settings, "clickstream", table)) == {}
    residual = sum(1 for o in found.values() if o == "duplicate")
    assert residual == total.duplicates + total.dropped  # nothing outside silver and quarantine unaccounted
    # Every reader copes with what arrived: Arrow (delta-rs) reads bronze and the quarantine whole.
    assert DeltaTable(bronze).to_pyarrow_table().num_rows == len(cases)
    assert DeltaTable(table.quarantine).to_pyarrow_table().num_rows == total.quarantined
    # The repeated ids (exact and conflicting duplicates) never reach silver: the suite's uniqueness rule,
    # judged by the dedupe's rank rather than a second window, passes on every batch and says how it judged.
    results = results_for_run(settings, run_id)
    unique = results[results["rule"] == "event_id_unique"]
    assert len(unique) >= 1 and unique["success"].all() and (unique["unexpected_count"] == 0).all()
    assert all("rank within the key" in json.loads(d)["judged_by"] for d in unique["details"])


MQTT_EXPECT = {
    "valid": {"ok"},
    "extra_fields": {"ok"},
    "exact_duplicate": {"ok"},  # the bridge delivers at least once; silver removes duplicates
    "conflicting_duplicate": {"ok"},
    "not_json": {"not_json"},
    "truncated_json": {"not_json"},
    "empty": {"not_json"},
    "invalid_utf8": {"not_json"},
    "deep_nesting": {"not_json"},
    "not_an_object": {"not_an_object"},
    "missing_key": {"missing_device_id"},
    "null_values": {"missing_device_id"},
}


def test_the_bridge_normalises_or_dead_letters_every_fuzz_input() -> None:
    """The MQTT bridge's normaliser on a corpus broken from the simulated fleet by the iot_telemetry
    declaration: a record or a dead letter with its reason, never an exception that would stop the bridge."""
    from lakehouse.config import load_settings
    from lakehouse.simulate.devices import simulate_fleet
    from lakehouse.sources.mqtt import InvalidMessage, Normalizer, dead_letter

    normalizer = Normalizer.from_registry(load_settings(), "iot_telemetry")
    valid = [json.loads(m.payload) for m in simulate_fleet(5, 200, seed=3).messages if m.kind == "valid"]
    cases = corpus(valid, normalizer.payload, count=len(CATEGORIES) * 12, seed=5, max_huge=4)
    now = datetime.now(UTC)
    seen: dict[str, set[str]] = {}
    for case in cases:
        try:
            device = json.loads(case.value)["device_id"]
        except Exception:
            device = "dev-0001"
        topic = f"devices/{device}/telemetry"
        try:
            json.dumps(normalizer.normalize(topic, case.value, now))
            outcome = "ok"
        except InvalidMessage as error:
            json.dumps(dead_letter(topic, case.value, now, error, normalizer))  # the DLQ record, bytes kept
            normalizer.dead_letter_key(topic, case.value)
            outcome = error.reason
        seen.setdefault(case.category, set()).add(outcome)
    wrong = {c: seen[c] - allowed for c, allowed in MQTT_EXPECT.items() if seen[c] - allowed}
    assert wrong == {}
    assert "ok" in seen["hostile_text"] and "ok" in seen["huge_value"]  # odd text is data, not an error
