"""Payload declarations (lakehouse.contracts.payload): paths, types, units, extras, dead-letter reasons, and the
Spark schema and expressions that read the same declaration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakehouse.config import Settings, load_settings
from lakehouse.contracts.payload import (
    FieldSpec,
    PayloadError,
    PayloadSpec,
    affine,
    format_path,
    parse_path,
    parse_type,
)
from lakehouse.errors import ConfigError
from lakehouse.sources.registry import KafkaSource, MqttSource, load_registry

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def spec(**declaration: Any) -> PayloadSpec:
    return PayloadSpec.model_validate(declaration)


PUMP = spec(
    key=["station"],
    sequence="n",
    event_time="at",
    time_format="epoch_s",
    fields={
        "station": {"path": "meta.`station.id`"},
        "n": {"type": "bigint", "min": 0},
        "at": {"path": "meta.t", "type": "timestamp"},
        "flow_l_min": {
            "path": ["readings.flow.value", "flow"],
            "type": "double",
            "unit": "gal/min",
            "to": "L/min",
            "round": 3,
        },
        "temp_c": {
            "path": "readings.temp.v",
            "type": "double",
            "unit_path": "readings.temp.u",
            "units": {"F": "degF", "C": "degC"},
            "to": "degC",
            "round": 2,
            "min": -20,
            "max": 120,
        },
        "pressure_kpa": {"path": "p", "type": "double", "unit_path": "p_unit", "to": "kPa"},
        "price": {"type": "decimal(6,2)"},
        "tags": {"type": "array<string>"},
        "counters": {"type": "map<string,bigint>"},
        "day": {"type": "date"},
        "isig": {"type": "double", "null_values": ["nil"]},
        "serviced_at": {"type": "timestamp", "time_format": "iso8601"},
        "operator": {"required": True},
    },
)


def payload(**overrides: Any) -> bytes:
    document: dict[str, Any] = {
        "meta": {"station.id": "st-7", "t": 1_730_455_200, "site": "north"},
        "n": 41,
        "readings": {"flow": {"value": 10, "quality": "good"}, "temp": {"v": 70.7, "u": "F"}},
        "p": 1.2,
        "p_unit": "bar",
        "price": 12.345,
        "tags": ["a", "b"],
        "counters": {"starts": 3},
        "day": "2024-11-01",
        "isig": "nil",
        "serviced_at": "2024-10-31T08:00:00+01:00",
        "operator": "ana",
        "firmware": {"version": "3.1", "build": 7},
    }
    for name, value in overrides.items():
        if value is ...:
            document.pop(name, None)
        else:
            document[name] = value
    return json.dumps(document).encode()


# --- paths and types ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("a", ("a",)),
        ("readings.temp.value", ("readings", "temp", "value")),
        ("`a.b`.c", ("a.b", "c")),
        ("x.`we``ird`", ("x", "we`ird")),
    ],
)
def test_paths_are_dotted_with_backtick_quoting(text: str, path: tuple[str, ...]) -> None:
    assert parse_path(text) == path
    assert parse_path(format_path(path)) == path


@pytest.mark.parametrize("text", ["", "a..b", "a.", ".a", "`a", "a`b`", "`a`b"])
def test_malformed_paths_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_path(text)


@pytest.mark.parametrize(
    ("text", "ddl"),
    [
        ("string", "STRING"),
        ("long", "BIGINT"),
        ("Integer", "INT"),
        ("decimal(10, 2)", "DECIMAL(10,2)"),
        ("decimal", "DECIMAL(10,0)"),
        ("array<map<string, array<double>>>", "ARRAY<MAP<STRING,ARRAY<DOUBLE>>>"),
    ],
)
def test_spark_type_names_parse(text: str, ddl: str) -> None:
    assert parse_type(text).ddl() == ddl


@pytest.mark.parametrize(
    "text", ["strin", "decimal(40,2)", "decimal(2,3)", "array<int", "map<int,string>", "struct<a:int>"]
)
def test_unknown_types_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_type(text)


# --- reading in Python ----------------------------------------------------------------------------------


def test_declared_fields_are_typed_converted_and_undeclared_ones_kept() -> None:
    read = PUMP.reader().read(payload())
    assert read.values == {
        "station": "st-7",
        "n": 41,
        "at": "2024-11-01T10:00:00.000Z",
        "flow_l_min": 37.854,  # 10 US gal/min
        "temp_c": 21.5,
        "pressure_kpa": pytest.approx(120.0),  # bar, read by pint from the payload's spelling
        "price": "12.35",  # exact, half up
        "tags": ["a", "b"],
        "counters": {"starts": 3},
        "day": "2024-11-01",
        "isig": None,  # "nil" means no value
        "serviced_at": "2024-10-31T07:00:00.000Z",
        "operator": "ana",
    }
    assert read.extra == {
        "meta": {"site": "north"},
        "readings": {"flow": {"quality": "good"}},
        "firmware": {"version": "3.1", "build": 7},
    }
    assert read.key(PUMP.key) == "st-7"


def test_alternative_paths_take_the_first_value_present() -> None:
    read = PUMP.reader().read(payload(readings={"temp": {"v": 20, "u": "C"}}, flow=2.0))
    assert read.values["flow_l_min"] == pytest.approx(7.571)
    assert read.values["temp_c"] == 20.0
    assert read.extra is not None and "flow" not in read.extra


def test_a_payload_with_nothing_undeclared_has_no_extra() -> None:
    small = spec(key=["id"], fields={"id": {}, "v": {"path": "a.b", "type": "int"}})
    assert small.reader().read(b'{"id": "x", "a": {"b": 1}}').extra is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"n": ...}, "missing_n"),
        ({"n": -1}, "invalid_n"),
        ({"n": "41"}, "invalid_n"),
        ({"n": 4.0}, "invalid_n"),
        ({"n": 2**63}, "invalid_n"),
        ({"meta": {"t": 1_730_455_200}}, "missing_station"),
        ({"meta": {"station.id": " ", "t": 1_730_455_200}}, "missing_station"),
        ({"meta": {"station.id": 7, "t": 1_730_455_200}}, "invalid_station"),
        ({"meta": {"station.id": "s", "t": "2024-11-01T10:00:00Z"}}, "invalid_timestamp"),  # not epoch_s
        ({"meta": {"station.id": "s", "t": 99_999_999_999}}, "invalid_timestamp"),  # year 5138
        ({"meta": {"station.id": "s", "t": 1e300}}, "invalid_timestamp"),
        ({"meta": {"station.id": "s"}}, "invalid_timestamp"),
        ({"serviced_at": "soon"}, "invalid_timestamp"),
        ({"price": "cheap"}, "invalid_value"),
        ({"price": 12345.6}, "invalid_value"),  # more than decimal(6,2) holds
        ({"tags": ["a", 1]}, "invalid_value"),
        ({"counters": {"starts": "3"}}, "invalid_value"),
        ({"day": "01/11/2024"}, "invalid_value"),
        ({"isig": True}, "invalid_value"),
        ({"readings": {"temp": {"v": 70.7, "u": "R"}}}, "unknown_unit"),  # not in the declared spellings
        ({"readings": {"temp": {"v": 70.7}}}, "unknown_unit"),
        ({"p_unit": "furlong"}, "unknown_unit"),  # pint knows it, but it is no pressure
        ({"readings": {"temp": {"v": 300, "u": "F"}}}, "out_of_range"),  # 148.9 °C
        ({"operator": None}, "missing_operator"),
    ],
)
def test_each_broken_rule_has_its_reason(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        PUMP.reader().read(payload(**overrides))
    assert caught.value.reason == reason
    assert caught.value.reason in PUMP.dead_letter_reasons()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1]", "not_an_object"),
        (b'{"id": "x", "v": NaN}', "invalid_value"),
    ],
)
def test_unreadable_payloads(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        spec(key=["id"], fields={"id": {}, "v": {"type": "double"}}).reader().read(raw)
    assert caught.value.reason == reason


def test_undeclared_values_can_dead_letter_instead() -> None:
    strict = spec(key=["id"], undeclared="dead_letter", fields={"id": {}})
    assert strict.reader().read(b'{"id": "a"}').values == {"id": "a"}
    with pytest.raises(PayloadError, match="undeclared_field"):
        strict.reader().read(b'{"id": "a", "surprise": 1}')


@pytest.mark.parametrize(
    ("time_format", "value", "expected"),
    [
        ("epoch_ms", 1_730_455_200_250, "2024-11-01T10:00:00.250Z"),
        ("epoch_s", 1_730_455_200.25, "2024-11-01T10:00:00.250Z"),
        ("iso8601", "2024-11-01T10:00:00.250", "2024-11-01T10:00:00.250Z"),  # no zone: UTC
        ("auto", 1_730_455_200, "2024-11-01T10:00:00.000Z"),
        ("auto", 1_730_455_200_000, "2024-11-01T10:00:00.000Z"),
        ("auto", "2024-11-01T11:00:00+01:00", "2024-11-01T10:00:00.000Z"),
    ],
)
def test_time_formats(time_format: str, value: Any, expected: str) -> None:
    declared = spec(
        key=["id"], event_time="t", time_format=time_format, fields={"id": {}, "t": {"type": "timestamp"}}
    )
    assert declared.reader().read(json.dumps({"id": "a", "t": value}).encode()).values["t"] == expected


def test_affine_conversions_come_from_pint() -> None:
    assert affine("degF", "degC") == pytest.approx((5 / 9, -160 / 9))
    assert affine("mg/dL", "g/L") == pytest.approx((0.01, 0.0))
    with pytest.raises(ValueError, match="cannot convert"):
        affine("kg", "degC")


# --- declarations that do not hold ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"key": ["id"], "fields": {"id": {"type": "strng"}}}, "unknown type"),
        ({"key": ["nope"], "fields": {"id": {}}}, "key 'nope' is not one of the declared fields"),
        ({"key": ["id"], "event_time": "t", "fields": {"id": {}, "t": {}}}, "must be a timestamp"),
        ({"key": ["id"], "fields": {"id": {}, "v": {"type": "double", "to": "degC"}}}, "declare `unit`"),
        ({"key": ["id"], "fields": {"id": {}, "v": {"unit": "degC"}}}, "need a numeric type"),
        ({"key": ["id"], "fields": {"id": {}, "v": {"type": "int", "min": 5, "max": 1}}}, "above max"),
        ({"key": ["id"], "fields": {"id": {}, "v": {"path": "a..b"}}}, "empty segment"),
        ({"key": ["id"], "fields": {"id": {}, "extra": {}}}, "undeclared values"),
        ({"key": ["id"], "fields": {"id": {}, "v": {"typo": 1}}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_declarations_say_what_is_wrong(declaration: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PayloadSpec.model_validate(declaration)


def test_an_unknown_unit_is_a_config_error_naming_the_field() -> None:
    declared = spec(
        key=["id"], fields={"id": {}, "v": {"type": "double", "unit": "degF", "to": "celsius_typo"}}
    )
    with pytest.raises(ConfigError, match="payload field 'v'"):
        declared.reader()


def _registry_with(tmp_path: Path, settings: Settings, entry: dict[str, Any]) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": {"fleet": entry}}))
    return path


MQTT_ENTRY: dict[str, Any] = {
    "kind": "mqtt",
    "mqtt_topic": "fleet/+/up",
    "kafka_topic": "fleet.up",
    "dead_letter_topic": "fleet.up.dlq",
    "bronze": "fleet",
    "key": ["unit_id", "n"],
    "ordering": "at",
    "topic_pattern": "fleet/{unit_id}/up",
    "payload": {
        "key": ["unit_id"],
        "sequence": "n",
        "event_time": "at",
        "fields": {"unit_id": {}, "n": {"type": "bigint"}, "at": {"type": "timestamp"}},
    },
}


def test_a_bad_registry_entry_names_the_file_and_the_field(tmp_path: Path) -> None:
    settings = load_settings("test", root=ROOT)
    broken = {**MQTT_ENTRY, "payload": {**MQTT_ENTRY["payload"], "sequence": "seqq"}}
    with pytest.raises(ConfigError, match=r"sources.yaml is invalid: sources\.fleet\.mqtt\.payload.*'seqq'"):
        load_registry(settings, _registry_with(tmp_path, settings, broken))
    clash = {**MQTT_ENTRY, "topic_pattern": "fleet/{unit}/up"}
    with pytest.raises(ConfigError, match="topic_pattern names 'unit'"):
        load_registry(settings, _registry_with(tmp_path, settings, clash))
    ordering = {**MQTT_ENTRY, "ordering": "when"}
    with pytest.raises(ConfigError, match=r"\['when'\] are not fields"):
        load_registry(settings, _registry_with(tmp_path, settings, ordering))
    no_payload = {k: v for k, v in MQTT_ENTRY.items() if k != "payload"}
    with pytest.raises(ConfigError, match="topic_pattern and device_registry name payload fields"):
        load_registry(settings, _registry_with(tmp_path, settings, no_payload))
    reserved = {
        **MQTT_ENTRY,
        "payload": {
            **MQTT_ENTRY["payload"],
            "fields": {**MQTT_ENTRY["payload"]["fields"], "received_at": {}},
        },
    }
    with pytest.raises(ConfigError, match="clash with the fields the connector adds"):
        load_registry(settings, _registry_with(tmp_path, settings, reserved))


def test_the_bridge_refuses_an_mqtt_source_without_a_payload(tmp_path: Path) -> None:
    from lakehouse.sources.mqtt import Normalizer

    settings = load_settings("test", root=ROOT)
    bare = {k: v for k, v in MQTT_ENTRY.items() if k not in {"payload", "topic_pattern", "ordering"}}
    source = load_registry(settings, _registry_with(tmp_path, settings, bare)).get("fleet")
    assert isinstance(source, MqttSource) and source.record_payload() is None
    with pytest.raises(ConfigError, match="mqtt source 'fleet' declares no payload: add `payload:`"):
        Normalizer.from_source(source)


def test_the_mqtt_record_declaration_adds_what_the_bridge_adds(tmp_path: Path) -> None:
    settings = load_settings("test", root=ROOT)
    source = load_registry(settings, _registry_with(tmp_path, settings, MQTT_ENTRY)).get("fleet")
    assert isinstance(source, MqttSource)
    record = source.record_payload()
    assert record is not None
    assert list(record.fields) == ["unit_id", "n", "at", "received_at", "mqtt_topic"]
    assert record.record_ddl() == (
        "`unit_id` STRING, `n` BIGINT, `at` TIMESTAMP, `received_at` TIMESTAMP, `mqtt_topic` STRING, `extra` STRING"
    )


def test_every_payload_the_project_declares_compiles() -> None:
    registry = load_registry(load_settings("test", root=ROOT))
    declared = {name: s for name, s in registry.sources.items() if isinstance(s, KafkaSource | MqttSource)}
    assert {"clickstream", "iot_telemetry"} <= set(declared)
    for source in declared.values():
        record = source.record_payload()
        assert record is not None
        record.reader()
        assert source.payload is not None
        source.payload.reader()
        source.payload.payload_ddl()


# --- Spark reads the same declaration -------------------------------------------------------------------


def test_spark_reads_the_normalised_record_by_its_ddl(spark: Any) -> None:
    from pyspark.sql import functions as F

    declared = spec(
        key=["id"],
        event_time="t",
        fields={
            "id": {},
            "t": {"type": "timestamp"},
            "amount": {"type": "decimal(8,2)"},
            "xs": {"type": "array<double>"},
        },
    )
    read = declared.reader().read(
        b'{"id": "a", "t": "2024-11-01T10:00:00Z", "amount": 3.1, "xs": [1, 2.5], "odd": {"k": [1]}}'
    )
    record = json.dumps({**read.values, "extra": read.extra})
    frame = spark.createDataFrame([(record,)], "value string")
    row = frame.select(F.from_json("value", declared.record_ddl()).alias("r")).select("r.*").first()
    assert row is not None
    assert str(row["amount"]) == "3.10"
    assert row["xs"] == [1.0, 2.5]
    assert row["t"].isoformat().startswith("2024-11-01T10:00:00")
    assert json.loads(row["extra"]) == {"odd": {"k": [1]}}  # an object read into STRING is its JSON text
    assert (
        declared.record_schema().simpleString().startswith("struct<id:string,t:timestamp,amount:decimal(8,2)")
    )


def test_spark_turns_both_clickstream_versions_into_one_record(spark: Any) -> None:
    from pyspark.sql import functions as F

    clickstream = load_registry(load_settings("test", root=ROOT)).get("clickstream")
    assert isinstance(clickstream, KafkaSource) and clickstream.payload is not None
    payload_spec = clickstream.payload
    v1 = {
        "schema_version": 1,
        "event_id": "e1",
        "event_type": "purchase",
        "ts": 1730455200123,
        "user_id": "u1",
        "device": {"type": "desktop", "os": "Linux"},
        "revenue": 9.5,
        "currency": "EUR",
    }
    v2 = {
        "schema_version": 2,
        "event_id": "e2",
        "event_type": "purchase",
        "event_time": "2024-11-01T10:00:00.123Z",
        "user_id": "u2",
        "amount": {"value": 7.25, "currency": "GBP"},
        "consent": {"analytics": True},
    }
    frame = spark.createDataFrame([(json.dumps(v1),), (json.dumps(v2),)], "value string")
    parsed = frame.select(F.from_json("value", payload_spec.payload_ddl()).alias("payload"))
    rows = parsed.selectExpr(*payload_spec.select_expressions()).orderBy("event_id").collect()
    assert [r["event_time"].isoformat()[:23] for r in rows] == ["2024-11-01T10:00:00.123"] * 2
    assert [(r["revenue"], r["currency"]) for r in rows] == [(9.5, "EUR"), (7.25, "GBP")]
    assert [r["device_type"] for r in rows] == ["desktop", None]
    assert [r["consent_analytics"] for r in rows] == [None, True]
    # The Python reader agrees on both versions.
    reader = payload_spec.reader()
    assert [reader.read(json.dumps(v).encode()).values["event_time"] for v in (v1, v2)] == [
        "2024-11-01T10:00:00.123Z"
    ] * 2


def test_spark_converts_units_as_the_python_reader_does(spark: Any) -> None:
    rows = [
        json.dumps({"station": "s", "t": {"v": 70.7, "u": "f"}}),
        json.dumps({"station": "s", "t": {"v": 21.5, "u": "C"}}),
    ]
    declared = spec(
        key=["station"],
        fields={
            "station": {},
            "temp_c": {
                "path": "t.v",
                "type": "double",
                "unit_path": "t.u",
                "units": {"F": "degF", "C": "degC"},
                "to": "degC",
                "round": 2,
            },
        },
    )
    from pyspark.sql import functions as F

    frame = spark.createDataFrame([(r,) for r in rows], "value string")
    parsed = frame.select(F.from_json("value", declared.payload_ddl()).alias("payload"))
    assert [r["temp_c"] for r in parsed.selectExpr(*declared.select_expressions()).collect()] == [21.5, 21.5]
    assert [declared.reader().read(r.encode()).values["temp_c"] for r in rows] == [21.5, 21.5]


def test_field_spec_defaults_to_its_name() -> None:
    assert FieldSpec().paths("device_id") == [("device_id",)]
