"""`lakehouse source add`: a sample of a new source becomes a registry entry the registry's models accept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from lakehouse.cli import main
from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.sources import discover
from lakehouse.sources.registry import HttpSource, MqttSource, PostgresTableSource, load_registry

pytestmark = pytest.mark.unit

READINGS = [
    ("device", "text"),
    ("reading_time", "timestamp"),
    ("value", "float8"),
    ("ingested_at", "timestamptz"),
]
PENGUINS = [("species", "text"), ("sample_number", "int4"), ("island", "text"), ("date_egg", "date")]


def test_a_table_with_a_change_time_is_proposed_incremental_on_it() -> None:
    proposal = discover.propose_postgres(
        "readings", "field.readings", READINGS, ["device", "reading_time"], connection="${OWN_DB_URL}"
    )
    assert proposal.entry["mode"] == "incremental"
    assert (proposal.entry["watermark"], proposal.entry["key"]) == ("ingested_at", ["device", "reading_time"])
    assert proposal.entry["connection"] == "${OWN_DB_URL}"  # kept as written: the secret stays outside
    PostgresTableSource.model_validate(
        {**proposal.entry, "connection": "postgresql://u:p@localhost:5432/own"}
    )


def test_a_table_without_a_version_column_is_proposed_as_snapshots() -> None:
    proposal = discover.propose_postgres("penguins", "field.penguins", PENGUINS, ["species", "sample_number"])
    assert proposal.entry["mode"] == "snapshot" and "watermark" not in proposal.entry
    assert any("snapshots" in note for note in proposal.notes)
    PostgresTableSource.model_validate(proposal.entry)
    # A date column is no watermark unless its name says it tracks changes; a text "version" is no watermark.
    texty = discover.propose_postgres("t", "t", [("id", "int4"), ("version", "text")], ["id"])
    assert texty.entry["mode"] == "snapshot"
    named = discover.propose_postgres("t", "t", [("id", "int4"), ("version", "int8")], ["id"])
    assert named.entry["watermark"] == "version"


def test_a_postgres_table_without_a_key_or_with_a_wrong_column_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"no primary key.*--key"):
        discover.propose_postgres("t", "logs", [("line", "text")], [])
    with pytest.raises(ConfigError, match=r"no column\(s\) \['updated'\]"):
        discover.propose_postgres("t", "logs", PENGUINS, ["species"], watermark="updated")
    with pytest.raises(ConfigError, match="lower_snake_case"):
        discover.propose_postgres("Penguins", "p", PENGUINS, ["species"])


NESTED_PAGE: dict[str, Any] = {
    "meta": {"paging": {"next": "c2"}, "count": 2},
    "result": {
        "items": [
            {
                "ticket_id": "t1",
                "status": "open",
                "customer": {"email": "a@example.org", "tier": 2},
                "tags": ["x"],
            },
            {
                "ticket_id": "t2",
                "status": "closed",
                "customer": {"email": "b@example.org", "tier": 1},
                "tags": [],
            },
        ]
    },
}


def test_one_page_of_nested_json_says_where_the_records_and_the_cursor_are() -> None:
    assert discover.find_records(NESTED_PAGE)[0] == ("result", "items")
    assert discover.find_cursor(NESTED_PAGE) == ("meta", "paging", "next")
    proposal = discover.propose_http("tickets", "http://127.0.0.1:9/v1/tickets", NESTED_PAGE, page_size=50)
    pagination = proposal.entry["pagination"]
    assert pagination == {
        "style": "cursor",
        "records_path": "result.items",
        "next_cursor_path": "meta.paging.next",
        "cursor_param": "cursor",
        "page_size": 50,
        "size_param": "page_size",
    }
    assert proposal.entry["key"] == ["ticket_id"]
    assert proposal.entry["contract"] == {"ticket_id": "string", "status": "string"}  # nested: silver's
    assert proposal.fields["customer.tier"] == "long"
    source = HttpSource.model_validate(proposal.entry)
    assert source.pagination.records_location == ("result", "items")
    assert source.pagination.cursor_location == ("meta", "paging", "next")


def test_a_page_without_records_or_a_wrong_key_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no list of records"):
        discover.propose_http("x", "http://h/x", {"status": "ok"})
    with pytest.raises(ConfigError, match="nothing is a list at records_path 'data'"):
        discover.propose_http("x", "http://h/x", NESTED_PAGE, records_path="data")
    with pytest.raises(ConfigError, match=r"key \['id'\] is not a field"):
        discover.propose_http("x", "http://h/x", NESTED_PAGE, key=["id"])
    flat = discover.propose_http("x", "http://h/x", [{"id": 1, "v": 2.5}])
    assert flat.entry["pagination"] == {"style": "none"} and flat.entry["contract"] == {
        "id": "long",
        "v": "double",
    }


def test_a_topic_sample_names_its_fields_and_counts_what_is_not_json() -> None:
    samples = [json.dumps({"order_id": f"o{i}", "total": {"eur": i / 2}}).encode() for i in range(3)]
    proposal = discover.propose_kafka("shop_orders", "shop.orders", [*samples, b"{oops"], partitions=2)
    assert proposal.entry["key"] == ["order_id"] and proposal.entry["partitions"] == 2
    assert proposal.fields == {"order_id": "string", "total.eur": "double"}
    assert proposal.notes == ("4 messages sampled: 3 JSON objects, 1 other",)
    assert "empty" in discover.propose_kafka("quiet", "quiet", []).notes[0]


def test_device_messages_draft_a_payload_the_bridge_accepts() -> None:
    messages = [
        json.dumps(
            {"probe": {"serial": "p1"}, "n": i, "at": 1_700_000_000 + i, "soil": {"moisture": 0.3 + i}}
        ).encode()
        for i in range(3)
    ]
    payload, notes = discover.propose_payload(
        [*messages, b"\xff"], key=["probe_serial"], sequence="n", event_time="at"
    )
    assert payload["fields"]["probe_serial"] == {"type": "string", "path": "probe.serial"}
    assert payload["fields"]["soil_moisture"] == {"type": "double", "path": "soil.moisture"}
    assert (payload["fields"]["at"], payload["time_format"]) == ({"type": "timestamp"}, "auto")  # epoch
    assert "1 not JSON objects" in notes[0]
    proposal = discover.propose_mqtt(
        "soil_probes", "soil/+/up", payload, topic_pattern="soil/{probe_serial}/up"
    )
    source = MqttSource.model_validate(proposal.entry)
    assert (source.kafka_topic, source.dead_letter_topic) == ("soil-probes", "soil-probes.dlq")
    assert proposal.entry["key"] == ["probe_serial", "n"]
    with pytest.raises(ConfigError, match=r"\['serial'\] are not fields"):
        discover.propose_payload(messages, key=["serial"])
    with pytest.raises(ConfigError, match="payload of 'bad' is invalid: fields"):
        discover.propose_mqtt("bad", "t/#", {"key": ["id"], "fields": {}})


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(
        "# my team's sources\nsources:\n  # the shop\n  shop:\n    kind: kafka\n    topic: shop\n    bronze: shop\n"
    )
    monkeypatch.setenv("LAKEHOUSE_SOURCES", str(path))
    return path


def test_an_entry_is_appended_validated_and_a_duplicate_refused(settings: Settings, registry: Path) -> None:
    proposal = discover.propose_postgres("penguins", "field.penguins", PENGUINS, ["species", "sample_number"])
    assert discover.add_to_registry(settings, proposal) == registry
    text = registry.read_text()
    assert text.startswith("# my team's sources\nsources:\n  # the shop\n")  # comments kept
    loaded = load_registry(settings)
    assert set(loaded.sources) == {"shop", "penguins"}
    assert loaded.sources["penguins"].bronze == "penguins"
    with pytest.raises(ConfigError, match="already has a source 'penguins'"):
        discover.add_to_registry(settings, proposal)
    same_bronze = discover.propose_kafka("shop_again", "shop2", [], bronze="shop")
    with pytest.raises(ConfigError, match=r"invalid: sources: .*both land in bronze/shop"):
        discover.add_to_registry(settings, same_bronze)
    assert registry.read_text() == text  # a refused entry writes nothing


def test_the_cli_samples_writes_and_says_what_to_run_next(
    settings: Settings, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def page(url: str, headers: dict[str, str], **_: Any) -> Any:
        seen.update(url=url, headers=headers)
        return NESTED_PAGE

    monkeypatch.setattr(discover, "sample_http", page)
    runner = CliRunner()
    command = ["--env", "test", "source", "add", "http", "tickets", "--url", "http://127.0.0.1:9/v1/tickets",
               "--auth-value", "Bearer ${TICKETS_TOKEN:-t}"]  # fmt: skip
    result = runner.invoke(main, command)
    assert result.exit_code == 0, result.output
    assert seen["headers"] == {"Authorization": "Bearer ${TICKETS_TOKEN:-t}"}
    assert (
        "next: land it (lakehouse api pull --source tickets), then `lakehouse table scaffold tickets --write`"
        in result.output
    )
    entry = yaml.safe_load(registry.read_text())["sources"]["tickets"]
    assert entry["auth"] == {"header": "Authorization", "value": "Bearer ${TICKETS_TOKEN:-t}"}
    again = runner.invoke(main, command)
    assert again.exit_code == 1 and "already has a source 'tickets'" in again.output
    seen.clear()
    taken = runner.invoke(main, ["--env", "test", "source", "add", "http", "tickets", "--url", "http://x/y"])
    assert taken.exit_code == 1 and "already has a source 'tickets'" in taken.output
    assert seen == {}  # refused before the API was asked
    missing = runner.invoke(main, ["--env", "test", "source", "add", "postgres", "orders"])
    assert missing.exit_code == 1 and "needs --table" in missing.output
