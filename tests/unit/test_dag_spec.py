"""The DAG spec loads and renders on the test environment without running anything (no services, seconds).

A broken placeholder, a missing notebook, an unknown upstream or a product outside the workspace fails here,
long before the DAG tier builds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from lakehouse.config import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag(settings: Settings) -> object:
    from ploomber.spec import DAGSpec

    os.environ.setdefault("PLOOMBER_STATS_ENABLED", "false")
    previous = Path.cwd()
    os.chdir(ROOT)  # pipeline.yaml's sources are relative to the project
    try:
        spec = DAGSpec(str(ROOT / "pipeline.yaml"), env=str(ROOT / f"env.{settings.env_name}.yaml"))
        built = spec.to_dag()
        built.render()
    finally:
        os.chdir(previous)
    return built


def test_every_declared_task_renders_with_its_upstream(dag: object) -> None:
    spec = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    imported = yaml.safe_load((ROOT / spec["meta"]["import_tasks_from"]).read_text())
    declared = {task["name"]: set(task.get("upstream", [])) for task in [*spec["tasks"], *imported]}
    assert any(task["source"] == "notebooks/silver/build_table.ipynb" for task in imported)
    rendered = {name: set(dag[name].upstream) for name in dag}  # type: ignore[attr-defined]
    assert rendered == declared


def test_every_product_lands_in_the_test_workspace(dag: object, settings: Settings) -> None:
    checked = 0
    for name in dag:  # type: ignore[attr-defined]
        products = dag[name].product.to_json_serializable()  # type: ignore[index]
        for path in products.values() if isinstance(products, dict) else [products]:
            assert Path(path).resolve().is_relative_to(settings.workspace), f"{name}: {path}"
            checked += 1
    assert checked >= 2 * len(dag)  # type: ignore[arg-type]  # each task: its executed notebook and a table


def test_every_task_is_a_notebook_with_a_parameters_cell(dag: object) -> None:
    import json

    for name in dag:  # type: ignore[attr-defined]
        source = Path(str(dag[name].source.loc))  # type: ignore[index]
        cells = json.loads(source.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{name}: {source} needs exactly one cell tagged parameters"
