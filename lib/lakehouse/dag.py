"""Building the Ploomber DAG (pipeline.yaml) for one environment: each task runs when what it reads changed.

``build`` walks the tasks in topological order. For each it asks :mod:`lakehouse.rebuild` whether its code,
parameters or inputs (sources, upstream Delta versions) changed since its last success, and runs it through
Ploomber's Python API only then; each run's executed notebook goes to the run archive (:mod:`lakehouse.runs`).
A failed task stops its downstream for this build; the next build reruns it and, through the Delta versions
it committed, its downstream.

The no-op path never imports Ploomber (that alone takes seconds): the rendered task list is cached under
``<workspace>/state/rebuild/`` and re-rendered by Ploomber when pipeline.yaml or the environment file
changes. ``ploomber build``, ``ploomber status`` and ``ploomber plot`` keep working on the same pipeline.yaml;
after a ``lakehouse build``, tasks it found up to date are marked so in Ploomber's metadata too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from lakehouse.config import Settings, env_file
from lakehouse.errors import ConfigError, LakehouseError
from lakehouse.lineage.tracker import TASK_RUN_VARIABLE
from lakehouse.rebuild import (
    Check,
    Decision,
    ProbeContext,
    TaskRecord,
    TaskSpec,
    code_fingerprint,
    collect_inputs,
    decide,
    delta_version,
    identity_path,
    lake_identity,
    missing_products,
    probing,
    read_record,
    record_failure,
    record_success,
    topological,
    watched_files,
    writes_of,
)
from lakehouse.sources.registry import Registry, load_registry
from lakehouse.state import read_json, write_json

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.yaml"
# Passes of one build: a feedback edge (``watch_``) reruns what a later task made stale, at most this often.
MAX_PASSES = 3
_SPEC_CACHE = "_pipeline.json"  # beside the task records; a leading underscore is never a task name


def ploomber_env(settings: Settings) -> dict[str, str]:
    """Environment variables that point Ploomber, notebooks and kernels at ``settings``' environment."""
    env_file_name = "env.yaml" if settings.env_name == "local" else f"env.{settings.env_name}.yaml"
    return {
        **os.environ,
        "PLOOMBER_ENV_FILENAME": env_file_name,
        "LAKEHOUSE_ENV": settings.env_name,
        "LAKEHOUSE_ROOT": str(settings.root),
        # No phoning home from a closed network: both would only time out.
        "PLOOMBER_STATS_ENABLED": "false",
        "PLOOMBER_VERSION_CHECK_DISABLED": "true",
        # env*.yaml also holds lakehouse's own settings, which Ploomber flags as unused placeholders.
        "PYTHONWARNINGS": "ignore:The following placeholders:UserWarning",
    }


@contextlib.contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set ``variables`` in this process (papermill's kernels inherit them), restoring the old ones after."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _quiet_placeholder_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="The following placeholders", category=UserWarning)


# --- the task list: rendered by Ploomber, cached for the no-op path ---------------------------------------


def _spec_files(settings: Settings) -> list[Path]:
    """pipeline.yaml, the file its tasks are imported from (``meta.import_tasks_from``) and the env file."""
    pipeline = settings.root / PIPELINE_FILE
    files = [pipeline, env_file(settings.env_name, settings.root)]
    try:
        meta = (yaml.safe_load(pipeline.read_text(encoding="utf-8")) or {}).get("meta") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return files  # Ploomber reports a broken pipeline.yaml when it loads it
    imported = meta.get("import_tasks_from") if isinstance(meta, dict) else None
    if isinstance(imported, str):
        files.append(settings.root / imported)
    return files


def _spec_key(settings: Settings) -> str:
    digest = hashlib.sha256()
    for path in _spec_files(settings):
        digest.update(str(path).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            pass
    return digest.hexdigest()


def _cache_path(settings: Settings) -> Path:
    return settings.workspace / "state" / "rebuild" / _SPEC_CACHE


def load_tasks(settings: Settings) -> list[TaskSpec]:
    """The tasks of pipeline.yaml as Ploomber renders them for ``settings``' environment (cached).

    Raises:
        ConfigError: Ploomber rejects pipeline.yaml.
    """
    key = _spec_key(settings)
    cached = read_json(_cache_path(settings))
    if isinstance(cached, dict) and cached.get("key") == key:
        return [
            TaskSpec(
                name=task["name"],
                source=task["source"],
                upstream=tuple(task["upstream"]),
                params=task["params"],
                products=task["products"],
                notebook_key=task["notebook_key"],
            )
            for task in cached["tasks"]
        ]
    tasks = [_task_spec(task) for task in _ploomber_dag(settings).values()]
    write_json(
        _cache_path(settings),
        {
            "key": key,
            "tasks": [
                {
                    "name": t.name,
                    "source": t.source,
                    "upstream": list(t.upstream),
                    "params": dict(t.params),
                    "products": dict(t.products),
                    "notebook_key": t.notebook_key,
                }
                for t in tasks
            ],
        },
    )
    return tasks


def _ploomber_dag(settings: Settings) -> dict[str, Any]:
    """Ploomber's DAG of pipeline.yaml (imports Ploomber: seconds), its tasks by name in file order."""
    with _environment(ploomber_env(settings)):
        _quiet_placeholder_warnings()
        from ploomber.exceptions import DAGSpecInitializationError
        from ploomber.spec import DAGSpec

        try:
            spec = DAGSpec(
                str(settings.root / PIPELINE_FILE), env=str(env_file(settings.env_name, settings.root))
            )
            dag = spec.to_dag()
        except (DAGSpecInitializationError, ValueError, TypeError) as exc:
            raise ConfigError(f"{PIPELINE_FILE} is invalid: {exc}") from exc
    return {name: dag[name] for name in dag}


def _task_spec(task: Any) -> TaskSpec:
    params = task.params.to_json_serializable(params_only=True)
    products = task.product.to_json_serializable()
    if not isinstance(products, dict):
        products = {"nb": products}
    key = getattr(task, "nb_product_key", "nb")
    return TaskSpec(
        name=task.name,
        source=str(task.source.loc),
        upstream=tuple(task.upstream),
        params={k: v for k, v in params.items() if k not in ("upstream", "product")},
        products={k: str(v) for k, v in products.items()},
        notebook_key=key if isinstance(key, str) else None,
    )


class _Ploomber:
    """Runs single tasks with Ploomber's Python API (the DAG is loaded and rendered on the first run)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._dag: Any = None

    def _load(self) -> Any:
        if self._dag is None:
            with _environment(ploomber_env(self.settings)):
                _quiet_placeholder_warnings()
                from ploomber.spec import DAGSpec

                env = str(env_file(self.settings.env_name, self.settings.root))
                dag = DAGSpec(str(self.settings.root / PIPELINE_FILE), env=env).to_dag()
                dag.render(show_progress=False)
            self._dag = dag
        return self._dag

    @property
    def loaded(self) -> bool:
        return self._dag is not None

    def run(self, name: str, variables: Mapping[str, str]) -> str | None:
        """Run one task; its error message, or None when it succeeded."""
        from ploomber.constants import TaskStatus

        dag = self._load()
        task = dag[name]
        # The rebuild ran or found up to date every upstream task; Ploomber, judging by its own timestamps,
        # may still wait for one and would refuse to build this task alone.
        for upstream in task.upstream.values():
            if upstream.exec_status not in (TaskStatus.Executed, TaskStatus.Skipped):
                upstream.exec_status = TaskStatus.Skipped
        with _environment({**ploomber_env(self.settings), **variables}):
            try:
                task.build(force=True)
            except Exception as exc:  # Ploomber wraps the notebook's error: report its innermost message
                return _innermost(exc)
        return None

    def settle(self, names: list[str]) -> None:
        """Tell Ploomber that tasks the rebuild found up to date are (so `ploomber status` agrees).

        Only tasks Ploomber thinks outdated by upstream timestamps alone get their metadata refreshed; a task
        whose code Ploomber sees changed is left as it is. Uses Ploomber 0.23's product status methods.
        """
        if self._dag is None:
            return
        for name in names:
            task = self._dag[name]
            product = task.product
            try:
                # a task with several products has a MetaProduct: each product caches its own status
                for part in getattr(product, "products", [product]):
                    part._reset_cached_outdated_status()
                if not product.exists() or product._outdated_code_dependency():
                    continue
                if product._outdated_data_dependencies():
                    product.metadata.update(
                        source_code=str(task.source),
                        params=task.params.to_json_serializable(params_only=True),
                    )
            except Exception as exc:  # Ploomber's bookkeeping only: the build itself is done
                log.warning("could not update Ploomber's metadata of %s: %s", name, exc)


def _innermost(exc: BaseException) -> str:
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    inner = chain[-1]
    evalue = getattr(inner, "evalue", None)  # papermill's PapermillExecutionError
    ename = getattr(inner, "ename", None)
    text = f"{ename}: {evalue}" if ename and evalue else f"{type(inner).__name__}: {inner}"
    return text.strip().splitlines()[0][:500] if text.strip() else type(inner).__name__


# --- the build ---------------------------------------------------------------------------------------------


# What a build did with a task (ran, failed, skipped as up to date, blocked by a failed upstream), or what the
# next one would do (plan: behind its inputs, waiting for an upstream that is behind, current).
Action = Literal["ran", "failed", "skipped", "blocked", "behind", "waiting", "current"]


@dataclass(frozen=True)
class TaskOutcome:
    """What one task did in a build, and why."""

    task: str
    action: Action
    reasons: list[str]
    run_id: str | None = None
    seconds: float = 0.0
    error: str | None = None

    def line(self) -> str:
        """One line for the console: ``ran      silver-events  bronze/clickstream v12 -> v14``."""
        why = "; ".join(self.reasons)
        if self.action in ("ran", "failed"):
            why += f" ({self.seconds:.0f} s, run {self.run_id})"
        if self.error:
            why += f": {self.error}"
        return f"{self.action:<8} {self.task:<28} {why}"


@dataclass
class BuildReport:
    """Every task's outcome, in the order the build took them."""

    build_id: str
    outcomes: list[TaskOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ran(self) -> list[str]:
        """Tasks that ran (succeeded or failed)."""
        return [o.task for o in self.outcomes if o.action in ("ran", "failed")]

    @property
    def failed(self) -> list[str]:
        return [o.task for o in self.outcomes if o.action == "failed"]

    @property
    def skipped(self) -> list[str]:
        return [o.task for o in self.outcomes if o.action == "skipped"]

    def outcome(self, task: str) -> TaskOutcome:
        return next(o for o in self.outcomes if o.task == task)

    def summary(self) -> str:
        return (
            f"{len(self.ran)} task(s) ran, {len(self.failed)} failed, {len(self.skipped)} up to date "
            f"({self.seconds:.1f} s)"
        )


class BuildFailed(LakehouseError):
    """A task of the DAG failed; ``report`` has every task's outcome."""

    def __init__(self, report: BuildReport, settings: Settings) -> None:
        self.report = report
        failures = ", ".join(
            f"{o.task} ({o.error})" if o.error else o.task for o in report.outcomes if o.action == "failed"
        )
        super().__init__(
            f"the DAG build failed: {failures}. The archived notebooks (`lakehouse runs find --run-id …`, "
            f"under {settings.workspace / 'runs'}) show the failing cell; the next build reruns the failed "
            "task(s) and what depends on them"
        )


def build(
    settings: Settings, *, force: bool = False, progress: Callable[[str], None] | None = None
) -> BuildReport:
    """Build the DAG: run each task whose code, parameters or inputs changed (every task with ``force``).

    Args:
        settings: the environment.
        force: rerun every task.
        progress: called with one line per task as the build goes (e.g. ``click.echo``).

    Returns:
        The report: which tasks ran, were up to date or blocked, and why.

    Raises:
        BuildFailed: a task failed (after every task that did not depend on it was built).
        ConfigError: pipeline.yaml or sources.yaml is invalid.
    """
    started = time.perf_counter()
    report = BuildReport(build_id=str(uuid.uuid4()))
    registry = load_registry(settings)
    tasks = topological(load_tasks(settings))
    by_name = {task.name: task for task in tasks}
    records: dict[str, TaskRecord | None] = {task.name: read_record(settings, task.name) for task in tasks}
    runner = _Ploomber(settings)
    stopped: set[str] = set()  # failed here, or downstream of a failure
    up_to_date: list[str] = []

    def emit(outcome: TaskOutcome) -> None:
        report.outcomes.append(outcome)
        log.info("%s", outcome.line())
        if progress is not None:
            progress(outcome.line())

    with probing(settings, registry) as ctx:
        for number in range(1, MAX_PASSES + 1):
            ran = 0
            for task in tasks:
                blockers = [name for name in task.upstream if name in stopped]
                if blockers:
                    if task.name not in stopped:
                        stopped.add(task.name)
                        emit(TaskOutcome(task.name, "blocked", [f"upstream {', '.join(blockers)} failed"]))
                    continue
                if task.name in stopped:
                    continue
                code, inputs, decision = _decision(ctx, task, by_name, records, force=force and number == 1)
                if not decision.run:
                    if number == 1:  # a later pass only reports what it runs
                        up_to_date.append(task.name)
                        emit(TaskOutcome(task.name, "skipped", decision.reasons))
                    continue
                if progress is not None:
                    progress(f"running  {task.name:<28} {'; '.join(decision.reasons)}")
                outcome, record = _run(
                    settings,
                    runner,
                    report.build_id,
                    task,
                    (decision.reasons, inputs, code),
                    records[task.name],
                    registry,
                )
                records[task.name] = record
                ran += 1
                if task.name in up_to_date:
                    up_to_date.remove(task.name)
                if outcome.action == "failed":
                    stopped.add(task.name)
                emit(outcome)
            # A feedback edge (``watch_``): a later task rewrote a file an earlier one reads, e.g. a monitor
            # asking for a retrain. Another pass runs what that makes stale, so one build settles the loop.
            again = [
                task.name
                for task in tasks
                if ran
                and watched_files(task.params)
                and task.name not in stopped
                and _decision(ctx, task, by_name, records, force=False)[2].run
            ]
            if not again:
                break
            if number == MAX_PASSES:
                log.warning("still stale after %d passes (a loop that does not settle?): %s", number, again)
                break
            if progress is not None:
                progress(f"pass {number + 1}: {', '.join(again)} read a file a later task rewrote")
    runner.settle(up_to_date)
    report.seconds = time.perf_counter() - started
    if report.failed:
        raise BuildFailed(report, settings)
    return report


def _decision(
    ctx: ProbeContext,
    task: TaskSpec,
    by_name: Mapping[str, TaskSpec],
    records: Mapping[str, TaskRecord | None],
    *,
    force: bool,
) -> tuple[str, dict[str, Check], Decision]:
    """The task's code fingerprint, its inputs as observed now, and whether (and why) it runs: one decision
    for :func:`build` and :func:`plan`."""
    code = code_fingerprint(task, ctx.settings.root)
    upstream = {name: by_name[name] for name in task.upstream}
    inputs = collect_inputs(ctx, task, upstream, records)
    decision = decide(
        records[task.name], code=code, inputs=inputs, missing_products=missing_products(task), force=force
    )
    return code, inputs, decision


def plan(settings: Settings) -> list[TaskOutcome]:
    """What the next build would run, and why, without running anything: how far each task lags its inputs.

    A task is ``behind`` when its code, parameters, declaration or inputs changed since its last successful
    run — a source's new data (Kafka end offsets, a database's watermark), an upstream table's new Delta
    version, or a failed or missing run; the reasons say which (``bronze/clickstream v12 -> v14``). It is
    ``waiting`` when an upstream task is behind (the build decides once that one ran: it may find nothing
    new for it) and ``current`` otherwise. The same decisions as :func:`build`, so every task a build would
    run is behind or waiting: a silver table that lags bronze is never reported current.

    Raises:
        ConfigError: pipeline.yaml or sources.yaml is invalid.
    """
    registry = load_registry(settings)
    tasks = topological(load_tasks(settings))
    by_name = {task.name: task for task in tasks}
    records: dict[str, TaskRecord | None] = {task.name: read_record(settings, task.name) for task in tasks}
    behind: set[str] = set()
    outcomes: list[TaskOutcome] = []
    with probing(settings, registry) as ctx:
        for task in tasks:
            waits = [name for name in task.upstream if name in behind]
            if waits:
                behind.add(task.name)
                shown = ", ".join(waits[:3]) + (f" and {len(waits) - 3} more" if len(waits) > 3 else "")
                why = f"checked again after {shown}"
                outcomes.append(TaskOutcome(task.name, "waiting", [why]))
                continue
            _, _, decision = _decision(ctx, task, by_name, records, force=False)
            if decision.run:
                behind.add(task.name)
            outcomes.append(TaskOutcome(task.name, "behind" if decision.run else "current", decision.reasons))
    return outcomes


def _run(
    settings: Settings,
    runner: _Ploomber,
    build_id: str,
    task: TaskSpec,
    decision: tuple[list[str], dict[str, Check], str],
    previous: TaskRecord | None,
    registry: Registry,
) -> tuple[TaskOutcome, TaskRecord]:
    """Run one task, archive its notebook, and record what it read if it succeeded."""
    from lakehouse.runs import archive_run, events_offset, run_lineage, table_writes

    reasons, inputs, code = decision
    run_id = str(uuid.uuid4())
    candidates = list(writes_of(settings, registry, task, previous).values())
    before = _versions(settings, candidates)
    offset = events_offset(settings)
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    error = runner.run(task.name, {TASK_RUN_VARIABLE: run_id})
    seconds = time.perf_counter() - clock
    ended_at = datetime.now(UTC)

    lineage = run_lineage(settings, run_id, offset)
    reported = [path for identity in lineage.writes if (path := identity_path(settings, identity))]
    after = _versions(settings, [*candidates, *reported])
    written = table_writes(before, after)
    archive_run(
        settings,
        run_id=run_id,
        build_id=build_id,
        task=task.name,
        status="failed" if error else "success",
        started=started_at,
        ended=ended_at,
        executed=Path(task.notebook) if task.notebook else None,
        tables=written,
        reasons=reasons,
        error=error,
    )
    if error:
        record = record_failure(settings, task.name, run_id=run_id)
        return TaskOutcome(task.name, "failed", reasons, run_id, seconds, error), record
    # What the task writes, for its downstream's inputs: what it wrote before, what lineage says it writes
    # and what changed while it ran (tables drop out of neither: a quiet run still writes them next time).
    writes = {
        identity: after.get(identity)
        for identity in {*(previous.writes if previous else {}), *lineage.writes, *(w.table for w in written)}
    }
    record = record_success(
        settings, task.name, run_id=run_id, code=code, inputs=inputs, reads=lineage.reads, writes=writes
    )
    return TaskOutcome(task.name, "ran", reasons, run_id, seconds), record


def _versions(settings: Settings, paths: Iterable[str]) -> dict[str, int | None]:
    versions: dict[str, int | None] = {}
    for path in paths:
        identity = lake_identity(settings, path)
        if identity is not None:
            versions[identity] = delta_version(path)
    return versions
