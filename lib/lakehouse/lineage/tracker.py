"""OpenLineage run tracking for notebook tasks and CLI/library code.

A notebook calls :func:`track_run` once (START is emitted, an IPython hook turns the first cell that raises
into one FAIL event) and ``run.complete()`` at its end (COMPLETE, with each dataset's schema, Delta version,
row count and the data-quality assertions of this run id). Code outside a kernel uses :func:`lineage_run`.
"""

from __future__ import annotations

import logging
import os
import traceback
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated import (
    error_message_run,
    job_type_job,
    parent_run,
    processing_engine_run,
    source_code_location_job,
)
from openlineage.client.generated.base import DatasetFacet, InputDatasetFacet, JobFacet, RunFacet
from openlineage.client.generated.data_quality_assertions_dataset import DataQualityAssertionsDatasetFacet

from lakehouse.config import Settings
from lakehouse.lineage.datasets import (
    assertions_facets,
    dataset_names,
    delta_facets,
    split_identity,
    symlinks_facet,
    validation_rows,
)
from lakehouse.lineage.emitter import LineageEmitter

log = logging.getLogger(__name__)

PARENT_RUN_VARIABLE = "LAKEHOUSE_PARENT_RUN_ID"
PARENT_JOB_VARIABLE = "LAKEHOUSE_PARENT_JOB"
PARENT_JOB_DEFAULT = "lakehouse-dag"
NOTEBOOK_VARIABLE = "LAKEHOUSE_NOTEBOOK"
# Set by `lakehouse build` for the kernel of each task it runs: the notebook's run then carries the id the
# DAG archives its executed notebook under (lakehouse.runs).
TASK_RUN_VARIABLE = "LAKEHOUSE_TASK_RUN_ID"

# The run a kernel is tracking: a notebook re-run in JupyterLab replaces it (and its hook).
_ACTIVE: LineageRun | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat()


DISTRIBUTION = "lakehouse-workbench"  # the installed distribution (the import package is `lakehouse`)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


class LineageRun:
    """One run of a job: emits START, then exactly one of COMPLETE or FAIL.

    Attributes:
        run_id: the run's UUID string; pass it to the quality functions so their results join the run.
        state: ``"NEW"``, ``"RUNNING"``, ``"COMPLETE"`` or ``"FAIL"``.
    """

    def __init__(
        self,
        settings: Settings,
        job: str,
        inputs: Sequence[str] = (),
        outputs: Sequence[str] = (),
        *,
        run_id: str | None = None,
        job_type: str = "NOTEBOOK",
        source: str | None = None,
        emitter: LineageEmitter | None = None,
    ) -> None:
        for identity in (*inputs, *outputs):
            split_identity(identity)  # fail fast on a malformed table name
        self.settings = settings
        self.job = job
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.run_id = str(uuid.UUID(run_id)) if run_id else str(uuid.uuid4())
        self.job_type = job_type
        self.source = source or os.environ.get(NOTEBOOK_VARIABLE)
        self.emitter = emitter or LineageEmitter(settings)
        self.state = "NEW"
        self.events: list[RunEvent] = []
        self._hook: Any = None

    # -- facets ------------------------------------------------------------------------------------------
    def _job(self) -> Job:
        facets: dict[str, JobFacet] = {
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="LAKEHOUSE", jobType=self.job_type
            )
        }
        if self.source:
            path = os.path.abspath(self.source)
            facets["sourceCodeLocation"] = source_code_location_job.SourceCodeLocationJobFacet(
                type="file", url=f"file://{path}", path=os.path.relpath(path, self.settings.root)
            )
        return Job(namespace=self.settings.lineage.namespace, name=self.job, facets=facets)

    def _run(self, extra: dict[str, RunFacet] | None = None) -> Run:
        facets: dict[str, RunFacet] = {
            "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
                version=_package_version(), name="lakehouse"
            )
        }
        parent_id = os.environ.get(PARENT_RUN_VARIABLE)
        if parent_id:
            try:
                parent_id = str(uuid.UUID(parent_id))
                facets["parent"] = parent_run.ParentRunFacet(
                    run=parent_run.Run(runId=parent_id),
                    job=parent_run.Job(
                        namespace=self.settings.lineage.namespace,
                        name=os.environ.get(PARENT_JOB_VARIABLE, PARENT_JOB_DEFAULT),
                    ),
                )
            except ValueError:
                log.warning("%s=%r is not a UUID: no parent run facet", PARENT_RUN_VARIABLE, parent_id)
        facets.update(extra or {})
        return Run(runId=self.run_id, facets=facets)

    def _datasets(self, detailed: bool) -> tuple[list[InputDataset], list[OutputDataset]]:
        """The run's datasets; ``detailed`` adds the Delta facets and this run's assertions.

        The spec types ``dataQualityAssertions`` as an input facet: an input table carries it in
        ``inputFacets``; a table this task validated and wrote carries it in its dataset ``facets`` (the
        same JSON, where dataset views such as Marquez's and the dashboard look).
        """
        assertions: dict[str, DataQualityAssertionsDatasetFacet] = {}
        if detailed:
            try:
                assertions = assertions_facets(validation_rows(self.settings, self.run_id))
            except Exception as exc:  # an unreadable audit table must not fail the task
                log.warning("could not read validation results for run %s: %s", self.run_id, exc)

        def facets(identity: str) -> tuple[str, str, dict[str, DatasetFacet]]:
            namespace, name, path = dataset_names(self.settings, identity)
            found: dict[str, DatasetFacet] = {"symlinks": symlinks_facet(self.settings, identity)}
            if detailed and path:  # sources (topics, databases, APIs) carry their identity only
                try:
                    found.update(delta_facets(path))
                except Exception as exc:
                    log.warning("could not read Delta facets of %s at %s: %s", identity, path, exc)
            return namespace, name, found

        inputs, outputs = [], []
        for identity in self.inputs:
            namespace, name, found = facets(identity)
            input_facets: dict[str, InputDatasetFacet] = {}
            if identity in assertions:
                input_facets["dataQualityAssertions"] = assertions[identity]
            inputs.append(
                InputDataset(namespace=namespace, name=name, facets=found, inputFacets=input_facets)
            )
        for identity in self.outputs:
            namespace, name, found = facets(identity)
            if identity in assertions:
                found["dataQualityAssertions"] = cast(DatasetFacet, assertions[identity])
            outputs.append(OutputDataset(namespace=namespace, name=name, facets=found))
        return inputs, outputs

    def _emit(self, state: RunState, run_facets: dict[str, RunFacet] | None = None) -> RunEvent:
        inputs, outputs = self._datasets(detailed=state != RunState.START)
        event = RunEvent(
            eventType=state,
            eventTime=_now(),
            run=self._run(run_facets),
            job=self._job(),
            inputs=inputs,
            outputs=outputs,
        )
        self.emitter.emit(event)
        self.events.append(event)
        return event

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> RunEvent:
        """Emit START (once)."""
        if self.state != "NEW":
            raise RuntimeError(f"run {self.run_id} of {self.job} already started")
        self.state = "RUNNING"
        return self._emit(RunState.START)

    def complete(self) -> RunEvent | None:
        """Emit COMPLETE with the datasets' facets. Does nothing (returns None) after a FAIL."""
        if self.state == "FAIL":
            log.warning("run %s of %s already failed: COMPLETE not emitted", self.run_id, self.job)
            return None
        if self.state == "COMPLETE":
            return None
        if self.state == "NEW":
            self.start()
        self.state = "COMPLETE"
        self.unregister_hook()
        return self._emit(RunState.COMPLETE)

    def fail(self, error: BaseException | str, stack: str | None = None) -> RunEvent | None:
        """Emit FAIL with an ``errorMessage`` facet (once; later calls do nothing and return None)."""
        if self.state in ("FAIL", "COMPLETE"):
            return None
        if self.state == "NEW":
            self.start()
        self.state = "FAIL"
        self.unregister_hook()
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
            stack = stack or "".join(traceback.format_exception(type(error), error, error.__traceback__))
        else:
            message = error
        facet = error_message_run.ErrorMessageRunFacet(
            message=message, programmingLanguage="python", stackTrace=stack
        )
        return self._emit(RunState.FAIL, {"errorMessage": facet})

    # -- IPython -----------------------------------------------------------------------------------------
    def register_hook(self, shell: Any) -> None:
        """Emit FAIL when a cell run by ``shell`` (an IPython shell) raises."""

        def post_run_cell(result: Any) -> None:
            error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
            if error is not None and self.state == "RUNNING":
                self.fail(error)

        self._hook = (shell, post_run_cell)
        shell.events.register("post_run_cell", post_run_cell)

    def unregister_hook(self) -> None:
        """Remove the IPython hook (after COMPLETE or FAIL, or when a new run replaces this one)."""
        if self._hook is None:
            return
        shell, callback = self._hook
        self._hook = None
        try:
            shell.events.unregister("post_run_cell", callback)
        except ValueError:
            pass


def _ipython_shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def track_run(
    settings: Settings,
    job: str,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    *,
    run_id: str | None = None,
    notebook: str | None = None,
) -> LineageRun:
    """Start tracking a notebook task: emits START and, in a kernel, turns a failing cell into FAIL.

    Args:
        settings: the environment (its ``lineage`` section selects the transport).
        job: the task name, kebab-case as in pipeline.yaml (e.g. ``"silver-events"``).
        inputs: tables read, as ``"<layer>.<name>"``.
        outputs: tables written, as ``"<layer>.<name>"``.
        run_id: reuse a run id (default: ``$LAKEHOUSE_TASK_RUN_ID``, which `lakehouse build` sets for the
            task it runs, else a new UUID).
        notebook: the notebook's path for the source-code facet (default: ``$LAKEHOUSE_NOTEBOOK``).

    Returns:
        The running :class:`LineageRun`; call ``run.complete()`` in the notebook's last cell.

    Example:
        >>> run = track_run(settings, job="silver-events",            # doctest: +SKIP
        ...                 inputs=["bronze.clickstream"], outputs=["silver.events"])
        >>> run.complete()                                                   # doctest: +SKIP
    """
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.unregister_hook()
    run_id = run_id or os.environ.get(TASK_RUN_VARIABLE) or None
    run = LineageRun(settings, job, inputs, outputs, run_id=run_id, source=notebook)
    shell = _ipython_shell()
    run.start()
    if shell is not None and hasattr(shell, "events"):
        run.register_hook(shell)
    _ACTIVE = run
    return run


@contextmanager
def lineage_run(
    settings: Settings,
    job: str,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    *,
    run_id: str | None = None,
    job_type: str = "COMMAND",
) -> Iterator[LineageRun]:
    """A tracked run around a block: START on entry, COMPLETE on success, FAIL (and re-raise) on error.

    Example:
        >>> with lineage_run(settings, "gold-build-sessions", ["silver.events"], ["gold.sessions"]) as run:
        ...     build(run_id=run.run_id)                                     # doctest: +SKIP
    """
    run = LineageRun(settings, job, inputs, outputs, run_id=run_id, job_type=job_type)
    run.start()
    try:
        yield run
    except BaseException as exc:
        run.fail(exc)
        raise
    run.complete()
