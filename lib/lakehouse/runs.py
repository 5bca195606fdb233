"""The run archive: every task run's executed notebook kept as that run's audit record.

``lakehouse build`` copies the executed notebook of each task it ran — succeeded or failed — to
``<workspace>/runs/<YYYY-MM-DD>/<run id>/<task>.ipynb`` (the run id is the task's OpenLineage run id) and
appends one JSON line to ``<workspace>/runs/index.jsonl``: run id, build, task, start and end, status, why it
ran, the archived notebook and each lake table the run wrote with the Delta versions it committed. The
executed notebook under ``<workspace>/notebooks/`` stays Ploomber's product (the latest run only).

Find a run by its id or by a table version it wrote::

    lakehouse runs find --run-id 3f0c…
    lakehouse runs find --table silver/events --version 14

Versions are attributed by comparing each table's version before and after the run, so a table that
something else (continuous mode) commits to while the task runs may be attributed to the task as well.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError

INDEX_FILE = "index.jsonl"


class TableWrite(BaseModel):
    """Delta versions ``first_version``…``version`` of ``table`` were committed during a run."""

    model_config = ConfigDict(extra="forbid")

    table: str = Field(description='"<layer>.<name>"')
    first_version: int
    version: int

    def covers(self, version: int) -> bool:
        return self.first_version <= version <= self.version


class RunRecord(BaseModel):
    """One archived run of a task (one line of the index)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    build_id: str | None = None
    task: str
    status: Literal["success", "failed"]
    started_at: str
    ended_at: str
    notebook: str | None = Field(None, description="the archived executed notebook (None: none was written)")
    reasons: list[str] = Field(default_factory=list)
    tables: list[TableWrite] = Field(default_factory=list)
    error: str | None = None


def runs_dir(settings: Settings) -> Path:
    """``<workspace>/runs``."""
    return settings.workspace / "runs"


def index_path(settings: Settings) -> Path:
    """``<workspace>/runs/index.jsonl``."""
    return runs_dir(settings) / INDEX_FILE


def archive_run(
    settings: Settings,
    *,
    run_id: str,
    task: str,
    status: Literal["success", "failed"],
    started: datetime,
    ended: datetime,
    executed: Path | None,
    tables: Iterable[TableWrite] = (),
    reasons: Iterable[str] = (),
    build_id: str | None = None,
    error: str | None = None,
) -> RunRecord:
    """Copy the executed notebook into the archive and append the run to the index.

    Args:
        executed: the notebook papermill wrote (a failed run's is partial; None or absent: nothing to copy).

    Returns:
        The index row.
    """
    notebook: str | None = None
    if executed is not None and executed.is_file():
        target = runs_dir(settings) / started.strftime("%Y-%m-%d") / run_id / f"{task}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(executed, target)
        notebook = str(target)
    record = RunRecord(
        run_id=run_id,
        build_id=build_id,
        task=task,
        status=status,
        started_at=started.isoformat(),
        ended_at=ended.isoformat(),
        notebook=notebook,
        reasons=list(reasons),
        tables=list(tables),
        error=error,
    )
    _append(index_path(settings), record.model_dump_json())
    return record


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(
        "a", encoding="utf-8"
    ) as out:  # one write per line: concurrent appenders do not interleave
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def read_index(settings: Settings) -> list[RunRecord]:
    """Every archived run, oldest first (empty before the first build).

    Raises:
        DataError: a line of the index is not a run record (the message names the line).
    """
    path = index_path(settings)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(RunRecord.model_validate_json(line))
        except ValidationError as exc:
            raise DataError(f"{path} line {number} is not a run record ({exc.errors()[0]['msg']})") from exc
    return records


def table_identity(text: str) -> str:
    """``"silver/events"`` or ``"silver.events"`` → ``"silver.events"``.

    Raises:
        ConfigError: not ``<layer>/<name>``.
    """
    layer, sep, name = text.replace("/", ".", 1).partition(".")
    if not sep or not layer or not name:
        raise ConfigError(f"{text!r} is not a table: write <layer>/<name>, e.g. silver/events")
    return f"{layer}.{name}"


def find_runs(
    settings: Settings,
    *,
    run_id: str | None = None,
    table: str | None = None,
    version: int | None = None,
    task: str | None = None,
) -> list[RunRecord]:
    """Archived runs matching every given criterion, newest first.

    Args:
        run_id: the OpenLineage run id (a unique prefix is enough).
        table: a table the run wrote (``silver/events``); with ``version``, the run that committed it.
        version: a Delta version of ``table``.
        task: the task name.

    Raises:
        ConfigError: ``version`` without ``table``, or a malformed table name.
    """
    if version is not None and table is None:
        raise ConfigError("--version needs --table: which table's version?")
    identity = table_identity(table) if table else None
    found = []
    for record in reversed(read_index(settings)):
        if run_id and not record.run_id.startswith(run_id.lower()):
            continue
        if task and record.task != task:
            continue
        if identity is not None:
            writes = [w for w in record.tables if w.table == identity]
            if not writes or (version is not None and not any(w.covers(version) for w in writes)):
                continue
        found.append(record)
    return found


# --- what a run's lineage says -----------------------------------------------------------------------------


@dataclass
class RunLineage:
    """A run's OpenLineage events, read back: the lake tables it read and wrote (with Delta versions)."""

    reads: set[str] = field(default_factory=set)
    writes: dict[str, int | None] = field(default_factory=dict)
    states: list[str] = field(default_factory=list)


def events_offset(settings: Settings) -> int:
    """The size of the lineage events file now (read a run's events from there after it ran)."""
    try:
        return _events_file(settings).stat().st_size
    except OSError:
        return 0


def run_lineage(settings: Settings, run_id: str, offset: int = 0) -> RunLineage:
    """The lineage of ``run_id`` in the events written after ``offset`` (file transport; else empty)."""
    found = RunLineage()
    for event in _events_after(_events_file(settings), offset):
        if (event.get("run") or {}).get("runId") != run_id:
            continue
        found.states.append(str(event.get("eventType")))
        for dataset in event.get("inputs") or []:
            found.reads.update(_identities(dataset))
        for dataset in event.get("outputs") or []:
            version = ((dataset.get("facets") or {}).get("delta") or {}).get("version")
            for identity in _identities(dataset):
                if version is not None or identity not in found.writes:
                    found.writes[identity] = int(version) if version is not None else None
    found.reads = {name for name in found.reads if not name.startswith("source.")}
    return found


def _events_file(settings: Settings) -> Path:
    return settings.reports / "lineage" / "openlineage.jsonl"  # lakehouse.lineage.emitter.events_file


def _events_after(path: Path, offset: int) -> Iterator[Mapping[str, Any]]:
    try:
        with path.open("rb") as events:
            events.seek(offset)
            data = events.read()
    except OSError:
        return
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def _identities(dataset: Mapping[str, Any]) -> list[str]:
    symlinks = ((dataset.get("facets") or {}).get("symlinks") or {}).get("identifiers") or []
    return [str(item["name"]) for item in symlinks if isinstance(item, dict) and item.get("name")]


def table_writes(before: Mapping[str, int | None], after: Mapping[str, int | None]) -> list[TableWrite]:
    """The versions each table gained between ``before`` and ``after`` (identity → Delta version or None)."""
    writes = []
    for identity, version in sorted(after.items()):
        previous = before.get(identity)
        if version is None or version == previous:
            continue
        if previous is None:
            first = 0  # the run created the table
        elif previous < version:
            first = previous + 1
        else:
            first = version  # the table was replaced by an older log: attribute the version it shows now
        writes.append(TableWrite(table=identity, first_version=first, version=version))
    return writes
