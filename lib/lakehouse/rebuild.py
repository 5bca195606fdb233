"""Data-aware rebuilds: a DAG task runs when its code, parameters or inputs changed, and only then.

Ploomber decides staleness from code and file timestamps; it cannot see a Kafka topic fill up, a database
table change or an upstream task commit to Delta and then fail. So before each task (in topological order)
``lakehouse build`` compares what the task would read now with what it read on its last success:

- **code**: a digest of the notebook's code cells, its rendered parameters (and the content of any file a
  parameter names, e.g. a table's declaration), products and upstream names;
- **sources**: the registry entries the task ingests — which ones comes from configuration, the task's
  ``source_kinds`` parameter (plus ``source``/``topic`` when set), never from task names in code. Each kind
  has a fingerprint function (:data:`SOURCE_FINGERPRINTS`): Kafka-backed kinds compare the topic's end
  offsets with what the bronze checkpoint took, ``postgres`` the table's row count and newest watermark,
  ``http`` has no cheap signal and is pulled when its declared ``refresh`` interval has elapsed (every
  build when none is declared). A source's declaration (its entry in sources.yaml) is part of it too;
- **upstream data**: the Delta versions (from ``_delta_log``, no Spark) of the tables its upstream tasks
  write — their Delta products in pipeline.yaml, the bronze tables of their sources and the tables their last
  run reported writing (OpenLineage) — narrowed to the tables the task's own last run reported reading; other
  (non-Delta) products of upstream tasks by size and modification time.

The record of the last success is a small JSON per task (``<workspace>/state/rebuild/<task>.json``),
written only after a success. A task that failed is marked so and reruns on the next build; whatever it
committed before failing shows up as new Delta versions for its downstream tasks, which then rerun too.

Example:
    >>> record = TaskRecord(task="silver-events", status="success", at="2024-10-01T00:00:00+00:00",
    ...                     code="abc", inputs={"table:bronze/clickstream": {"delta": 12}})
    >>> decide(record, code="abc", inputs={"table:bronze/clickstream": Check({"delta": 14},
    ...        "bronze/clickstream v12 -> v14")}).reasons
    ['bronze/clickstream v12 -> v14']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, LakehouseError
from lakehouse.lag import LagProbe, committed_offsets, lag_of
from lakehouse.sources.registry import Registry, ingest_topic, parse_kinds
from lakehouse.state import read_state, write_json

log = logging.getLogger(__name__)

# Task parameters that say which registry sources a task ingests (a bronze notebook declares them too).
SOURCE_KINDS_PARAM = "source_kinds"
SOURCE_PARAM = "source"
TOPIC_PARAM = "topic"
# A feedback edge: files a later task of the DAG writes (a monitor's retrain request read by the training
# task before it). Their state is an input of the task; `lakehouse build` runs another pass when one changed.
WATCH_PARAM = "watch_"
# Upstream tasks that only order the task (it runs after them) without their writes being its inputs: a
# training task must follow the tables it reads, yet new rows in them alone must not retrain it.
ORDER_ONLY_PARAM = "order_only_"
LAYERS = ("bronze", "silver", "gold", "audit")


# --- the DAG as the rebuild sees it -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """One task of pipeline.yaml, rendered for an environment (what Ploomber would run)."""

    name: str
    source: str  # the notebook, absolute path
    upstream: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)  # rendered, without upstream/product
    products: Mapping[str, str] = field(default_factory=dict)  # product key → absolute path
    notebook_key: str | None = "nb"  # the product that is the executed notebook

    @property
    def notebook(self) -> str | None:
        """Where the executed notebook goes (the ``nb`` product)."""
        return self.products.get(self.notebook_key) if self.notebook_key else None

    def data_products(self) -> dict[str, str]:
        """Every product but the executed notebook."""
        return {key: path for key, path in self.products.items() if key != self.notebook_key}


def topological(tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """The tasks in an order where each comes after its upstream (file order among equals).

    Raises:
        ConfigError: an upstream name that is no task, or a cycle.
    """
    by_name = {task.name: task for task in tasks}
    for task in tasks:
        unknown = [name for name in task.upstream if name not in by_name]
        if unknown:
            raise ConfigError(f"pipeline.yaml: task {task.name!r} has unknown upstream {unknown}")
    done: set[str] = set()
    ordered: list[TaskSpec] = []
    pending = list(tasks)
    while pending:
        ready = [task for task in pending if all(name in done for name in task.upstream)]
        if not ready:
            raise ConfigError(f"pipeline.yaml: a cycle among {sorted(task.name for task in pending)}")
        for task in ready:
            ordered.append(task)
            done.add(task.name)
        pending = [task for task in pending if task.name not in done]
    return ordered


def downstream_of(tasks: Sequence[TaskSpec], names: Iterable[str]) -> set[str]:
    """Every task that depends, directly or not, on one of ``names`` (those excluded)."""
    found: set[str] = set()
    frontier = set(names)
    while frontier:
        frontier = {t.name for t in tasks if set(t.upstream) & frontier and t.name not in found}
        found |= frontier
    return found


def code_fingerprint(task: TaskSpec, root: Path | None = None) -> str:
    """A digest of what makes a task's code: its notebook's code cells, parameters, products and upstream,
    and the content of every file a parameter names (a table's declaration, a SQL model).

    Outputs, execution counts and cell metadata are left out: saving a notebook in JupyterLab does not make it
    new code.

    Args:
        task: the task.
        root: where relative file parameters are looked up (the project root).

    Raises:
        ConfigError: the notebook is missing or is not a notebook.
    """
    try:
        notebook = json.loads(Path(task.source).read_text(encoding="utf-8"))
        cells = [
            [cell.get("cell_type"), "".join(cell.get("source", ""))] for cell in notebook.get("cells", [])
        ]
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"pipeline.yaml: task {task.name!r}: cannot read {task.source} ({exc})") from exc
    return _digest(
        {
            "cells": cells,
            "params": dict(task.params),
            "files": _parameter_files(task.params, root),
            "products": dict(task.products),
            "upstream": sorted(task.upstream),
        }
    )


def _parameter_files(params: Mapping[str, Any], root: Path | None) -> dict[str, str]:
    """Digests of the files that string parameters name (``resources_`` included), by parameter."""
    found: dict[str, str] = {}

    def visit(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{name}.{key}", item)
        elif isinstance(value, str) and value and "\n" not in value and len(value) < 1024:
            path = Path(value)
            if not path.is_absolute() and root is not None:
                path = root / path
            try:
                if path.is_file():
                    found[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            except OSError:
                pass

    for key, value in params.items():
        if key != WATCH_PARAM:  # watched files are inputs (collect_inputs), not code
            visit(key, value)
    return found


def watched_files(params: Mapping[str, Any]) -> dict[str, str]:
    """The files a task watches (``watch_``: a path, a list or a mapping of paths), by name."""
    value = params.get(WATCH_PARAM)
    if not value:
        return {}
    if isinstance(value, str):
        return {value: value}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    return {str(v): str(v) for v in value}


def _digest(document: Any) -> str:
    text = json.dumps(document, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- what a task read on its last success ---------------------------------------------------------------


class TaskRecord(BaseModel):
    """A task's last build: what its last success read, and whether it failed since."""

    model_config = ConfigDict(extra="forbid")

    task: str
    status: Literal["success", "failed"]
    at: str
    run_id: str | None = None
    code: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    reads: list[str] = Field(default_factory=list, description="lake tables its last run read (lineage)")
    writes: dict[str, int | None] = Field(
        default_factory=dict, description="lake table → Delta version it left (None: none there)"
    )
    failed_at: str | None = None
    failed_run_id: str | None = None


def record_path(settings: Settings, task: str) -> Path:
    """``<workspace>/state/rebuild/<task>.json``."""
    return settings.workspace / "state" / "rebuild" / f"{task}.json"


def read_record(settings: Settings, task: str) -> TaskRecord | None:
    """The task's record (None before its first success or failure).

    Raises:
        DataError: the file is damaged (the message says to delete it: the task then reruns).
    """
    return read_state(record_path(settings, task), TaskRecord, what=f"the rebuild record of {task}")


def record_success(
    settings: Settings,
    task: str,
    *,
    run_id: str,
    code: str,
    inputs: Mapping[str, Check],
    reads: Iterable[str] = (),
    writes: Mapping[str, int | None] | None = None,
) -> TaskRecord:
    """Write what a successful run read (call after the task succeeded, never before)."""
    record = TaskRecord(
        task=task,
        status="success",
        at=_now().isoformat(),
        run_id=run_id,
        code=code,
        inputs={key: check.value for key, check in inputs.items()},
        reads=sorted(set(reads)),
        writes=dict(writes or {}),
    )
    write_json(record_path(settings, task), record.model_dump(mode="json"))
    return record


def record_failure(settings: Settings, task: str, *, run_id: str) -> TaskRecord:
    """Mark the task failed (its last success's inputs are kept): the next build reruns it."""
    previous = read_record(settings, task)
    now = _now().isoformat()
    if previous is None:
        record = TaskRecord(task=task, status="failed", at=now, failed_at=now, failed_run_id=run_id)
    else:
        record = previous.model_copy(update={"status": "failed", "failed_at": now, "failed_run_id": run_id})
    write_json(record_path(settings, task), record.model_dump(mode="json"))
    return record


# --- inputs and their checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One input, observed now: its value (recorded after a success) and why it counts as changed, if so."""

    value: Any
    reason: str | None = None


@dataclass
class ProbeContext:
    """What the checks of one build share: settings, one Kafka metadata client, continuous mode's topics."""

    settings: Settings
    registry: Registry
    now: datetime = field(default_factory=lambda: _now())
    _lag: LagProbe | None = None
    _streaming: set[str] | None = None

    @property
    def kafka(self) -> LagProbe:
        if self._lag is None:
            self._lag = LagProbe(self.settings.kafka.bootstrap_servers, client_id="lakehouse-rebuild")
        return self._lag

    @property
    def streaming(self) -> set[str]:
        """Topics continuous mode ingests right now (it keeps their bronze tables up to date itself)."""
        if self._streaming is None:
            from lakehouse.streaming.continuous import running_topics

            self._streaming = running_topics(self.settings)
        return self._streaming

    def close(self) -> None:
        if self._lag is not None:
            self._lag.close()
            self._lag = None


# A source kind's check: (context, source, the data value recorded at the last success or None) → Check.
SourceCheck = Callable[[ProbeContext, Any, Any], Check]


def kafka_check(ctx: ProbeContext, source: Any, recorded: Any) -> Check:
    """Kafka-backed sources: the topic's end offsets against what the bronze checkpoint committed."""
    topic = ingest_topic(source)
    if topic is None:
        raise ConfigError(f"source {source.name!r} does not reach bronze through Kafka")
    if topic in ctx.streaming:
        return Check("continuous")  # continuous mode owns the checkpoint; bronze's versions still count
    ends = ctx.kafka.end_offsets(topic)
    taken = committed_offsets(ctx.settings.checkpoint_path(f"bronze_{topic}")).get(topic, {})
    lag = lag_of(ends, taken)
    value = {str(partition): offset for partition, offset in sorted(ends.items())}
    return Check(value, f"{topic}: {lag} records in Kafka that bronze has not taken" if lag else None)


def postgres_fingerprint(settings: Settings, source: Any) -> Any:
    """The source's fingerprint (:func:`lakehouse.sources.postgres.source_fingerprint`): the watermark and key
    position for an incremental extract, the table's checksum for a snapshot, the slot's position for CDC.

    A source that cannot be reached is reported as such (the extract then fails with the reason and the
    other sources still run).
    """
    import psycopg

    from lakehouse.errors import LakehouseError
    from lakehouse.sources.postgres import source_fingerprint

    try:
        return {"fingerprint": source_fingerprint(settings, source)}
    except (LakehouseError, OSError, psycopg.Error) as exc:
        return {"unavailable": str(exc).splitlines()[0][:200]}


def postgres_check(ctx: ProbeContext, source: Any, recorded: Any) -> Check:
    """``postgres`` sources: the table's fingerprint against the one recorded at the last success."""
    value = postgres_fingerprint(ctx.settings, source)
    if recorded is None or value == recorded:
        return Check(value)
    return Check(
        value, f"{source.name}: {source.table} changed ({_describe(recorded)} -> {_describe(value)})"
    )


def http_check(ctx: ProbeContext, source: Any, recorded: Any) -> Check:
    """``http`` sources: no cheap change signal, so pulled when the declared ``refresh`` elapsed.

    Without ``refresh`` in sources.yaml, every build pulls (an API may change at any time; a pull that finds
    nothing new writes no Delta version, so nothing downstream reruns).
    """
    value = ctx.now.isoformat()
    refresh = getattr(source, "refresh_seconds", None)
    if refresh is None:
        return Check(value, f"{source.name}: an HTTP source is pulled every build (no `refresh` declared)")
    if recorded is None:
        return Check(value)
    try:
        elapsed = (ctx.now - datetime.fromisoformat(str(recorded))).total_seconds()
    except ValueError:
        return Check(value, f"{source.name}: no readable time of its last pull")
    if elapsed >= refresh:
        return Check(
            value, f"{source.name}: refresh {source.refresh} elapsed (last pull {_ago(elapsed)} ago)"
        )
    return Check(value)  # recorded only if the task runs anyway (then it pulled now)


# Per source kind: how to tell that a source holds something its bronze task has not taken. A kind missing
# here runs its task on every build. (The PostgreSQL helper's `source_fingerprint(settings, source)` plugs in
# through `postgres_fingerprint`.)
SOURCE_CHECKS: dict[str, SourceCheck] = {
    "kafka": kafka_check,
    "postgres_cdc": kafka_check,
    "mqtt": kafka_check,
    "postgres": postgres_check,
    "http": http_check,
}


def check_source(ctx: ProbeContext, source: Any, recorded: Any) -> Check:
    """A source input: its declaration (the sources.yaml entry) and its data, as its kind tells."""
    declaration = _digest(source.model_dump(mode="json"))
    previous = recorded if isinstance(recorded, dict) else {}
    kind = str(getattr(source, "kind", "?"))
    checker = SOURCE_CHECKS.get(kind)
    if checker is None:
        data = Check(None, f"{source.name}: no change signal for sources of kind {kind!r}")
    else:
        try:
            data = checker(ctx, source, previous.get("data"))
        except LakehouseError as exc:
            data = Check(None, f"{source.name}: could not be checked ({exc})")
        except Exception as exc:  # a probe that breaks must not hide new data: run the task instead
            log.warning("checking source %s failed: %s", source.name, exc, exc_info=True)
            data = Check(None, f"{source.name}: could not be checked ({type(exc).__name__}: {exc})")
    value = {"declaration": declaration, "data": data.value}
    if recorded is not None and previous.get("declaration") != declaration:
        return Check(value, f"{source.name}: its entry in sources.yaml changed")
    return Check(value, data.reason)


def delta_version(path: str | Path) -> int | None:
    """The current version of the Delta table at ``path``, from its ``_delta_log`` (None: no table there)."""
    folder = Path(path) / "_delta_log"
    try:
        versions = [int(entry.name[:-5]) for entry in folder.iterdir() if entry.name[:-5].isdigit()]
    except OSError:
        return None
    checkpoint = _last_checkpoint_version(folder)
    candidates = versions + ([checkpoint] if checkpoint is not None else [])
    return max(candidates) if candidates else None


def _last_checkpoint_version(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "_last_checkpoint").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def path_fingerprint(path: str | Path) -> Any:
    """A product's state: a Delta table's version, a file's size and mtime, a folder's files' (None: none)."""
    target = Path(path)
    version = delta_version(target)
    if version is not None:
        return {"delta": version}
    try:
        if target.is_file():
            stat = target.stat()
            return {"file": [stat.st_size, stat.st_mtime_ns]}
        if target.is_dir():
            entries = sorted(
                [str(p.relative_to(target)), p.stat().st_size, p.stat().st_mtime_ns]
                for p in target.rglob("*")
                if p.is_file()
            )
            return {"dir": _digest(entries)}
    except OSError:
        pass
    return None


def check_path(label: str, path: str | Path, recorded: Any) -> Check:
    """An upstream product or table: changed when its version (or file state) differs from the recorded."""
    value = path_fingerprint(path)
    if recorded is None or value == recorded:
        return Check(value)
    before, after = _version_text(recorded), _version_text(value)
    if before and after:
        return Check(value, f"{label} {before} -> {after}")
    return Check(value, f"{label} changed")


def _version_text(value: Any) -> str | None:
    if isinstance(value, dict) and "delta" in value:
        return f"v{value['delta']}"
    if value is None:
        return "absent"
    return None


def lake_identity(settings: Settings, path: str | Path) -> str | None:
    """``"<layer>.<name>"`` of a lake table path (None when the path is not a table of the lake)."""
    try:
        parts = Path(path).resolve().relative_to(settings.lake.resolve()).parts
    except ValueError:
        return None
    if len(parts) == 2 and parts[0] in LAYERS:
        return f"{parts[0]}.{parts[1]}"
    return None


def identity_path(settings: Settings, identity: str) -> str | None:
    """The path of a ``"<layer>.<name>"`` lake table (None for sources and anything else)."""
    layer, _, name = identity.partition(".")
    if layer not in LAYERS or not name:
        return None
    return settings.table_path(layer, name)


def task_sources(registry: Registry, params: Mapping[str, Any]) -> list[Any]:
    """The registry sources a task ingests, from its parameters (``source_kinds``, narrowed by ``source``
    or ``topic`` when those are set): configuration, not task names.

    Raises:
        ConfigError: an unknown kind, or a ``source`` that is not in the registry.
    """
    kinds = params.get(SOURCE_KINDS_PARAM)
    if not kinds:
        return []
    sources = registry.of_kinds(str(kinds))
    chosen = params.get(SOURCE_PARAM)
    if isinstance(chosen, str) and chosen:
        registry.get(chosen)  # an unknown name is a ConfigError naming the known ones
        sources = [s for s in sources if s.name == chosen]
    topic = params.get(TOPIC_PARAM)
    if isinstance(topic, str) and topic:
        sources = [s for s in sources if ingest_topic(s) == topic]
    return sources


def writes_of(
    settings: Settings, registry: Registry, task: TaskSpec, record: TaskRecord | None
) -> dict[str, str]:
    """What a task writes, as label → path: its data products, its sources' bronze tables and the tables its
    last run reported writing."""
    written: dict[str, str] = {}
    for path in task.data_products().values():
        written[_label(settings, path)] = path
    for source in task_sources(registry, task.params):
        path = settings.table_path("bronze", source.bronze)
        written[_label(settings, path)] = path
    for identity in record.writes if record else ():
        table = identity_path(settings, identity)
        if table is not None:
            written[_label(settings, table)] = table
    return written


def _label(settings: Settings, path: str | Path) -> str:
    identity = lake_identity(settings, path)
    if identity is not None:
        return identity.replace(".", "/", 1)
    try:
        return str(Path(path).resolve().relative_to(settings.workspace.resolve()))
    except ValueError:
        return str(path)


def collect_inputs(
    ctx: ProbeContext,
    task: TaskSpec,
    upstream: Mapping[str, TaskSpec],
    records: Mapping[str, TaskRecord | None],
) -> dict[str, Check]:
    """Every input of ``task``, observed now, compared with what ``records[task.name]`` saw.

    Args:
        ctx: the build's shared probes.
        task: the task to check.
        upstream: the task's upstream tasks by name.
        records: the current records of the task and its upstream tasks (after this build's runs).
    """
    settings = ctx.settings
    record = records.get(task.name)
    recorded = record.inputs if record else {}
    checks: dict[str, Check] = {}
    for source in task_sources(ctx.registry, task.params):
        key = f"source:{source.name}"
        checks[key] = check_source(ctx, source, recorded.get(key))
    own = set(writes_of(settings, ctx.registry, task, record))
    reads = set(record.reads) if record and record.reads else None
    order_only = set(task.params.get(ORDER_ONLY_PARAM) or ())
    for name in task.upstream:
        if name in order_only:
            continue
        for label, path in writes_of(settings, ctx.registry, upstream[name], records.get(name)).items():
            if label in own:
                continue  # a table this task writes itself would make it rerun after every run
            identity = lake_identity(settings, path)
            if reads is not None and identity is not None and identity not in reads:
                continue  # the task's last run did not read it
            key = f"table:{label}" if identity else f"path:{label}"
            if key not in checks:
                checks[key] = check_path(label, path, recorded.get(key))
    for path in watched_files(task.params).values():
        label = _label(settings, path)
        key = f"watch:{label}"
        value = path_fingerprint(path)
        changed = key in recorded and recorded[key] != value
        checks[key] = Check(value, f"{label} was rewritten by a later task" if changed else None)
    return checks


# --- the decision ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """Whether a task runs, and why (or why not)."""

    run: bool
    reasons: list[str]


def decide(
    record: TaskRecord | None,
    *,
    code: str,
    inputs: Mapping[str, Check],
    missing_products: Sequence[str] = (),
    force: bool = False,
) -> Decision:
    """Run or skip, given the task's record and what it would read now (pure: no I/O)."""
    if force:
        return Decision(True, ["--force"])
    if record is None:
        return Decision(True, ["never built"])
    reasons: list[str] = []
    if record.status == "failed":
        reasons.append(f"failed in an earlier build (run {record.failed_run_id})")
    if missing_products:
        reasons.append(f"product(s) missing: {', '.join(missing_products)}")
    if record.code is not None and record.code != code:
        reasons.append("its code, parameters or products changed")
    for key, check in inputs.items():
        if key not in record.inputs and record.status == "success":
            reasons.append(f"new input {key.partition(':')[2]}")
        elif check.reason:
            reasons.append(check.reason)
    if reasons:
        return Decision(True, reasons)
    return Decision(False, ["inputs unchanged"])


def missing_products(task: TaskSpec) -> list[str]:
    """Keys of the task's products that do not exist (Ploomber reruns a task whose product is gone too)."""
    return [key for key, path in task.products.items() if not Path(path).exists()]


# --- small helpers ---------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _ago(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def kinds_of(params: Mapping[str, Any]) -> list[str]:
    """The kinds a task's ``source_kinds`` parameter names ([] when it has none)."""
    kinds = params.get(SOURCE_KINDS_PARAM)
    return parse_kinds(str(kinds)) if kinds else []


@contextlib.contextmanager
def probing(settings: Settings, registry: Registry) -> Any:
    """A :class:`ProbeContext` that closes its Kafka client at the end."""
    ctx = ProbeContext(settings, registry)
    try:
        yield ctx
    finally:
        ctx.close()
