"""Continuous mode and the real-time gold rollups on the real broker, Spark Connect and InfluxDB."""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from click.testing import CliRunner
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from lakehouse.config import Settings, load_settings
from lakehouse.errors import ServiceError
from lakehouse.gold.rollups import (
    InfluxTarget,
    RollupSink,
    app_id_for,
    rollup_stream,
    rows,
    start_rollup,
    windows,
)
from lakehouse.silver import engine
from lakehouse.sources.kafka import ingest_available
from lakehouse.streaming.cli import stream
from lakehouse.streaming.continuous import (
    QuerySpec,
    QuerySupervisor,
    SupervisorOptions,
    committed_offsets,
    read_status,
    run_foreground,
    running_pid,
    running_silver_inputs,
    running_topics,
)
from lakehouse.tables import count_rows, is_delta_table
from streaming_project import declared_project

pytestmark = pytest.mark.integration


def _topic(settings: Settings, partitions: int = 2) -> str:
    name = f"rt-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


def _send(settings: Settings, topic: str, records: list[tuple[str, dict[str, Any] | str]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    try:
        for key, value in records:
            payload = value if isinstance(value, str) else json.dumps(value)
            producer.send(topic, key=key.encode(), value=payload.encode())
        producer.flush()
    finally:
        producer.close()


def _base_minute() -> datetime:
    """A minute of its own for each test run, so InfluxDB points of earlier runs never mix in."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return start + timedelta(minutes=random.randrange(0, 500_000))


def _influx(settings: Settings, query: str) -> list[dict[str, Any]]:
    influx = settings.influxdb
    response = requests.get(
        f"http://{influx.host}:{influx.port}/query",
        params={"db": influx.database, "q": query, "epoch": "s"},
        timeout=10,
    )
    response.raise_for_status()
    rows = []
    for result in response.json()["results"]:
        for series in result.get("series", []):
            for values in series["values"]:
                rows.append({**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))})
    return rows


def _clickstream(base: datetime) -> tuple[list[tuple[str, dict[str, Any]]], dict[tuple[int, str], int]]:
    """Events in three minutes (v1 and v2 payloads), the expected counts per (minute, type)."""
    rng = random.Random(5)
    records, expected = [], {}
    for index in range(90):
        minute, second = index % 3, rng.randrange(60)
        event_type = ("page_view", "search", "purchase")[index % 7 % 3]
        moment = base + timedelta(minutes=minute, seconds=second)
        event: dict[str, Any] = {
            "event_id": f"e{index}",
            "event_type": event_type,
            "user_id": "u",
            "session_id": f"s{index % 9}",
        }
        if index % 2:
            event |= {"schema_version": 1, "ts": int(moment.timestamp() * 1000)}
            if event_type == "purchase":
                event |= {"revenue": 12.5, "currency": "EUR"}
        else:
            event |= {"schema_version": 2, "event_time": moment.isoformat().replace("+00:00", "Z")}
            if event_type == "purchase":
                event["amount"] = {"value": 12.5, "currency": "EUR"}
        records.append((f"e{index}", event))
        expected[(minute, event_type)] = expected.get((minute, event_type), 0) + 1
    # Moves the watermark past the three minutes so they are emitted (its own window stays open).
    sentinel = base + timedelta(minutes=10)
    records.append(
        (
            "late",
            {
                "schema_version": 1,
                "event_id": "z",
                "event_type": "search",
                "ts": int(sentinel.timestamp() * 1000),
                "session_id": "s0",
                "user_id": "u",
            },
        )
    )
    return records, expected


def test_event_windows_land_in_delta_and_influx_and_a_replay_changes_nothing(
    influxdb: Settings, spark: Any, tmp_path: Path
) -> None:
    topic = _topic(influxdb)
    base = _base_minute()
    records, expected = _clickstream(base)
    _send(influxdb, topic, [*records, ("bad", "{not json")])
    stream = rollup_stream(influxdb, "gold.rt_events_per_minute")
    tables = {
        "events_table": str(tmp_path / "rt_events"),
        "sessions_table": str(tmp_path / "rt_sessions"),
    }
    paths = {
        "gold.rt_events_per_minute": tables["events_table"],
        "gold.rt_sessions_per_minute": tables["sessions_table"],
    }
    checkpoint = str(tmp_path / "checkpoint")
    target = InfluxTarget.from_settings(influxdb)
    query = start_rollup(
        spark,
        influxdb,
        stream,
        topic=topic,
        paths=paths,
        checkpoint=checkpoint,
        influx=target,
        available_now=True,
    )
    query.awaitTermination()
    assert query.exception() is None

    delta = spark.read.format("delta").load(tables["events_table"]).collect()
    found = {
        (int((r["window_start"].replace(tzinfo=UTC) - base).total_seconds() // 60), r["event_type"]): r[
            "events"
        ]
        for r in delta
    }
    assert found == expected
    sessions = spark.read.format("delta").load(tables["sessions_table"]).collect()
    assert sorted(r["events"] for r in sessions) == [30, 30, 30]
    assert all(r["active_sessions"] == 3 for r in sessions)  # s0/s3/s6, s1/s4/s7, s2/s5/s8

    window = f"time >= {int(base.timestamp())}s AND time < {int(base.timestamp()) + 600}s"
    points = _influx(influxdb, f"SELECT events FROM events_per_minute WHERE {window} GROUP BY event_type")
    in_influx = {((p["time"] - int(base.timestamp())) // 60, p["event_type"]): p["events"] for p in points}
    assert in_influx == expected
    active = _influx(influxdb, f"SELECT active_sessions FROM active_sessions_per_minute WHERE {window}")
    assert [p["active_sessions"] for p in active] == [3, 3, 3]

    # Replay: the same windows handed to the sink again with the batch id that wrote them.
    batch_id = int(delta[0]["batch_id"])
    static = spark.read.format("kafka").option("kafka.bootstrap.servers", influxdb.kafka.bootstrap_servers)
    minutes = windows(rows(static.option("subscribe", topic).load(), stream), stream)
    replayed = minutes.where(minutes.window_start < base + timedelta(minutes=3))
    sink = RollupSink(stream.tables, tuple(paths.values()), app_id_for(checkpoint, stream.name), target)
    sink(replayed, batch_id)
    assert count_rows(spark, tables["events_table"]) == len(expected)
    assert count_rows(spark, tables["sessions_table"]) == 3
    again = _influx(
        influxdb, f"SELECT count(events) FROM events_per_minute WHERE {window} GROUP BY event_type"
    )
    assert sum(p["count"] for p in again) == len(expected)
    again = _influx(influxdb, f"SELECT events FROM events_per_minute WHERE {window} GROUP BY event_type")
    assert {
        ((p["time"] - int(base.timestamp())) // 60, p["event_type"]): p["events"] for p in again
    } == expected


def test_device_minutes_land_in_delta_and_influx(influxdb: Settings, spark: Any, tmp_path: Path) -> None:
    topic = _topic(influxdb)
    base = _base_minute()
    site = f"site-{uuid.uuid4().hex[:6]}"

    def reading(device: str, seq: int, second: int, temp: float) -> tuple[str, dict[str, Any]]:
        moment = base + timedelta(seconds=second)
        return device, {
            "device_id": device,
            "seq": seq,
            "device_time": moment.isoformat(),
            "received_at": moment.isoformat(),
            "temperature_c": temp,
            "humidity_pct": 50.0,
            "co2_ppm": 400.0 + seq,
            "battery_pct": 99.0 - seq,
            "light_lux": 10.0,
            "firmware": "2.1",
            "site": site,
            "mqtt_topic": f"{site}/{device}",
        }

    records = [
        reading("d1", seq, seq * 5, 20.0 + seq) for seq in range(1, 19)
    ]  # 11 in minute 0, 7 in minute 1
    records += [reading("d2", 1, 3, 15.0), reading("d2", 1, 3, 15.0)]  # a re-delivery
    records += [reading("d9", 99, 900, 0.0)]  # moves the watermark
    _send(influxdb, topic, records)
    table = str(tmp_path / "rt_device")
    query = start_rollup(
        spark,
        influxdb,
        rollup_stream(influxdb, "gold.rt_device_minute"),
        topic=topic,
        paths={"gold.rt_device_minute": table},
        checkpoint=str(tmp_path / "cp"),
        influx=InfluxTarget.from_settings(influxdb),
        available_now=True,
    )
    query.awaitTermination()
    assert query.exception() is None
    rows = {
        (r["device_id"], r["window_start"].replace(tzinfo=UTC)): r
        for r in spark.read.format("delta").load(table).collect()
    }
    minute = timedelta(minutes=1)
    assert {k: r["messages"] for k, r in rows.items()} == {
        ("d1", base): 11,
        ("d1", base + minute): 7,
        ("d2", base): 1,
    }
    assert rows[("d1", base)]["max_temperature_c"] == 31.0
    assert rows[("d1", base)]["min_battery_pct"] == 88.0

    points = _influx(
        influxdb,
        f"SELECT messages, max_temperature_c FROM device_minute WHERE site = '{site}' GROUP BY device_id",
    )
    assert sorted((p["device_id"], p["time"] - int(base.timestamp()), p["messages"]) for p in points) == [
        ("d1", 0, 11),
        ("d1", 60, 7),
        ("d2", 0, 1),
    ]


def test_supervisor_restarts_a_failed_query_with_backoff(settings: Settings) -> None:
    class Broken:
        id = runId = "q"
        isActive = False
        lastProgress = None

        def exception(self) -> str:
            return "boom"

    spec = QuerySpec("bronze_x", "bronze", "x", "/tmp/none", "/tmp/none-cp")
    supervisor = QuerySupervisor(settings, [spec], SupervisorOptions(max_backoff=8))
    entry = supervisor.running["bronze_x"]
    starts: list[str] = []
    supervisor._start = lambda e: (starts.append(e.spec.name), setattr(e, "query", Broken()))  # type: ignore[method-assign]
    entry.query = Broken()
    delays = []
    for _ in range(5):
        before = time.monotonic()
        supervisor._watch(entry)  # sees the failure, schedules a restart
        assert entry.query is None and entry.last_error == "boom"
        delays.append(round(entry.next_start - before))
        entry.next_start = 0
        supervisor._watch(entry)  # the restart
    assert delays == [2, 4, 8, 8, 8]
    assert entry.restarts == 5 and len(starts) == 5


def _registry(tmp_path: Path, topic: str, bronze: str) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(
        f"sources:\n  {bronze}:\n    kind: kafka\n    topic: {topic}\n    partitions: 2\n    bronze: {bronze}\n"
    )
    return path


def _wait(what: str, check: Any, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def _events(start: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    now = int(time.time() * 1000)
    return [
        (f"c{i}", {"schema_version": 1, "event_id": f"c{i}", "event_type": "search", "ts": now})
        for i in range(start, start + count)
    ]


def test_continuous_mode_ingests_reports_and_stops_cleanly(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    topic = _topic(stack)
    bronze = f"cont_{uuid.uuid4().hex[:8]}"
    registry = _registry(tmp_path, topic, bronze)
    table = stack.table_path("bronze", bronze)
    checkpoint = stack.checkpoint_path(f"bronze_{topic}")
    runner = CliRunner()
    obj = {"env": stack.env_name}
    args = ["start", "--registry", str(registry), "--no-realtime", "--trigger", "1 second"]
    try:
        started = runner.invoke(stream, args, obj=obj)
        assert started.exit_code == 0, started.output
        pid = running_pid(stack)
        assert pid is not None and f"pid {pid}" in started.output

        again = runner.invoke(stream, args, obj=obj)
        assert again.exit_code == 0 and f"already runs (pid {pid})" in again.output
        with pytest.raises(ServiceError, match="already runs"):
            run_foreground(stack, SupervisorOptions(registry=str(registry), realtime=False))
        assert running_topics(stack) == {topic}

        _send(stack, topic, _events(0, 40))

        def caught_up() -> dict[str, Any] | None:
            status = read_status(stack) or {}
            (query,) = status.get("queries", [{}])
            done = query.get("isActive") and query.get("lag") == 0 and count_rows(spark, table) == 40
            return query if done and query.get("lastProgressTime") else None

        query = _wait("bronze to catch up with 40 events", caught_up)
        assert query["name"] == f"bronze_{topic}" and query["id"]
        assert sum(committed_offsets(checkpoint)[topic].values()) == 40
        shown = runner.invoke(stream, ["status"], obj=obj)
        assert f"bronze_{topic}" in shown.output and " yes " in shown.output
    finally:
        stopped = runner.invoke(stream, ["stop"], obj=obj)
    assert stopped.exit_code == 0 and f"stopped (pid {pid})" in stopped.output
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert running_pid(stack) is None
    assert (read_status(stack) or {}).get("state") == "stopped"
    assert "not running" in runner.invoke(stream, ["status"], obj=obj).output
    assert count_rows(spark, table) == 40

    # The DAG's availableNow run continues from the same checkpoint: only the new records are added.
    _send(stack, topic, _events(40, 7))
    report = ingest_available(spark, stack, topic, table=table, checkpoint=checkpoint)
    assert report.rows == 7
    assert count_rows(spark, table) == 47


def test_continuous_mode_streams_the_declared_silver_tables_it_feeds(
    stack: Settings, spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, name = _topic(stack), f"meter_{uuid.uuid4().hex[:8]}"
    root = declared_project(stack, tmp_path, topic, name)
    monkeypatch.setenv("LAKEHOUSE_ROOT", str(root))  # the CLI and the supervisor it starts read this project
    local = load_settings(stack.env_name, root=root)
    table = engine.silver_table(local, f"silver.{name}")
    runner = CliRunner()
    obj = {"env": stack.env_name}
    readings = [(f"m{i}", {"id": f"m{i}", "n": i}) for i in range(30)]
    try:
        args = ["start", "--registry", str(tmp_path / "only.yaml"), "--no-influx"]
        started = runner.invoke(stream, [*args, "--trigger", "1 second"], obj=obj)
        assert started.exit_code == 0, started.output
        for query in (f"bronze_{topic}", f"silver_{name}_{name}", f"gold_{name}_minute"):
            assert query in started.output
        _send(stack, topic, [*readings, readings[0], ("bad", "{not json")])

        def settled() -> dict[str, int] | None:
            if not is_delta_table(spark, table.audit):
                return None
            totals = engine.reconcile(spark, table)
            return totals if totals["input_rows"] == 32 else None

        totals = _wait("silver to take the 32 readings from bronze", settled)
        assert (totals["applied"], totals["duplicates"], totals["quarantined"]) == (30, 1, 1)
        assert engine.check_table(spark, table)["input_rows"] == 32
        assert running_silver_inputs(local, table.name) == {name}

        # The user's declared rollup ran beside it: minutes 0-3 are final (the watermark is at minute 4),
        # the re-delivered reading counts once and the malformed record not at all.
        rollup = local.table_path("gold", f"{name}_minute")

        def minutes() -> list[Any] | None:
            found = spark.read.format("delta").load(rollup).collect() if is_delta_table(spark, rollup) else []
            return found if len(found) >= 4 else None

        got = {r["window_start"].minute: (r["readings"], r["total"]) for r in _wait("4 minutes", minutes)}
        assert got == {k: (6, 36 * k + 15) for k in range(4)}
        rows = [q for q in (read_status(local) or {})["queries"] if q["kind"] == "silver"]
        assert [(q["silver"], q["input"], q["isActive"]) for q in rows] == [(table.name, name, True)]
        # The DAG's run of the same table meanwhile leaves the streamed input (and its checkpoint) alone.
        left = engine.build_table(
            spark, local, table.name, table=table, skip=running_silver_inputs(local, table.name)
        )
        assert left.counts == {}
    finally:
        stopped = runner.invoke(stream, ["stop"], obj=obj)
    assert stopped.exit_code == 0, stopped.output
    assert running_silver_inputs(local, table.name) == set()

    # After continuous mode, the DAG's availableNow run continues from the same checkpoints.
    _send(stack, topic, [(f"m{i}", {"id": f"m{i}", "n": i}) for i in range(30, 35)])
    landed = ingest_available(
        spark,
        local,
        topic,
        table=local.table_path("bronze", name),
        checkpoint=local.checkpoint_path(f"bronze_{topic}"),
    )
    assert landed.rows == 5
    report = engine.build_table(spark, local, table.name, table=table)
    assert (report.total.input_rows, report.total.applied) == (5, 5)
    assert spark.read.format("delta").load(table.path).count() == 35
