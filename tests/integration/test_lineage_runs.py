"""Lineage in real kernels and real Spark: papermill notebooks emit START/COMPLETE/FAIL; the OpenLineage Spark
listener of the test stack writes column-level lineage for a Delta write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake

from lakehouse.config import Settings
from lakehouse.lineage import events_file, lineage_graph, spark_events_file
from lakehouse.lineage.spec import SpecValidator, find_spec_dir

pytestmark = pytest.mark.integration

_SETUP = """\
from pathlib import Path
from deltalake import write_deltalake
import pandas as pd
from lakehouse.config import load_settings
from lakehouse.lineage import track_run
settings = load_settings(lakehouse_env).model_copy(update={"workspace": Path(workspace)})
run = track_run(settings, job="silver-events", inputs=["bronze.clickstream"],
                outputs=["silver.events"], notebook="notebooks/silver/build_table.ipynb")
"""
_WRITE = """\
write_deltalake(settings.table_path("silver", "events"),
                pd.DataFrame({"event_id": ["e1", "e2", "e3", "e4"], "amount": [1.0, 2.0, 3.0, 4.0]}))
if fail:
    raise ValueError("the batch does not reconcile")
"""
_COMPLETE = "run.complete()\n"


def _notebook(path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('lakehouse_env = "test"\nworkspace = ""\nfail = False\n')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [
        parameters,
        nbformat.v4.new_code_cell(_SETUP),
        nbformat.v4.new_code_cell(_WRITE),
        nbformat.v4.new_code_cell(_COMPLETE),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


def _papermill(
    settings: Settings, tmp_path: Path, workspace: Path, fail: bool
) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "track.ipynb"
    _notebook(source)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "papermill"), str(source), str(tmp_path / "out.ipynb"),
         "-p", "lakehouse_env", settings.env_name, "-p", "workspace", str(workspace),
         "-p", "fail", str(fail)],
        cwd=settings.root, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


# The spec's JSON Schema, kept as test data (no package ships it): tests/data/openlineage-spec/README.md.
SPEC_DIR = Path(__file__).resolve().parents[1] / "data" / "openlineage-spec"


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _validate(events: list[dict[str, Any]]) -> None:
    spec = find_spec_dir((SPEC_DIR,))
    assert spec is not None, f"the OpenLineage spec is missing from {SPEC_DIR}"
    validator = SpecValidator(spec)
    for event in events:
        assert validator.errors(event) == [], event["eventType"]


def test_a_notebook_that_succeeds_emits_start_then_complete_with_delta_facets(
    settings: Settings, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    lake = settings.model_copy(update={"workspace": workspace})
    write_deltalake(lake.table_path("bronze", "clickstream"), pd.DataFrame({"payload": ["{}", "{}"]}))
    result = _papermill(settings, tmp_path, workspace, fail=False)
    assert result.returncode == 0, result.stderr[-3000:]

    events = _events(events_file(lake))
    assert [event["eventType"] for event in events] == ["START", "COMPLETE"]
    assert len({event["run"]["runId"] for event in events}) == 1
    output = events[1]["outputs"][0]["facets"]
    table = DeltaTable(lake.table_path("silver", "events"))
    assert output["delta"]["version"] == table.version()
    assert output["dataQualityMetrics"]["rowCount"] == len(table.to_pandas()) == 4
    assert [field["name"] for field in output["schema"]["fields"]] == [f.name for f in table.schema().fields]
    assert events[1]["inputs"][0]["facets"]["dataQualityMetrics"]["rowCount"] == 2
    assert events[1]["job"]["facets"]["sourceCodeLocation"]["path"] == "notebooks/silver/build_table.ipynb"
    _validate(events)


def test_a_notebook_whose_cell_raises_emits_fail_once(settings: Settings, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    lake = settings.model_copy(update={"workspace": workspace})
    result = _papermill(settings, tmp_path, workspace, fail=True)
    assert result.returncode != 0
    assert "the batch does not reconcile" in result.stderr

    events = _events(events_file(lake))
    assert [event["eventType"] for event in events] == ["START", "FAIL"]
    error = events[1]["run"]["facets"]["errorMessage"]
    assert error["message"] == "ValueError: the batch does not reconcile"
    assert error["programmingLanguage"] == "python"
    assert "ValueError" in error["stackTrace"]
    _validate(events)


def _wait_for(path: Path, predicate: Any, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Events of ``path`` once one matches ``predicate`` (the listener writes asynchronously)."""
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            events = _events(path)
            if any(predicate(event) for event in events):
                return events
        time.sleep(1.0)
    return events


def test_spark_listener_writes_column_lineage_for_a_delta_write(stack: Settings, spark: Any) -> None:
    assert stack.lineage.spark_listener, "the test environment runs Spark with the OpenLineage listener"
    suffix = uuid.uuid4().hex[:8]
    source = stack.table_path("bronze", f"lineage_src_{suffix}")
    target = stack.table_path("silver", f"lineage_out_{suffix}")
    spark.createDataFrame([(1, "a", 2.0), (2, "b", 3.0)], "id long, name string, price double").write.format(
        "delta"
    ).mode("overwrite").save(source)
    spark.read.format("delta").load(source).selectExpr(
        "id", "upper(name) AS name_upper", "price * 2 AS double_price"
    ).write.format("delta").mode("overwrite").save(target)

    def lineage_of_target(event: dict[str, Any]) -> bool:
        return any(
            output["name"] == target and "columnLineage" in (output.get("facets") or {})
            for output in event.get("outputs") or []
        )

    events = _wait_for(spark_events_file(stack), lineage_of_target)
    matching = [event for event in events if lineage_of_target(event)]
    assert matching, f"no columnLineage for {target} in {spark_events_file(stack)} ({len(events)} events)"
    output = next(o for o in matching[-1]["outputs"] if o["name"] == target)
    fields = output["facets"]["columnLineage"]["fields"]
    assert set(fields) == {"id", "name_upper", "double_price"}
    assert fields["double_price"]["inputFields"][0]["field"] == "price"
    assert fields["double_price"]["inputFields"][0]["name"] == source
    edges = lineage_graph(stack)
    assert (
        (edges["input"] == f"bronze.lineage_src_{suffix}")
        & (edges["output"] == f"silver.lineage_out_{suffix}")
    ).any()
