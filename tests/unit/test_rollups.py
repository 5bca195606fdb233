"""Declared rollups (catalog/gold, section rollup) on small static frames, and the InfluxDB point conversion."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.gold.rollups import (
    Measurement,
    RollupStream,
    declared_streams,
    rollup_stream,
    rows,
    table_rows,
    to_line_protocol,
    to_points,
    windows,
)
from lakehouse.governance.catalog import catalog_root, load_catalog_dir

pytestmark = pytest.mark.unit

T0 = datetime(2024, 11, 1, 10, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


def _v1(event_type: str, second: int, session: str, event_id: str | None = None) -> str:
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id or f"e{second}{session}",
        "event_type": event_type,
        "ts": T0_MS + second * 1000,
        "session_id": session,
        "user_id": "u",
    }
    if event_type == "purchase":
        event |= {"revenue": 9.5, "currency": "EUR"}
    return json.dumps(event)


def _v2(event_type: str, second: int, session: str) -> str:
    moment = datetime.fromtimestamp(T0.timestamp() + second, tz=UTC).isoformat().replace("+00:00", "Z")
    event: dict[str, Any] = {
        "schema_version": 2,
        "event_id": f"f{second}{session}",
        "event_type": event_type,
        "event_time": moment,
        "session_id": session,
        "user_id": "u",
    }
    if event_type == "purchase":
        event["amount"] = {"value": 9.5, "currency": "EUR"}
    return json.dumps(event)


def _records(spark: Any, values: list[str]) -> Any:
    """Kafka source rows (what the stream reads) holding ``values``, one per offset."""
    rows = [(None, v.encode(), "t", 0, offset, T0) for offset, v in enumerate(values)]
    schema = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"
    return spark.createDataFrame(rows, schema)


def _tables(spark: Any, stream: RollupStream, values: list[str]) -> dict[str, list[Any]]:
    frame = windows(rows(_records(spark, values), stream), stream).localCheckpoint()
    return {rollup.name: table_rows(frame, rollup).collect() for rollup in stream.tables}


def test_the_demo_declares_two_streams_read_from_the_topics_its_sources_land(settings: Settings) -> None:
    streams = {s.root.name: s for s in declared_streams(settings)}
    assert set(streams) == {"gold.rt_device_minute", "gold.rt_events_per_minute"}
    events = streams["gold.rt_events_per_minute"]
    assert (events.topic, events.silver.name, events.event_time) == (
        "clickstream",
        "silver.events",
        "event_time",
    )
    assert [r.name for r in events.derived] == ["gold.rt_sessions_per_minute"]
    devices = streams["gold.rt_device_minute"]
    assert (devices.topic, devices.event_time, devices.derived) == ("iot.telemetry", "device_time", ())


def test_events_and_sessions_per_minute_count_what_silver_keeps(spark: Any, settings: Settings) -> None:
    stream = rollup_stream(settings, "gold.rt_events_per_minute")
    values = [
        _v1("page_view", 1, "s1"),
        _v1("page_view", 2, "s1"),
        _v1("page_view", 2, "s1"),  # a re-delivery: the same event_id counts once
        _v2("page_view", 30, "s2"),
        _v2("search", 40, "s1"),
        _v2("purchase", 50, "s2"),
        _v1("search", 61, "s3"),  # next minute
        # what silver would quarantine never counts
        "{not json",
        json.dumps(
            {"schema_version": 2, "event_id": "x1", "event_type": "search", "event_time": "yesterday"}
        ),
        json.dumps({"schema_version": 1, "event_id": "x2", "event_type": "search", "ts": 12, "user_id": "u"}),
        json.dumps(
            {"schema_version": 1, "event_id": "x3", "event_type": "teleport", "ts": T0_MS, "user_id": "u"}
        ),
        json.dumps({"schema_version": 1, "event_id": "x4", "event_type": "search", "ts": T0_MS}),  # no user
        json.dumps(
            {"schema_version": 1, "event_id": "x5", "event_type": "purchase", "ts": T0_MS, "user_id": "u"}
        ),
    ]
    tables = _tables(spark, stream, values)
    per_type = {
        (r["window_start"].minute, r["event_type"]): (r["events"], r["sessions"])
        for r in tables["gold.rt_events_per_minute"]
    }
    assert per_type == {
        (0, "page_view"): (3, 2),
        (0, "search"): (1, 1),
        (0, "purchase"): (1, 1),
        (1, "search"): (1, 1),
    }
    per_minute = {
        r["window_start"].minute: (r["active_sessions"], r["events"])
        for r in tables["gold.rt_sessions_per_minute"]
    }
    # s1 is counted once in minute 0 although it has page views and a search.
    assert per_minute == {0: (2, 5), 1: (1, 1)}


def _reading(device: str, seq: int, second: int, temp: float, **extra: Any) -> str:
    record = {
        "device_id": device,
        "seq": seq,
        "device_time": datetime.fromtimestamp(T0.timestamp() + second, tz=UTC).isoformat(),
        "received_at": T0.isoformat(),
        "temperature_c": temp,
        "humidity_pct": 40.0 + seq,
        "co2_ppm": 400.0 + 10 * seq,
        "battery_pct": 90.0 - seq,
        "light_lux": 100.0,
        "firmware": "1.0",
        "site": "plant-a",
        "mqtt_topic": f"sites/plant-a/{device}",
    }
    record.update(extra)
    return json.dumps(record)


def test_device_minute_rolls_up_and_drops_redelivered_readings(spark: Any, settings: Settings) -> None:
    stream = rollup_stream(settings, "gold.rt_device_minute")
    values = [
        _reading("d1", 1, 1, 20.0),
        _reading("d1", 2, 20, 22.0),
        _reading("d1", 2, 20, 22.0),  # QoS 1 re-delivery of seq 2
        _reading("d1", 3, 65, 25.0),
        _reading("d2", 1, 10, 18.0, site=None),
        _reading("d3", 1, 10, 18.0, device_time="not a time"),
        "garbage",
    ]
    found = {
        (r["device_id"], r["window_start"].minute): r
        for r in _tables(spark, stream, values)["gold.rt_device_minute"]
    }
    assert set(found) == {("d1", 0), ("d1", 1), ("d2", 0)}
    d1 = found[("d1", 0)]
    assert d1["messages"] == 2
    assert (d1["avg_temperature_c"], d1["min_temperature_c"], d1["max_temperature_c"]) == (21.0, 20.0, 22.0)
    assert (d1["avg_humidity_pct"], d1["max_co2_ppm"], d1["min_battery_pct"]) == (41.5, 420.0, 88.0)
    assert (d1["site"], found[("d2", 0)]["site"]) == ("plant-a", "unknown")


def _catalog_with(tmp_path: Path, settings: Settings, name: str, document: dict[str, Any]) -> Path:
    folder = tmp_path / "catalog"
    shutil.copytree(catalog_root(settings), folder)
    (folder / "gold" / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


def _site_rollup(**rollup: Any) -> dict[str, Any]:
    column = {"classification": "internal", "description": "d"}
    return {
        "table": "gold.site_co2",
        "owner": "me",
        "description": "Peak CO2 per site and 10 seconds.",
        "classification": "internal",
        "optional": True,
        "rollup": {
            "rows": "silver.telemetry",
            "window": "10 seconds",
            "group_by": ["site"],
            "aggregate": {"peak_co2_ppm": "max(co2_ppm)", "devices": "collect_set(device_id)"},
            "columns": {"devices": "size(devices)"},
            "influx": {"measurement": "site_co2", "tags": ["site"]},
            **rollup,
        },
        "columns": [
            {"name": name, "type": kind, **column}
            for name, kind in [
                ("window_start", "timestamp"),
                ("window_end", "timestamp"),
                ("site", "string"),
                ("peak_co2_ppm", "double"),
                ("devices", "integer"),
                ("batch_id", "long"),
                ("emitted_at", "timestamp"),
            ]
        ],
    }


def test_a_rollup_of_ones_own_is_configuration_only(spark: Any, settings: Settings, tmp_path: Path) -> None:
    catalog = load_catalog_dir(_catalog_with(tmp_path, settings, "site_co2", _site_rollup()))
    (stream,) = [s for s in declared_streams(settings, catalog=catalog) if s.root.name == "gold.site_co2"]
    values = [_reading("d1", 1, 1, 20.0, co2_ppm=500.0), _reading("d2", 1, 4, 20.0, co2_ppm=700.0)]
    values += [_reading("d1", 2, 12, 20.0, co2_ppm=450.0)]
    found = [
        (r["window_start"].second, r["site"], r["peak_co2_ppm"], r["devices"])
        for r in _tables(spark, stream, values)["gold.site_co2"]
    ]
    assert sorted(found) == [(0, "plant-a", 700.0, 2), (10, "plant-a", 450.0, 1)]
    measurement = Measurement.of(stream.root)
    assert measurement is not None
    assert (measurement.tags, measurement.fields) == (("site",), (("peak_co2_ppm", float), ("devices", int)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"aggregate": {"peak_co2_ppm": "max(co2_ppm)"}, "columns": {}},
            "no value for columns \\['devices'\\]",
        ),
        ({"of": "gold.rt_device_minute"}, "either rows"),
        ({"window": "a while"}, "not an interval"),
        ({"influx": {"measurement": "m", "tags": ["room"]}}, "room"),
    ],
)
def test_a_rollup_that_does_not_hold_is_refused_naming_the_field(
    settings: Settings, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    folder = _catalog_with(tmp_path, settings, "site_co2", _site_rollup(**change))
    with pytest.raises(ConfigError, match=message) as error:
        load_catalog_dir(folder)
    assert "site_co2.yaml" in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dedupe": ["serial"]}, "dedupe names \\['serial'\\]"),
        ({"event_time": "site"}, "not a timestamp column"),
        ({"rows": "silver.nowhere"}, "not a declared silver table"),
    ],
)
def test_a_rollup_over_rows_that_do_not_fit_is_refused(
    settings: Settings, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    catalog = load_catalog_dir(_catalog_with(tmp_path, settings, "site_co2", _site_rollup(**change)))
    with pytest.raises(ConfigError, match=message):
        declared_streams(settings, catalog=catalog)


def test_points_coerce_types_skip_nulls_and_take_naive_times_as_utc() -> None:
    rows = [
        {
            "window_start": datetime(2024, 11, 1, 10, 0),
            "device_id": "d 1",
            "site": "a",
            "avg": 21,
            "messages": 2.0,
        },
        {"window_start": T0, "device_id": "d2", "site": None, "avg": None, "messages": 1},
        {"window_start": T0, "device_id": "d3", "site": "b", "avg": None, "messages": None},
    ]
    points = to_points(
        rows, measurement="device_minute", tags=["device_id", "site"], fields={"avg": float, "messages": int}
    )
    assert points == [
        {
            "measurement": "device_minute",
            "tags": {"device_id": "d 1", "site": "a"},
            "time": 1730455200,
            "fields": {"avg": 21.0, "messages": 2},
        },
        {
            "measurement": "device_minute",
            "tags": {"device_id": "d2"},
            "time": 1730455200,
            "fields": {"messages": 1},
        },
    ]
    assert to_line_protocol(points).splitlines() == [
        r"device_minute,device_id=d\ 1,site=a avg=21.0,messages=2i 1730455200",
        "device_minute,device_id=d2 messages=1i 1730455200",
    ]


def test_points_refuse_a_time_that_is_not_a_time() -> None:
    with pytest.raises(ValueError, match="datetime"):
        to_points([{"window_start": "10:00", "n": 1}], measurement="m", tags=[], fields={"n": int})
