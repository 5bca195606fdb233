"""The DAG spec loads and renders on the test environment without running anything (no services, seconds).

A broken placeholder, a missing notebook, an unknown upstream or a product outside the workspace fails here,
long before the DAG tier builds it.
"""

from __future__ import annotations

import fnmatch
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
    tasks = [*spec["tasks"], *imported]
    names = [task["name"] for task in tasks]
    declared = {  # a wildcard upstream ("silver-*") stands for every task it matches
        task["name"]: {name for up in task.get("upstream", []) for name in fnmatch.filter(names, up)}
        for task in tasks
    }
    assert any(task["source"] == "notebooks/silver/build_table.ipynb" for task in imported)
    rendered = {name: set(dag[name].upstream) for name in dag}  # type: ignore[attr-defined]
    assert rendered == declared


def test_the_whole_lake_tasks_come_after_every_table_a_user_declares(dag: object) -> None:
    """Governance and profiling read the whole catalogue: a declared table (the demo's or a user's, whatever
    its name) is their upstream without anyone editing pipeline.yaml, so a change to it reruns them."""
    declared = yaml.safe_load((ROOT / "pipeline.declared.yaml").read_text())
    silver = {t["name"] for t in declared if t["name"].startswith("silver-")}
    gold = {t["name"] for t in declared if t["name"].startswith("gold-")}
    assert silver and gold
    upstream = {name: set(dag[name].upstream) for name in dag}  # type: ignore[attr-defined]
    assert silver | gold <= upstream["governance-check-catalog"]
    assert silver <= upstream["quality-profile-tables"]


def test_the_task_cache_is_keyed_by_the_imported_declared_tasks_too(
    settings: Settings, tmp_path: Path
) -> None:
    from lakehouse.dag import _spec_key

    for name in ("pipeline.yaml", "pipeline.declared.yaml", f"env.{settings.env_name}.yaml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    local = settings.model_copy(update={"root": tmp_path})
    before = _spec_key(local)
    assert _spec_key(local) == before
    with (tmp_path / "pipeline.declared.yaml").open("a") as declared:
        declared.write("# a user's new declared table, after `lakehouse dag sync`\n")
    assert _spec_key(local) != before


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
