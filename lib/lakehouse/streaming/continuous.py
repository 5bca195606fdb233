"""Continuous mode: one supervisor process per environment keeps every streaming query running.

The supervisor holds a Spark Connect session and runs

* the bronze ingest of every Kafka-backed source in the registry (``kafka`` → its topic, ``postgres_cdc`` →
  its topic, ``mqtt`` → its ``kafka_topic``) — the very query and checkpoint the DAG's ``availableNow`` run
  uses (:func:`lakehouse.sources.kafka.start_ingest` with ``continuous=True``), so the two modes hand over
  to each other without losing or repeating a record;
* the declared silver tables' inputs that those bronze tables feed, and the declared gold rollups
  (:mod:`lakehouse.gold.rollups`) whose rows those topics carry.

Every few seconds it writes a status JSON (per query: id, active, last batch, rows, rates, last progress time
and the Kafka lag = end offsets − the offsets the query last committed in its checkpoint), restarts a query
that failed or stopped with exponential backoff, and on SIGTERM/SIGINT stops every query and exits.

Files (under the environment's workspace): ``run/stream.pid``, ``run/stream.lock`` (an exclusive ``flock``:
the guarantee that only one supervisor runs per environment), ``run/stream-status.json``, ``logs/stream.log``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from lakehouse import lag as lag_module
from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.lag import LagProbe
from lakehouse.state import write_json

log = logging.getLogger(__name__)

Kind = Literal["bronze", "silver", "rollup"]


# -- what to run --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuerySpec:
    """One query the supervisor keeps running."""

    name: str
    kind: Kind
    topic: str
    table: str
    checkpoint: str
    silver: str | None = None  # kind silver: the declared table (``silver.<name>``) …
    input: str | None = None  # … and the input (label) this query streams into it
    rollup: str | None = None  # kind rollup: the root table of the declared stream (``gold.<name>``)


@dataclass(frozen=True)
class SupervisorOptions:
    """How the supervisor runs (also its command line, so a detached start passes them on)."""

    registry: str | None = None
    realtime: bool = True
    silver: bool = True
    influx: bool = True
    trigger_interval: str | None = None
    lateness: str | None = None
    status_interval: float = 3.0
    max_backoff: float = 60.0

    def to_args(self) -> list[str]:
        args = ["--status-interval", str(self.status_interval), "--max-backoff", str(self.max_backoff)]
        if self.registry:
            args += ["--registry", self.registry]
        if not self.realtime:
            args.append("--no-realtime")
        if not self.silver:
            args.append("--no-silver")
        if not self.influx:
            args.append("--no-influx")
        if self.trigger_interval:
            args += ["--trigger", self.trigger_interval]
        if self.lateness:
            args += ["--lateness", self.lateness]
        return args


def plan(settings: Settings, options: SupervisorOptions | None = None) -> list[QuerySpec]:
    """The queries continuous mode runs: bronze per Kafka-backed source, the declared silver tables' inputs
    that those bronze tables feed, then the declared gold rollups whose rows they carry.

    Raises:
        ConfigError: the registry is missing or invalid.
    """
    from lakehouse.sources.registry import KafkaSource, MqttSource, PostgresCdcSource, load_registry

    options = options or SupervisorOptions()
    registry = load_registry(settings, Path(options.registry) if options.registry else None)
    specs: list[QuerySpec] = []
    topics: set[str] = set()
    for source in registry.sources.values():
        if isinstance(source, KafkaSource | PostgresCdcSource):
            topic = source.topic
        elif isinstance(source, MqttSource):
            topic = source.kafka_topic
        else:
            continue
        topics.add(topic)
        specs.append(
            QuerySpec(
                name=f"bronze_{topic}",
                kind="bronze",
                topic=topic,
                table=settings.table_path("bronze", source.bronze),
                checkpoint=settings.checkpoint_path(f"bronze_{topic}"),
            )
        )
    if options.silver:
        specs += _silver_specs(settings, {spec.table: spec.topic for spec in specs})
    if options.realtime:
        from lakehouse.gold.rollups import declared_streams

        for stream in declared_streams(settings, registry=options.registry):
            if stream.topic in topics:
                specs.append(
                    QuerySpec(
                        name=stream.name,
                        kind="rollup",
                        topic=stream.topic,
                        table=stream.root.path,
                        checkpoint=settings.checkpoint_path(stream.name),
                        rollup=stream.root.name,
                    )
                )
    return specs


def _silver_specs(settings: Settings, bronze: dict[str, str]) -> list[QuerySpec]:
    """One query per input of a declared silver table that reads a bronze table continuous mode ingests.

    The query runs the declaration's engine with a processing-time trigger on the input's own checkpoint,
    so the DAG's ``availableNow`` run of the same table leaves that input to it
    (:func:`running_silver_inputs`).
    """
    from lakehouse.silver import engine

    specs = []
    for name in engine.declared_tables(settings):
        table = engine.silver_table(settings, name)
        for spec in table.build.inputs:
            path = table.input_paths[spec.label]
            if path not in bronze:
                continue
            specs.append(
                QuerySpec(
                    name=f"{name.replace('.', '_')}_{spec.label}",
                    kind="silver",
                    topic=bronze[path],
                    table=table.path,
                    checkpoint=engine.input_checkpoint(table, spec),
                    silver=name,
                    input=spec.label,
                )
            )
    return specs


# -- files --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SupervisorFiles:
    """Where the supervisor of one environment keeps its pid, lock, status and log."""

    pid: Path
    lock: Path
    status: Path
    log: Path

    @classmethod
    def of(cls, settings: Settings) -> SupervisorFiles:
        return cls(
            pid=settings.run_dir / "stream.pid",
            lock=settings.run_dir / "stream.lock",
            status=settings.run_dir / "stream-status.json",
            log=settings.logs / "stream.log",
        )


def running_pid(settings: Settings) -> int | None:
    """The pid of this environment's supervisor, when one is alive."""
    import psutil

    path = SupervisorFiles.of(settings).pid
    try:
        pid = int(path.read_text().strip())
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    return pid


def read_status(settings: Settings) -> dict[str, Any] | None:
    """The last status JSON the supervisor wrote (None when there is none)."""
    path = SupervisorFiles.of(settings).status
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def running_topics(settings: Settings) -> set[str]:
    """Topics whose bronze ingest continuous mode runs right now (the DAG should not drain them meanwhile)."""
    if running_pid(settings) is None:
        return set()
    status = read_status(settings) or {}
    return {q["topic"] for q in status.get("queries", []) if q.get("kind") == "bronze"}


def running_silver_inputs(settings: Settings, table: str) -> set[str]:
    """The inputs of declared table ``table`` that continuous mode streams now (the DAG leaves them to it)."""
    if running_pid(settings) is None:
        return set()
    status = read_status(settings) or {}
    return {
        str(q["input"])
        for q in status.get("queries", [])
        if q.get("kind") == "silver" and q.get("silver") == table and q.get("input")
    }


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise ServiceError(
            f"continuous mode already runs in this environment (lock {path} is held): "
            "see `lakehouse stream status`, stop it with `lakehouse stream stop`"
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- offsets and lag: lakehouse.lag (shared with the DAG) ---------------------------------------------------
committed_offsets = lag_module.committed_offsets


# -- the supervisor -----------------------------------------------------------------------------------------
@dataclass
class _Running:
    spec: QuerySpec
    query: Any = None
    restarts: int = 0
    failures: int = 0
    next_start: float = 0.0
    last_error: str | None = None
    batch_at_start: int | None = None
    last_data: dict[str, Any] = field(default_factory=dict)


def _progress_value(progress: Any, name: str) -> Any:
    if progress is None:
        return None
    value = getattr(progress, name, None)
    if value is None and isinstance(progress, dict):
        value = progress.get(name)
    return value


class QuerySupervisor:
    """Starts the planned queries, watches them, restarts failures with backoff, writes the status JSON."""

    def __init__(
        self, settings: Settings, specs: Sequence[QuerySpec], options: SupervisorOptions | None = None
    ) -> None:
        self.settings = settings
        self.options = options or SupervisorOptions()
        self.files = SupervisorFiles.of(settings)
        self.running = {spec.name: _Running(spec) for spec in specs}
        self.stopping = threading.Event()
        self.started_at = _now()
        self.run_id = str(uuid.uuid4())  # silver's audit rows of this supervisor's run
        self.state = "starting"
        self._probe = LagProbe(settings.kafka.bootstrap_servers)
        self._spark: Any = None

    # starting -----------------------------------------------------------------------------------------------
    def _start(self, entry: _Running) -> None:
        from lakehouse.gold.rollups import InfluxTarget, rollup_stream, start_rollup
        from lakehouse.sources.kafka import start_ingest

        spec, options = entry.spec, self.options
        interval = options.trigger_interval or self.settings.streaming.trigger_interval
        if spec.kind == "silver":
            query = self._start_silver(spec, interval)
        elif spec.kind == "bronze":
            query = start_ingest(
                self._spark,
                self.settings,
                spec.topic,
                table=spec.table,
                checkpoint=spec.checkpoint,
                continuous=True,
                trigger_interval=interval,
            )
        else:
            assert spec.rollup is not None
            query = start_rollup(
                self._spark,
                self.settings,
                rollup_stream(self.settings, spec.rollup, registry=options.registry),
                topic=spec.topic,
                checkpoint=spec.checkpoint,
                influx=InfluxTarget.from_settings(self.settings) if options.influx else None,
                lateness=options.lateness,
                trigger_interval=interval,
            )
        entry.query = query
        entry.batch_at_start = None
        log.info("started %s (id %s)", spec.name, query.id)

    def _start_silver(self, spec: QuerySpec, interval: str) -> Any:
        from lakehouse.silver import engine

        assert spec.silver is not None and spec.input is not None
        table = engine.silver_table(self.settings, spec.silver)
        (declared,) = [i for i in table.build.inputs if i.label == spec.input]
        engine.ensure_tables(self._spark, table)
        engine.check_declaration(self._spark, table)
        query = engine.start_input(
            self._spark, self.settings, table, declared, run_id=self.run_id, trigger=interval
        )
        if query is None:  # its bronze table has no rows yet: try again after the backoff
            raise ServiceError(f"{spec.name}: {declared.table} has no table yet")
        return query

    def _try_start(self, entry: _Running) -> None:
        try:
            self._attach()
            self._start(entry)
        except Exception as exc:
            self._failed(entry, f"could not start: {exc}")

    def _attach(self) -> None:
        """Make sure the Spark session answers; attach a new one when its server went away.

        A Spark Connect server that was restarted (killed, upgraded, moved) does not know the sessions of the
        one before it: every call on the old session fails (``INVALID_HANDLE.SESSION_CHANGED``) for as long as
        the supervisor runs. While the server is down, the probe waits in the client's own retries.
        """
        from lakehouse.spark import get_spark

        if self._spark is not None:
            try:
                self._spark.sql("SELECT 1").collect()
                return
            except Exception as exc:
                log.warning("the Spark session no longer answers (%s): attaching a new one", str(exc)[:300])
                with contextlib.suppress(Exception):
                    self._spark.stop()
                self._spark = None
        self._spark = get_spark(self.settings, app_name="lakehouse-stream")

    def _failed(self, entry: _Running, error: str) -> None:
        entry.failures += 1
        entry.query = None
        entry.last_error = error[:2000]
        delay = min(self.options.max_backoff, 2.0 ** min(entry.failures, 10))
        entry.next_start = time.monotonic() + delay
        log.error(
            "%s failed (%d in a row), restart in %.0fs: %s", entry.spec.name, entry.failures, delay, error
        )

    # watching -----------------------------------------------------------------------------------------------
    def _watch(self, entry: _Running) -> None:
        query = entry.query
        if query is None:
            if time.monotonic() >= entry.next_start and not self.stopping.is_set():
                entry.restarts += 1
                self._try_start(entry)
            return
        try:
            active = bool(query.isActive)
        except Exception as exc:
            self._failed(entry, f"lost contact with the query: {exc}")
            return
        if not active:
            error = None
            with contextlib.suppress(Exception):
                error = query.exception()
            self._failed(entry, str(error) if error is not None else "the query stopped (by someone else?)")
            return
        progress = None
        with contextlib.suppress(Exception):
            progress = query.lastProgress
        batch = _progress_value(progress, "batchId")
        if batch is not None:
            if entry.batch_at_start is None:
                entry.batch_at_start = int(batch)
            elif int(batch) > entry.batch_at_start:
                entry.failures = 0  # healthy again: the next failure starts the backoff afresh
        rows = _progress_value(progress, "numInputRows")
        if rows:
            entry.last_data = {
                "batch_id": batch,
                "rows": rows,
                "time": _progress_value(progress, "timestamp"),
            }

    def _row(self, entry: _Running) -> dict[str, Any]:
        spec, query = entry.spec, entry.query
        progress = None
        if query is not None:
            with contextlib.suppress(Exception):
                progress = query.lastProgress
        active = False
        if query is not None:
            with contextlib.suppress(Exception):
                active = bool(query.isActive)
        return {
            "name": spec.name,
            "kind": spec.kind,
            "topic": spec.topic,
            "table": spec.table,
            "checkpoint": spec.checkpoint,
            "id": str(query.id) if query is not None else None,
            "runId": str(query.runId) if query is not None else None,
            "isActive": active,
            "lastBatchId": _progress_value(progress, "batchId"),
            "numInputRows": _progress_value(progress, "numInputRows"),
            "inputRowsPerSecond": _progress_value(progress, "inputRowsPerSecond"),
            "processedRowsPerSecond": _progress_value(progress, "processedRowsPerSecond"),
            "lastProgressTime": _progress_value(progress, "timestamp"),
            "lastDataBatch": entry.last_data or None,
            "lag": None if spec.kind == "silver" else self._probe.try_lag(spec.topic, spec.checkpoint),
            "silver": spec.silver,
            "input": spec.input,
            "restarts": entry.restarts,
            "lastError": entry.last_error,
        }

    def write_status(self) -> dict[str, Any]:
        status = {
            "env": self.settings.env_name,
            "pid": os.getpid(),
            "state": self.state,
            "startedAt": self.started_at,
            "updatedAt": _now(),
            "options": asdict(self.options),
            "queries": [self._row(entry) for entry in self.running.values()],
        }
        write_json(self.files.status, status)
        return status

    # the loop -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until :attr:`stopping` is set; then stop every query and write the final status."""
        from lakehouse.spark import get_spark

        self._spark = get_spark(self.settings, app_name="lakehouse-stream")
        try:
            # Running once the session is attached: the queries start one by one (a slow start of one is in
            # its own status row, and `lakehouse stream status` shows which are active).
            self.state = "running"
            self.write_status()
            for entry in self.running.values():
                if self.stopping.is_set():
                    break
                self._try_start(entry)
            while not self.stopping.is_set():
                for entry in self.running.values():
                    self._watch(entry)
                try:
                    self.write_status()
                except Exception as exc:  # a status hiccup must not stop the queries
                    log.warning("could not write the status: %s", exc)
                self.stopping.wait(self.options.status_interval)
        finally:
            self.state = "stopping"
            self.shutdown()

    def shutdown(self) -> None:
        """Stop every query (the checkpoints keep their positions), then the session."""
        for entry in self.running.values():
            if entry.query is not None:
                try:
                    entry.query.stop()
                    log.info("stopped %s", entry.spec.name)
                except Exception as exc:
                    log.warning("stopping %s: %s", entry.spec.name, exc)
        self.state = "stopped"
        with contextlib.suppress(Exception):
            self.write_status()
        for entry in self.running.values():
            entry.query = None
        self._probe.close()
        if self._spark is not None:
            with contextlib.suppress(Exception):
                self._spark.stop()
            self._spark = None


def run_foreground(settings: Settings, options: SupervisorOptions | None = None) -> None:
    """Run the supervisor in this process until SIGTERM/SIGINT (only one per environment).

    Raises:
        ServiceError: another supervisor runs in this environment, or InfluxDB is wanted but down.
        ConfigError: the registry is invalid.
    """
    options = options or SupervisorOptions()
    files = SupervisorFiles.of(settings)
    with _exclusive(files.lock):
        specs = plan(settings, options)
        if options.influx and any(spec.kind != "bronze" for spec in specs):
            from lakehouse.gold.rollups import InfluxTarget

            InfluxTarget.from_settings(settings).ping()
        supervisor = QuerySupervisor(settings, specs, options)
        files.pid.write_text(str(os.getpid()))

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("signal %d: stopping the queries", signum)
            supervisor.stopping.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("continuous mode: %s", ", ".join(spec.name for spec in specs) or "no queries")
            supervisor.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            files.pid.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def format_status(status: dict[str, Any] | None, alive: bool) -> str:
    """The status JSON as a table (what ``lakehouse stream status`` prints)."""
    if status is None or not alive:
        lines = ["continuous mode is not running" + (f" in {status['env']}" if status else "")]
        if status:
            lines.append(f"(last status {status.get('updatedAt')}: {status.get('state')})")
        lines.append("start it with: lakehouse stream start")
        return "\n".join(lines)
    head = (
        f"continuous mode: pid {status['pid']}, {status['state']}, since {status['startedAt']} "
        f"(updated {status['updatedAt']})"
    )
    header = f"{'query':<32} {'active':<6} {'batch':>6} {'rows':>7} {'in/s':>9} {'proc/s':>9} {'lag':>7} "
    header += f"{'restarts':>8}  last progress"
    rows = [head, header]

    def number(value: Any, digits: int = 0) -> str:
        return "-" if value is None else f"{float(value):,.{digits}f}"

    for q in status.get("queries", []):
        rows.append(
            f"{q['name'][:32]:<32} {'yes' if q['isActive'] else 'NO':<6} {number(q['lastBatchId']):>6} "
            f"{number(q['numInputRows']):>7} {number(q['inputRowsPerSecond'], 1):>9} "
            f"{number(q['processedRowsPerSecond'], 1):>9} {number(q['lag']):>7} {q['restarts']:>8}  "
            f"{q['lastProgressTime'] or '-'}"
        )
        if q.get("lastError") and not q["isActive"]:
            rows.append(f"    last error: {q['lastError'].splitlines()[0][:200]}")
    return "\n".join(rows)
