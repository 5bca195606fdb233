"""Real-time gold: per-minute windows over Kafka, written to Delta and InfluxDB by one idempotent sink.

Two streaming rollups, each a plain DataFrame → DataFrame transform plus a ``foreachBatch`` sink:

* **clickstream** (:func:`clickstream_events` → :func:`events_per_minute`): events per minute and event type,
  and the *exact* number of active sessions per minute. The stateful aggregation keeps, per (minute, event
  type), the event count and the set of session ids; the sink turns the sets into distinct counts per type
  and, by unioning the sets of one minute, into active sessions per minute (``gold/rt_sessions_per_minute``).
  That works because the query runs in **append mode with a watermark**: a window is emitted once, when the
  watermark passes its end, and every event type of that window is emitted in the same micro-batch.
* **IoT telemetry** (:func:`device_telemetry` → :func:`device_minute`): per device and minute, avg/min/max
  temperature, avg humidity, max CO2, min battery and messages. Re-deliveries of one reading (same device and
  ``seq``, e.g. MQTT QoS 1) are dropped within the watermark before aggregating.

Append mode was chosen over update mode: every window reaches the sinks exactly once and final, so the Delta
side is a plain append made idempotent with ``txnAppId``/``txnVersion`` = (checkpoint id, batch id), and the
InfluxDB side is naturally idempotent (same measurement + tags + timestamp overwrites the point). Replaying a
micro-batch therefore changes nothing. The price is latency: a minute appears once the watermark (the newest
event time seen minus ``lateness``) has passed its end; events later than that are dropped from the rollups
(bronze and silver still have them).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.query import StreamingQuery
from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.clickstream import RAW_EVENT
from lakehouse.clickstream import TOPIC as CLICKSTREAM_TOPIC
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, ServiceError
from lakehouse.kafka_clients import require_broker
from lakehouse.sources.kafka import kafka_source
from lakehouse.tables import ensure_table

log = logging.getLogger(__name__)

# How late an event may arrive (after the newest event time seen) and still count in its minute. Real-time
# rollups want this short; ``settings.streaming.watermark`` (silver's lateness bound) is far too long here.
DEFAULT_LATENESS: Final = "1 minute"
WINDOW: Final = "1 minute"
# The Kafka topic of bridged MQTT telemetry when the registry has no mqtt source.
TELEMETRY_TOPIC: Final = "iot.telemetry"

EVENTS_MEASUREMENT: Final = "events_per_minute"
SESSIONS_MEASUREMENT: Final = "active_sessions_per_minute"
DEVICE_MEASUREMENT: Final = "device_minute"

# The fields of a bridged MQTT reading (Kafka key: device_id) this rollup reads; the record is the one the
# iot_telemetry payload declares (sources.yaml), and silver reads it whole through that declaration.
IOT_TELEMETRY: Final = StructType(
    [
        StructField("device_id", StringType()),
        StructField("seq", LongType()),
        StructField("device_time", StringType()),
        StructField("site", StringType()),
        *[
            StructField(name, DoubleType())
            for name in ("temperature_c", "humidity_pct", "co2_ppm", "battery_pct")
        ],
    ]
)

RT_EVENTS_PER_MINUTE: Final = StructType(
    [
        StructField("window_start", TimestampType(), False),
        StructField("window_end", TimestampType(), False),
        StructField("event_type", StringType(), False),
        StructField("events", LongType(), False),
        StructField("sessions", LongType(), False),
        StructField("batch_id", LongType(), False),
        StructField("emitted_at", TimestampType(), False),
    ]
)

RT_SESSIONS_PER_MINUTE: Final = StructType(
    [
        StructField("window_start", TimestampType(), False),
        StructField("window_end", TimestampType(), False),
        StructField("active_sessions", LongType(), False),
        StructField("events", LongType(), False),
        StructField("batch_id", LongType(), False),
        StructField("emitted_at", TimestampType(), False),
    ]
)

RT_DEVICE_MINUTE: Final = StructType(
    [
        StructField("window_start", TimestampType(), False),
        StructField("window_end", TimestampType(), False),
        StructField("device_id", StringType(), False),
        StructField("site", StringType()),
        StructField("avg_temperature_c", DoubleType()),
        StructField("min_temperature_c", DoubleType()),
        StructField("max_temperature_c", DoubleType()),
        StructField("avg_humidity_pct", DoubleType()),
        StructField("max_co2_ppm", DoubleType()),
        StructField("min_battery_pct", DoubleType()),
        StructField("messages", LongType(), False),
        StructField("batch_id", LongType(), False),
        StructField("emitted_at", TimestampType(), False),
    ]
)

_DEVICE_FIELDS: Final = (
    "avg_temperature_c",
    "min_temperature_c",
    "max_temperature_c",
    "avg_humidity_pct",
    "max_co2_ppm",
    "min_battery_pct",
    "messages",
)

# Epoch-millisecond bounds of a plausible client clock (2000-01-01 .. 2100-01-01), as in silver.
_MIN_TS, _MAX_TS = 946_684_800_000, 4_102_444_800_000


def _require(frame: DataFrame, columns: Iterable[str], who: str) -> None:
    missing = set(columns) - set(frame.columns)
    if missing:
        raise ConfigError(f"{who} needs columns {sorted(missing)} (has {sorted(frame.columns)})")


# -- transforms -------------------------------------------------------------------------------------------
def clickstream_events(records: DataFrame) -> DataFrame:
    """Kafka (or bronze) rows → ``event_time``, ``event_type``, ``session_id`` of the parseable events.

    Both payload versions are read: v1 ``ts`` (epoch ms) and v2 ``event_time`` (ISO-8601). Rows without a
    usable event time or event type are left out (silver quarantines them; a rollup just skips them).

    Args:
        records: a DataFrame with a ``value`` column (binary or string JSON), streaming or static.
    """
    _require(records, ["value"], "clickstream_events")
    p = F.from_json(F.col("value").cast("string"), RAW_EVENT)
    parsed = records.select(p.alias("p"))
    ts = F.col("p.ts")
    ts_ok = ts.between(_MIN_TS, _MAX_TS)
    event_time = F.when(F.col("p.schema_version") == 1, F.timestamp_millis(F.when(ts_ok, ts))).when(
        F.col("p.schema_version") == 2, F.try_to_timestamp(F.col("p.event_time"))
    )
    return parsed.select(
        event_time.alias("event_time"),
        F.col("p.event_type").alias("event_type"),
        F.col("p.session_id").alias("session_id"),
    ).where(F.col("event_time").isNotNull() & F.col("event_type").isNotNull())


def events_per_minute(events: DataFrame, lateness: str = DEFAULT_LATENESS) -> DataFrame:
    """Tumbling one-minute windows per event type: ``events`` and the set of ``session_ids`` seen.

    Watermarked on ``event_time`` by ``lateness``, so a streaming query can run it in append mode.
    :func:`events_rows` and :func:`sessions_rows` turn its output into the two gold tables.

    Returns:
        ``window_start``, ``window_end``, ``event_type``, ``events`` (long), ``session_ids`` (array).
    """
    _require(events, ["event_time", "event_type", "session_id"], "events_per_minute")
    window = F.window("event_time", WINDOW)
    return (
        events.withWatermark("event_time", lateness)
        .groupBy(window.alias("window"), F.col("event_type"))
        .agg(F.count(F.lit(1)).alias("events"), F.collect_set("session_id").alias("session_ids"))
        .select(
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            "event_type",
            "events",
            "session_ids",
        )
    )


def events_rows(windows: DataFrame) -> DataFrame:
    """Output of :func:`events_per_minute` → events and distinct sessions per minute and event type."""
    _require(windows, ["window_start", "window_end", "event_type", "events", "session_ids"], "events_rows")
    return windows.select(
        "window_start",
        "window_end",
        "event_type",
        F.col("events").cast("long").alias("events"),
        F.size("session_ids").cast("long").alias("sessions"),
    )


def sessions_rows(windows: DataFrame) -> DataFrame:
    """Output of :func:`events_per_minute` → exact active sessions (and events) per minute, all types."""
    _require(windows, ["window_start", "window_end", "events", "session_ids"], "sessions_rows")
    return windows.groupBy("window_start", "window_end").agg(
        F.size(F.array_distinct(F.flatten(F.collect_list("session_ids"))))
        .cast("long")
        .alias("active_sessions"),
        F.sum("events").cast("long").alias("events"),
    )


def device_telemetry(records: DataFrame) -> DataFrame:
    """Kafka (or bronze) rows of bridged MQTT telemetry → typed readings with ``device_time`` a timestamp.

    Readings without a device id or a parseable ``device_time`` are left out.
    """
    _require(records, ["value"], "device_telemetry")
    p = F.from_json(F.col("value").cast("string"), IOT_TELEMETRY)
    return (
        records.select(p.alias("r"))
        .select(
            F.col("r.device_id").alias("device_id"),
            F.col("r.seq").alias("seq"),
            F.try_to_timestamp(F.col("r.device_time")).alias("device_time"),
            F.coalesce(F.col("r.site"), F.lit("unknown")).alias("site"),
            F.col("r.temperature_c").alias("temperature_c"),
            F.col("r.humidity_pct").alias("humidity_pct"),
            F.col("r.co2_ppm").alias("co2_ppm"),
            F.col("r.battery_pct").alias("battery_pct"),
        )
        .where(F.col("device_id").isNotNull() & F.col("device_time").isNotNull())
    )


def device_minute(
    telemetry: DataFrame, lateness: str = DEFAULT_LATENESS, *, dedupe: bool = True
) -> DataFrame:
    """Per-device, per-minute rollup of :func:`device_telemetry` (watermarked; append-mode ready).

    Args:
        telemetry: typed readings.
        lateness: how late a reading may arrive and still count.
        dedupe: drop re-deliveries of one reading (same ``device_id`` and ``seq``) first. On a streaming
            frame this is ``dropDuplicatesWithinWatermark``; on a static frame a plain ``dropDuplicates``.

    Returns:
        ``window_start``, ``window_end``, ``device_id``, ``site`` and the measures of
        :data:`RT_DEVICE_MINUTE`.
    """
    _require(telemetry, ["device_id", "seq", "device_time", "site", "temperature_c"], "device_minute")
    readings = telemetry.withWatermark("device_time", lateness)
    if dedupe:
        keys = ["device_id", "seq"]
        readings = (
            readings.dropDuplicatesWithinWatermark(keys)
            if readings.isStreaming
            else readings.dropDuplicates(keys)
        )
    window = F.window("device_time", WINDOW)
    return (
        readings.groupBy(window.alias("window"), "device_id", "site")
        .agg(
            F.avg("temperature_c").alias("avg_temperature_c"),
            F.min("temperature_c").alias("min_temperature_c"),
            F.max("temperature_c").alias("max_temperature_c"),
            F.avg("humidity_pct").alias("avg_humidity_pct"),
            F.max("co2_ppm").alias("max_co2_ppm"),
            F.min("battery_pct").alias("min_battery_pct"),
            F.count(F.lit(1)).cast("long").alias("messages"),
        )
        .select(
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            "device_id",
            "site",
            *_DEVICE_FIELDS,
        )
    )


# -- InfluxDB ---------------------------------------------------------------------------------------------
def _epoch_seconds(value: Any) -> int:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp())
    if isinstance(value, int):
        return value
    raise ValueError(f"a point time must be a datetime or epoch seconds, not {type(value).__name__}")


def to_points(
    rows: Iterable[Mapping[str, Any]],
    *,
    measurement: str,
    tags: Sequence[str],
    fields: Mapping[str, type],
    time_column: str = "window_start",
) -> list[dict[str, Any]]:
    """Rows → InfluxDB points (dicts for ``InfluxDBClient.write_points(..., time_precision="s")``).

    Field values are coerced to the declared type (``int`` or ``float``), so a field never changes type
    between writes (InfluxDB rejects that); null fields are left out, and a row whose fields are all null is
    skipped. Naive datetimes are taken as UTC (the Spark session time zone).

    Example:
        >>> row = {"window_start": datetime(2024, 1, 1, tzinfo=UTC), "event_type": "search", "events": 3}
        >>> to_points([row], measurement="events", tags=["event_type"], fields={"events": int})[0]["time"]
        1704067200
    """
    points = []
    for row in rows:
        values = {name: kind(row[name]) for name, kind in fields.items() if row.get(name) is not None}
        if not values:
            continue
        points.append(
            {
                "measurement": measurement,
                "tags": {tag: str(row[tag]) for tag in tags if row.get(tag) not in (None, "")},
                "time": _epoch_seconds(row[time_column]),
                "fields": values,
            }
        )
    return points


def to_line_protocol(points: Sequence[Mapping[str, Any]]) -> str:
    """The InfluxDB line protocol of :func:`to_points` output (what the client sends), one line per point."""
    from influxdb.line_protocol import make_lines

    return str(make_lines({"points": list(points)}, precision="s"))


@dataclass(frozen=True)
class InfluxTarget:
    """Where the rollups go in InfluxDB 1.x (picklable: it travels into ``foreachBatch``)."""

    host: str
    port: int
    database: str
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> InfluxTarget:
        influx = settings.influxdb
        return cls(host=influx.host, port=influx.port, database=influx.database)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ping(self) -> None:
        """Raise :class:`ServiceError` unless InfluxDB answers."""
        from influxdb import InfluxDBClient

        client = InfluxDBClient(host=self.host, port=self.port, timeout=self.timeout_s, retries=1)
        try:
            client.ping()
        except Exception as exc:
            raise ServiceError(
                f"InfluxDB does not answer at {self.url}: start it with `lakehouse up --only influxdb` "
                f"(or run without the InfluxDB sink): {exc}"
            ) from exc
        finally:
            client.close()

    def write(self, points: Sequence[Mapping[str, Any]]) -> int:
        """Write points (second precision); same measurement + tags + time overwrites. Returns the count."""
        if not points:
            return 0
        from influxdb import InfluxDBClient

        client = InfluxDBClient(
            host=self.host, port=self.port, database=self.database, timeout=self.timeout_s, retries=3
        )
        try:
            client.write_points(list(points), time_precision="s", batch_size=5000)
        finally:
            client.close()
        return len(points)


# -- sinks ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventsSink:
    """Targets of the clickstream rollup: two Delta tables and (optionally) InfluxDB."""

    events_table: str
    sessions_table: str
    app_id: str
    influx: InfluxTarget | None = None

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        write_events_batch(batch, batch_id, self)


@dataclass(frozen=True)
class DeviceSink:
    """Targets of the device rollup: a Delta table and (optionally) InfluxDB."""

    table: str
    app_id: str
    influx: InfluxTarget | None = None

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        write_device_batch(batch, batch_id, self)


def _stamp(frame: DataFrame, batch_id: int) -> DataFrame:
    return frame.withColumn("batch_id", F.lit(batch_id).cast("long")).withColumn(
        "emitted_at", F.current_timestamp()
    )


def write_events_batch(batch: DataFrame, batch_id: int, sink: EventsSink) -> None:
    """``foreachBatch`` body of the clickstream rollup (safe to replay with the same ``batch_id``).

    Appends to both Delta tables with ``txnAppId``/``txnVersion`` (a replayed batch is skipped by Delta) and
    writes the same rows to InfluxDB (a replayed point overwrites itself).
    """
    windows = batch.localCheckpoint(eager=True)
    txn = {"txnAppId": sink.app_id, "txnVersion": str(batch_id)}
    per_type = events_rows(windows)
    per_minute = sessions_rows(windows)
    columns = [field.name for field in RT_EVENTS_PER_MINUTE.fields]
    _stamp(per_type, batch_id).select(*columns).write.format("delta").mode("append").options(**txn).save(
        sink.events_table
    )
    columns = [field.name for field in RT_SESSIONS_PER_MINUTE.fields]
    _stamp(per_minute, batch_id).select(*columns).write.format("delta").mode("append").options(**txn).save(
        sink.sessions_table
    )
    if sink.influx is not None:
        points = to_points(
            (row.asDict() for row in per_type.collect()),
            measurement=EVENTS_MEASUREMENT,
            tags=["event_type"],
            fields={"events": int, "sessions": int},
        )
        points += to_points(
            (row.asDict() for row in per_minute.collect()),
            measurement=SESSIONS_MEASUREMENT,
            tags=[],
            fields={"active_sessions": int, "events": int},
        )
        sink.influx.write(points)
    log.info("rt events batch %d written", batch_id)


def write_device_batch(batch: DataFrame, batch_id: int, sink: DeviceSink) -> None:
    """``foreachBatch`` body of the device rollup (safe to replay with the same ``batch_id``)."""
    rows = batch.localCheckpoint(eager=True)
    txn = {"txnAppId": sink.app_id, "txnVersion": str(batch_id)}
    columns = [field.name for field in RT_DEVICE_MINUTE.fields]
    _stamp(rows, batch_id).select(*columns).write.format("delta").mode("append").options(**txn).save(
        sink.table
    )
    if sink.influx is not None:
        kinds: dict[str, type] = {name: float for name in _DEVICE_FIELDS}
        kinds["messages"] = int
        points = to_points(
            (row.asDict() for row in rows.collect()),
            measurement=DEVICE_MEASUREMENT,
            tags=["device_id", "site"],
            fields=kinds,
        )
        sink.influx.write(points)
    log.info("rt device batch %d written", batch_id)


# -- queries ----------------------------------------------------------------------------------------------
def app_id_for(checkpoint: str, prefix: str) -> str:
    """A stable id for idempotent Delta writes, born with the checkpoint (a new checkpoint, a new id)."""
    marker = Path(checkpoint) / "lakehouse_txn_app_id"
    marker.parent.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(f"{prefix}-{uuid.uuid4()}")
    return marker.read_text().strip()


def telemetry_topic(settings: Settings) -> str:
    """The Kafka topic of bridged IoT telemetry: the first mqtt source's ``kafka_topic`` in the registry."""
    from lakehouse.sources.registry import MqttSource, load_registry

    for source in load_registry(settings).sources.values():
        if isinstance(source, MqttSource):
            return source.kafka_topic
    return TELEMETRY_TOPIC


def _trigger(writer: Any, available_now: bool, interval: str) -> Any:
    return writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime=interval)


def start_events_per_minute(
    spark: SparkSession,
    settings: Settings,
    *,
    topic: str = CLICKSTREAM_TOPIC,
    events_table: str | None = None,
    sessions_table: str | None = None,
    checkpoint: str | None = None,
    influx: InfluxTarget | None = None,
    lateness: str = DEFAULT_LATENESS,
    trigger_interval: str | None = None,
    available_now: bool = False,
) -> StreamingQuery:
    """Start the clickstream rollup: Kafka → gold ``rt_events_per_minute`` and ``rt_sessions_per_minute``.

    Args:
        spark: a session from :func:`lakehouse.spark.get_spark`.
        settings: the environment (broker, paths, trigger interval).
        topic: the clickstream topic.
        events_table, sessions_table, checkpoint: override the default locations (tests).
        influx: also write the windows to InfluxDB (None: Delta only).
        lateness: the watermark delay.
        trigger_interval: processing-time trigger (default ``settings.streaming.trigger_interval``).
        available_now: drain what is in Kafka and stop (tests, catch-up runs).

    Returns:
        The running query (append mode, one ``foreachBatch`` writing every sink idempotently).
    """
    require_broker(settings.kafka.bootstrap_servers)
    events_table = events_table or settings.table_path("gold", "rt_events_per_minute")
    sessions_table = sessions_table or settings.table_path("gold", "rt_sessions_per_minute")
    checkpoint = checkpoint or settings.checkpoint_path("gold_rt_events_per_minute")
    ensure_table(spark, events_table, RT_EVENTS_PER_MINUTE)
    ensure_table(spark, sessions_table, RT_SESSIONS_PER_MINUTE)
    sink = EventsSink(events_table, sessions_table, app_id_for(checkpoint, "rt-events"), influx)
    source = kafka_source(
        spark,
        settings.kafka.bootstrap_servers,
        topic,
        max_offsets_per_trigger=settings.streaming.max_offsets_per_trigger,
    )
    writer = (
        events_per_minute(clickstream_events(source), lateness)
        .writeStream.outputMode("append")
        .foreachBatch(sink)
        .option("checkpointLocation", checkpoint)
        .queryName(f"gold_rt_events_{topic}_{settings.env_name}")
    )
    writer = _trigger(writer, available_now, trigger_interval or settings.streaming.trigger_interval)
    log.info("starting real-time events rollup of %s into %s", topic, events_table)
    query: StreamingQuery = writer.start()
    return query


def start_device_minute(
    spark: SparkSession,
    settings: Settings,
    *,
    topic: str | None = None,
    table: str | None = None,
    checkpoint: str | None = None,
    influx: InfluxTarget | None = None,
    lateness: str = DEFAULT_LATENESS,
    trigger_interval: str | None = None,
    available_now: bool = False,
) -> StreamingQuery:
    """Start the IoT rollup: Kafka telemetry ``topic`` → gold ``rt_device_minute`` (and InfluxDB).

    Arguments as in :func:`start_events_per_minute`; ``topic`` defaults to :func:`telemetry_topic`.
    """
    require_broker(settings.kafka.bootstrap_servers)
    topic = topic or telemetry_topic(settings)
    table = table or settings.table_path("gold", "rt_device_minute")
    checkpoint = checkpoint or settings.checkpoint_path("gold_rt_device_minute")
    ensure_table(spark, table, RT_DEVICE_MINUTE)
    sink = DeviceSink(table, app_id_for(checkpoint, "rt-device"), influx)
    source = kafka_source(
        spark,
        settings.kafka.bootstrap_servers,
        topic,
        max_offsets_per_trigger=settings.streaming.max_offsets_per_trigger,
    )
    writer = (
        device_minute(device_telemetry(source), lateness)
        .writeStream.outputMode("append")
        .foreachBatch(sink)
        .option("checkpointLocation", checkpoint)
        .queryName(f"gold_rt_device_{topic}_{settings.env_name}")
    )
    writer = _trigger(writer, available_now, trigger_interval or settings.streaming.trigger_interval)
    log.info("starting real-time device rollup of %s into %s", topic, table)
    query: StreamingQuery = writer.start()
    return query
