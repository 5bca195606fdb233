"""Real-time gold transforms on small static frames, and the InfluxDB point / line conversion."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from lakehouse.errors import ConfigError
from lakehouse.gold.realtime import (
    clickstream_events,
    device_minute,
    device_telemetry,
    events_per_minute,
    events_rows,
    sessions_rows,
    to_line_protocol,
    to_points,
)

pytestmark = pytest.mark.unit

T0 = datetime(2024, 11, 1, 10, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


def _v1(event_type: str, second: int, session: str) -> str:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"e{second}{session}",
            "event_type": event_type,
            "ts": T0_MS + second * 1000,
            "session_id": session,
            "user_id": "u",
        }
    )


def _v2(event_type: str, second: int, session: str) -> str:
    moment = datetime.fromtimestamp(T0.timestamp() + second, tz=UTC).isoformat().replace("+00:00", "Z")
    return json.dumps(
        {
            "schema_version": 2,
            "event_id": f"f{second}{session}",
            "event_type": event_type,
            "event_time": moment,
            "session_id": session,
            "user_id": "u",
        }
    )


def _values(spark: Any, values: list[str]) -> Any:
    return spark.createDataFrame([(v,) for v in values], "value string")


def test_clickstream_events_reads_both_versions_and_skips_what_has_no_time(spark: Any) -> None:
    values = [
        _v1("search", 5, "s1"),
        _v2("purchase", 70, "s2"),
        "{not json",
        json.dumps({"schema_version": 2, "event_type": "search", "event_time": "yesterday"}),
        json.dumps({"schema_version": 1, "event_type": "search", "ts": 12}),
    ]
    rows = clickstream_events(_values(spark, values)).orderBy("event_time").collect()
    assert [(r["event_type"], r["session_id"]) for r in rows] == [("search", "s1"), ("purchase", "s2")]
    assert rows[1]["event_time"].replace(tzinfo=UTC) == datetime(2024, 11, 1, 10, 1, 10, tzinfo=UTC)


def test_events_and_sessions_per_minute(spark: Any) -> None:
    values = [
        _v1("page_view", 1, "s1"),
        _v1("page_view", 2, "s1"),
        _v2("page_view", 30, "s2"),
        _v2("search", 40, "s1"),
        _v1("search", 61, "s3"),  # next minute
    ]
    windows = events_per_minute(clickstream_events(_values(spark, values)), "1 minute")
    per_type = {
        (r["window_start"].minute, r["event_type"]): (r["events"], r["sessions"])
        for r in events_rows(windows).collect()
    }
    assert per_type == {(0, "page_view"): (3, 2), (0, "search"): (1, 1), (1, "search"): (1, 1)}
    per_minute = {
        r["window_start"].minute: (r["active_sessions"], r["events"])
        for r in sessions_rows(windows).collect()
    }
    # s1 is counted once in minute 0 although it has page views and a search.
    assert per_minute == {0: (2, 4), 1: (1, 1)}


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


def test_device_minute_rolls_up_and_drops_redelivered_readings(spark: Any) -> None:
    values = [
        _reading("d1", 1, 1, 20.0),
        _reading("d1", 2, 20, 22.0),
        _reading("d1", 2, 20, 22.0),  # QoS 1 re-delivery of seq 2
        _reading("d1", 3, 65, 25.0),
        _reading("d2", 1, 10, 18.0),
        _reading("d3", 1, 10, 18.0, device_time="not a time"),
        "garbage",
    ]
    rows = device_minute(device_telemetry(_values(spark, values)), "1 minute").collect()
    found = {(r["device_id"], r["window_start"].minute): r for r in rows}
    assert set(found) == {("d1", 0), ("d1", 1), ("d2", 0)}
    d1 = found[("d1", 0)]
    assert d1["messages"] == 2
    assert (d1["avg_temperature_c"], d1["min_temperature_c"], d1["max_temperature_c"]) == (21.0, 20.0, 22.0)
    assert (d1["avg_humidity_pct"], d1["max_co2_ppm"], d1["min_battery_pct"]) == (41.5, 420.0, 88.0)
    assert d1["site"] == "plant-a"


def test_transforms_name_the_missing_columns(spark: Any) -> None:
    with pytest.raises(ConfigError, match="session_id"):
        events_per_minute(spark.createDataFrame([(T0, "search")], "event_time timestamp, event_type string"))


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
