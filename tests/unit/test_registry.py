"""The source registry: validated on load, with errors that name the entry and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.sources.registry import KafkaSource, MqttSource, load_registry

pytestmark = pytest.mark.unit


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(body)
    return path


def test_the_committed_registry_loads(settings: Settings) -> None:
    registry = load_registry(settings)
    clickstream = registry.get("clickstream")
    assert isinstance(clickstream, KafkaSource) and clickstream.name == "clickstream"
    assert registry.kafka_ingest()["clickstream"] == "clickstream"


def test_every_kind_is_understood(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARTNER_TOKEN", "s3cret")
    path = _write(
        tmp_path,
        """
sources:
  partner_events: {kind: kafka, topic: partner.events, bronze: partner_events, key: [id]}
  orders: {kind: postgres, table: public.orders, key: [order_id], watermark: updated_at, bronze: retail_orders}
  retail_cdc:
    {kind: postgres_cdc, slot: lakehouse, topic: retail.cdc, tables: [public.orders], bronze: retail_cdc}
  fx: {kind: http, url: "http://127.0.0.1:1/v1/rates", auth: {value: "Bearer ${PARTNER_TOKEN}"}, bronze: fx_rates}
  sensors:
    kind: mqtt
    mqtt_topic: devices/+/telemetry
    kafka_topic: iot.telemetry
    dead_letter_topic: iot.telemetry.dlq
    bronze: iot_telemetry
""",
    )
    registry = load_registry(settings, path)
    assert [s.name for s in registry.of_kind("postgres")] == ["orders"]
    assert registry.get("fx").auth.value == "Bearer s3cret"  # type: ignore[union-attr]
    assert registry.kafka_ingest() == {
        "partner.events": "partner_events",
        "retail.cdc": "retail_cdc",
        "iot.telemetry": "iot_telemetry",
    }
    assert set(registry.kafka_topics()) == {
        "partner.events",
        "retail.cdc",
        "iot.telemetry",
        "iot.telemetry.dlq",
    }
    assert isinstance(registry.get("sensors"), MqttSource)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("sources:\n  a: {kind: ftp, bronze: a}\n", "sources.a"),
        ("sources:\n  a: {kind: kafka, bronze: a}\n", "sources.a.kafka.topic"),
        ("sources:\n  a: {kind: kafka, topic: t, bronze: A-B}\n", "lower_snake_case"),
        ("sources:\n  a: {kind: postgres, table: t, bronze: a}\n", "primary key"),
        (
            "sources:\n  a: {kind: kafka, topic: t, bronze: x}\n  b: {kind: kafka, topic: u, bronze: x}\n",
            "both land",
        ),
        ("sources:\n  a: {kind: kafka, topic: t, bronze: a, colour: red}\n", "colour"),
        ("sources: [unclosed\n", "not valid YAML"),
        (
            "sources:\n  a: {kind: http, url: 'x', auth: {value: '${NOPE_NOT_SET}'}, bronze: a}\n",
            "NOPE_NOT_SET",
        ),
    ],
)
def test_bad_entries_are_named(settings: Settings, tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_registry(settings, _write(tmp_path, body))


def test_missing_registry_says_what_to_create(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"create sources\.yaml"):
        load_registry(settings, tmp_path / "nope.yaml")


def test_the_environment_variable_points_at_another_registry(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "sources:\n  mine: {kind: kafka, topic: mine, bronze: mine}\n")
    monkeypatch.setenv("LAKEHOUSE_SOURCES", str(path))
    assert list(load_registry(settings).sources) == ["mine"]
