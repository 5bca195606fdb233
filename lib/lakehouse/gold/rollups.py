"""Declared streaming rollups: tumbling windows over a topic, written to Delta and InfluxDB by one sink.

A gold contract with a ``rollup`` section (:class:`lakehouse.contracts.build.RollupSpec`) declares one:
which silver table's rows it counts, the window, the lateness, the groups and the aggregates. This module
runs any declaration; it knows no table. The rows are read live from the Kafka topic the silver table's
input is ingested from and go through that table's own declared parse, columns and reject rules
(:func:`lakehouse.silver.engine.parse` and :func:`~lakehouse.silver.engine.typed`), so a rollup counts what
silver keeps and a row silver would quarantine (a bad clock, a malformed payload) never moves its watermark.

A rollup and the rollups declared ``of`` it are one streaming query (:class:`RollupStream`): the stateful
aggregation runs once, and the ``foreachBatch`` sink computes every table from the same windows. The query
runs in **append mode with a watermark**: a window is emitted once, final, when the watermark (the newest
event time seen minus ``lateness``) passes its end, and every group of that window in the same micro-batch —
which is what lets a rollup ``of`` another unite one minute's sets of every group into exact distinct counts.

Every window reaches the sinks exactly once, so the Delta side is a plain append made idempotent with
``txnAppId``/``txnVersion`` = (checkpoint id, batch id), and the InfluxDB side is idempotent by nature (same
measurement + tags + timestamp overwrites the point). Replaying a micro-batch therefore changes nothing. The
price is latency: a window appears once the watermark has passed its end; rows later than that are left out
of the rollups (bronze and silver still have them).
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
from pyspark.sql.types import StructType

from lakehouse.config import Settings
from lakehouse.contracts.build import InputSpec, RollupSpec
from lakehouse.errors import ConfigError, ServiceError
from lakehouse.governance.catalog import ROLLUP_STAMPS, Catalog, TableContract, load_catalog
from lakehouse.kafka_clients import require_broker
from lakehouse.silver import engine
from lakehouse.silver.apply import IS_DELETE, q
from lakehouse.sources.kafka import kafka_source, to_bronze
from lakehouse.tables import ensure_table

log = logging.getLogger(__name__)

_WINDOW: Final = ("window_start", "window_end")
_INT_TYPES: Final = {"long", "bigint", "integer", "int", "short", "smallint", "tinyint", "byte"}
_FLOAT_TYPES: Final = {"double", "float", "real"}


# -- declarations -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rollup:
    """One declared rollup table: its contract and where it lives."""

    contract: TableContract
    spec: RollupSpec
    path: str

    @property
    def name(self) -> str:
        return self.contract.table


@dataclass(frozen=True)
class RollupStream:
    """A rollup over silver rows and the rollups declared ``of`` it: one streaming query and its sink.

    ``topic`` is where the rows are read live: the Kafka topic the source registry ingests ``input``'s
    bronze table from (None when no source of the registry lands it: the stream cannot run).
    """

    root: Rollup
    derived: tuple[Rollup, ...]
    silver: engine.SilverTable
    input: InputSpec
    event_time: str
    topic: str | None

    @property
    def name(self) -> str:
        """The query's name and checkpoint folder: ``gold_<root table>``."""
        return "gold_" + self.root.name.split(".", 1)[1]

    @property
    def tables(self) -> tuple[Rollup, ...]:
        return (self.root, *self.derived)


def _topics(settings: Settings, registry: str | Path | None) -> dict[str, str]:
    """Bronze table (``bronze.<name>``) → the Kafka topic it is ingested from, per Kafka-backed source."""
    from lakehouse.sources.registry import KafkaSource, MqttSource, PostgresCdcSource, load_registry

    found: dict[str, str] = {}
    for source in load_registry(settings, Path(registry) if registry else None).sources.values():
        if isinstance(source, KafkaSource | PostgresCdcSource):
            found.setdefault(f"bronze.{source.bronze}", source.topic)
        elif isinstance(source, MqttSource):
            found.setdefault(f"bronze.{source.bronze}", source.kafka_topic)
    return found


def _input(silver: engine.SilverTable, spec: RollupSpec, table: str) -> InputSpec:
    inputs = [i for i in silver.build.inputs if spec.input in (None, i.label)]
    if len(inputs) != 1:
        labels = [i.label for i in silver.build.inputs]
        what = f"no input {spec.input!r}" if spec.input else f"{len(labels)} inputs"
        raise ConfigError(f"{table}: rollup.rows {spec.rows} has {what} ({labels}); name one as rollup.input")
    return inputs[0]


def _stream(
    settings: Settings, catalog: Catalog, root: TableContract, topics: Mapping[str, str]
) -> RollupStream:
    spec = root.rollup
    assert spec is not None and spec.rows is not None
    table = root.table
    if spec.rows not in catalog.tables or catalog.tables[spec.rows].build is None:
        raise ConfigError(
            f"{table}: rollup.rows {spec.rows} is not a declared silver table (no build section)"
        )
    silver = engine.silver_table(settings, spec.rows)
    declared = _input(silver, spec, table)
    event_time = spec.event_time or (silver.build.event_time.column if silver.build.event_time else None)
    if event_time is None:
        raise ConfigError(f"{table}: rollup has no event_time and {spec.rows} declares no build.event_time")
    columns = {c.name: c.type for c in silver.contract.columns}
    if columns.get(event_time) != "timestamp":
        raise ConfigError(
            f"{table}: rollup.event_time {event_time!r} is not a timestamp column of {spec.rows} "
            f"({columns.get(event_time, 'no such column')})"
        )
    unknown = [c for c in spec.dedupe if c not in columns]
    if unknown:
        raise ConfigError(f"{table}: rollup.dedupe names {unknown}, which are not columns of {spec.rows}")
    derived = []
    for contract in catalog.tables.values():
        if contract.rollup is not None and contract.rollup.of == table:
            derived.append(_rollup(settings, contract))
    return RollupStream(
        root=_rollup(settings, root),
        derived=tuple(sorted(derived, key=lambda r: r.name)),
        silver=silver,
        input=declared,
        event_time=event_time,
        topic=topics.get(declared.table),
    )


def _rollup(settings: Settings, contract: TableContract) -> Rollup:
    assert contract.rollup is not None
    layer, _, name = contract.table.partition(".")
    return Rollup(contract, contract.rollup, settings.table_path(layer, name))


def declared_streams(
    settings: Settings, *, catalog: Catalog | None = None, registry: str | Path | None = None
) -> list[RollupStream]:
    """Every declared rollup stream, by root table name.

    Raises:
        ConfigError: a rollup ``of`` a table that is no rollup over rows, or a declaration that does not hold
            (unknown silver table, input, event time or dedupe column).
    """
    catalog = catalog or load_catalog(settings)
    rollups = {name: c for name, c in catalog.tables.items() if c.rollup is not None}
    over_rows = {name for name, c in rollups.items() if c.rollup is not None and c.rollup.rows is not None}
    for name, contract in rollups.items():
        of = contract.rollup.of if contract.rollup is not None else None
        if of is not None and of not in over_rows:
            raise ConfigError(f"{name}: rollup.of {of} is not a rollup over silver rows")
    topics = _topics(settings, registry)
    return [
        _stream(settings, catalog, contract, topics)
        for name, contract in sorted(rollups.items())
        if contract.rollup is not None and contract.rollup.rows is not None
    ]


def rollup_stream(settings: Settings, table: str, *, registry: str | Path | None = None) -> RollupStream:
    """The stream whose root is ``table`` (e.g. ``"gold.rt_device_minute"``).

    Raises:
        ConfigError: no such declared rollup over silver rows.
    """
    for stream in declared_streams(settings, registry=registry):
        if stream.root.name == table:
            return stream
    raise ConfigError(f"{table} is not a declared rollup over silver rows (catalog/gold/, section rollup)")


# -- transforms ---------------------------------------------------------------------------------------------
def rows(records: DataFrame, stream: RollupStream) -> DataFrame:
    """Kafka source rows (streaming or static) → the silver table's typed rows that silver would keep.

    The records go through the table's declared parse and columns; a row with a reject reason (malformed,
    invalid value, a rule of the declaration), a delete or no event time is left out.
    """
    parsed = engine.parse(to_bronze(records), stream.input, stream.silver)
    typed = engine.typed(parsed, stream.input, stream.silver)
    keep = ~F.col(IS_DELETE) & F.col(engine.REASON).isNull() & F.col(stream.event_time).isNotNull()
    return typed.where(keep).select(*[F.col(q(c)) for c in stream.silver.computed_columns()])


def windows(frame: DataFrame, stream: RollupStream, lateness: str | None = None) -> DataFrame:
    """The stateful aggregation of :func:`rows`: per window and group, the root's ``aggregate`` columns.

    Watermarked on the event time by ``lateness`` (default the declared one), so a streaming query can run it
    in append mode; ``dedupe`` drops re-deliveries first (within the watermark on a stream).

    Returns:
        ``window_start``, ``window_end``, the group columns and the aggregate columns.
    """
    spec = stream.root.spec
    watermarked = frame.withWatermark(stream.event_time, lateness or spec.lateness)
    if spec.dedupe:
        watermarked = (
            watermarked.dropDuplicatesWithinWatermark(spec.dedupe)
            if watermarked.isStreaming
            else watermarked.dropDuplicates(spec.dedupe)
        )
    window = F.window(stream.event_time, spec.window)
    grouped = watermarked.groupBy(
        window.alias("_window"), *[F.expr(e).alias(n) for n, e in spec.group_by.items()]
    ).agg(*_aggregates(spec, stream.root.name))
    return grouped.select(
        F.col("_window.start").alias("window_start"),
        F.col("_window.end").alias("window_end"),
        *spec.group_by,
        *spec.aggregate,
    )


def _aggregates(spec: RollupSpec, table: str) -> list[Any]:
    try:
        return [F.expr(e).alias(n) for n, e in spec.aggregate.items()]
    except Exception as exc:
        raise ConfigError(f"{table}: rollup.aggregate does not parse as Spark SQL: {exc}") from exc


def table_rows(frame: DataFrame, rollup: Rollup) -> DataFrame:
    """Windows of the stream's root (:func:`windows`) → the rows of ``rollup``'s table, in contract order.

    The root's table projects its ``columns``; a rollup ``of`` it first regroups the windows by its own
    ``group_by`` and ``aggregate``. Every column is cast to its contract type; the stamps are left out.
    """
    spec = rollup.spec
    if spec.of is not None:
        frame = frame.groupBy(
            *[F.col(c) for c in _WINDOW], *[F.expr(e).alias(n) for n, e in spec.group_by.items()]
        ).agg(*_aggregates(spec, rollup.name))
    values = [
        F.expr(spec.columns.get(c.name, q(c.name))).cast(c.type).alias(c.name)
        for c in rollup.contract.columns
        if c.name not in ROLLUP_STAMPS[2:]
    ]
    return frame.select(*values)


# -- InfluxDB -----------------------------------------------------------------------------------------------
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

    Field values are coerced to the declared type (``int``, ``float``, ``str`` or ``bool``), so a field never
    changes type between writes (InfluxDB rejects that); null fields are left out, and a row whose fields are
    all null is skipped. Naive datetimes are taken as UTC (the Spark session time zone).

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


# -- the sink -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """How one rollup table's rows become InfluxDB points (plain data: it travels into ``foreachBatch``)."""

    name: str
    tags: tuple[str, ...]
    fields: tuple[tuple[str, type], ...]

    @classmethod
    def of(cls, rollup: Rollup) -> Measurement | None:
        declared = rollup.spec.influx
        if declared is None:
            return None
        types = {c.name: c.type for c in rollup.contract.columns}
        names = declared.fields or [n for n in types if n not in {*ROLLUP_STAMPS, *declared.tags}]
        fields = []
        for name in names:
            kind = types[name]
            python: type = (
                int
                if kind in _INT_TYPES
                else float
                if kind in _FLOAT_TYPES or kind.startswith("decimal")
                else bool
                if kind == "boolean"
                else str
            )
            fields.append((name, python))
        return cls(declared.measurement, tuple(declared.tags), tuple(fields))


@dataclass(frozen=True)
class RollupSink:
    """The ``foreachBatch`` body of one stream: every table's rows from the same windows, written once.

    It holds the rollups (their contracts) and the targets; a replayed batch id changes nothing.
    """

    tables: tuple[Rollup, ...]
    paths: tuple[str, ...]
    app_id: str
    influx: InfluxTarget | None = None

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        write_batch(batch, batch_id, self)


def write_batch(batch: DataFrame, batch_id: int, sink: RollupSink) -> None:
    """Append each table's rows with ``txnAppId``/``txnVersion`` (Delta skips a replayed batch) and write
    the same rows to InfluxDB (a replayed point overwrites itself)."""
    frame = batch.localCheckpoint(eager=True)
    txn = {"txnAppId": sink.app_id, "txnVersion": str(batch_id)}
    points: list[dict[str, Any]] = []
    for rollup, path in zip(sink.tables, sink.paths, strict=True):
        values = table_rows(frame, rollup)
        stamped = values.withColumn("batch_id", F.lit(batch_id).cast("long")).withColumn(
            "emitted_at", F.current_timestamp()
        )
        columns = [c.name for c in rollup.contract.columns]
        stamped.select(*columns).write.format("delta").mode("append").options(**txn).save(path)
        measurement = Measurement.of(rollup) if sink.influx is not None else None
        if measurement is not None:
            points += to_points(
                (row.asDict() for row in values.collect()),
                measurement=measurement.name,
                tags=measurement.tags,
                fields=dict(measurement.fields),
            )
    if sink.influx is not None:
        sink.influx.write(points)
    log.info("rollup batch %d written to %s", batch_id, ", ".join(r.name for r in sink.tables))


# -- the query ----------------------------------------------------------------------------------------------
def app_id_for(checkpoint: str, prefix: str) -> str:
    """A stable id for idempotent Delta writes, born with the checkpoint (a new checkpoint, a new id)."""
    marker = Path(checkpoint) / "lakehouse_txn_app_id"
    marker.parent.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(f"{prefix}-{uuid.uuid4()}")
    return marker.read_text().strip()


def _schema(rollup: Rollup) -> StructType:
    schema = StructType.fromDDL(", ".join(f"{q(c.name)} {c.type}" for c in rollup.contract.columns))
    assert isinstance(schema, StructType)  # a column list always parses to a struct
    return schema


def start_rollup(
    spark: SparkSession,
    settings: Settings,
    stream: RollupStream,
    *,
    topic: str | None = None,
    paths: Mapping[str, str] | None = None,
    checkpoint: str | None = None,
    influx: InfluxTarget | None = None,
    lateness: str | None = None,
    trigger_interval: str | None = None,
    available_now: bool = False,
) -> StreamingQuery:
    """Start a declared rollup stream: its topic → every table of the stream (and InfluxDB).

    Args:
        spark: a session from :func:`lakehouse.spark.get_spark`.
        settings: the environment (broker, paths, trigger interval).
        stream: from :func:`rollup_stream` or :func:`declared_streams`.
        topic: read this topic instead of the stream's (tests, a replay).
        paths: table name → Delta path, overriding the environment's locations (tests).
        checkpoint: override ``settings.checkpoint_path(stream.name)``.
        influx: also write the rows to InfluxDB (None: Delta only).
        lateness: the watermark delay (default the declared one).
        trigger_interval: processing-time trigger (default ``settings.streaming.trigger_interval``).
        available_now: drain what is in Kafka and stop (tests, catch-up runs).

    Returns:
        The running query (append mode, one ``foreachBatch`` writing every sink idempotently).

    Raises:
        ConfigError: no topic lands the stream's input.
        ServiceError: no broker answers.
    """
    topic = topic or stream.topic
    if topic is None:
        raise ConfigError(
            f"{stream.root.name}: no Kafka-backed source of the registry lands {stream.input.table}, "
            "so its rows cannot be read live"
        )
    require_broker(settings.kafka.bootstrap_servers)
    paths = paths or {}
    targets = tuple(paths.get(r.name, r.path) for r in stream.tables)
    for rollup, path in zip(stream.tables, targets, strict=True):
        ensure_table(spark, path, _schema(rollup))
    checkpoint = checkpoint or settings.checkpoint_path(stream.name)
    sink = RollupSink(stream.tables, targets, app_id_for(checkpoint, stream.name), influx)
    source = kafka_source(
        spark,
        settings.kafka.bootstrap_servers,
        topic,
        max_offsets_per_trigger=settings.streaming.max_offsets_per_trigger,
    )
    writer = (
        windows(rows(source, stream), stream, lateness)
        .writeStream.outputMode("append")
        .foreachBatch(sink)
        .option("checkpointLocation", checkpoint)
        .queryName(f"{stream.name}_{topic}_{settings.env_name}")
    )
    interval = trigger_interval or settings.streaming.trigger_interval
    writer = writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime=interval)
    log.info("starting rollup %s of %s into %s", stream.name, topic, ", ".join(targets))
    query: StreamingQuery = writer.start()
    return query
