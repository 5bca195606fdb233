"""The DAG's declared part: one task per declared table, upstream from its inputs, never hand-edited."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakehouse.config import Settings
from lakehouse.declared_dag import declared_tasks, sync
from lakehouse.errors import ConfigError
from project_files import copy_declarations

pytestmark = pytest.mark.unit


def test_the_committed_declared_tasks_match_the_declarations(settings: Settings) -> None:
    assert sync(settings, check=True) is False


def _project(settings: Settings, tmp_path: Path) -> Settings:
    root = tmp_path / "project"
    root.mkdir()
    for name in ("pipeline.yaml", "pipeline.declared.yaml", "sources.yaml"):
        shutil.copy(settings.root / name, root / name)
    copy_declarations(settings.root, root)
    return settings.model_copy(update={"root": root})


def _declare(project: Settings, name: str, build: dict[str, Any]) -> Path:
    path = project.root / "catalog" / "silver" / f"{name}.yaml"
    contract = {
        "table": f"silver.{name}",
        "owner": "me",
        "description": "Mine.",
        "classification": "internal",
        "build": build,
        "columns": [{"name": "id", "type": "long"}, {"name": "other_id", "type": "long"}],
    }
    path.write_text(yaml.safe_dump(contract))
    return path


def test_a_new_declaration_is_a_new_task_downstream_of_what_writes_its_inputs(
    settings: Settings, tmp_path: Path
) -> None:
    project = _project(settings, tmp_path)
    before = {t["name"]: t for t in declared_tasks(project)}
    _declare(project, "rates_copy", {"inputs": [{"table": "silver.fx_rates"}], "key": ["id"]})
    _declare(
        project,
        "mine",
        {
            "inputs": [{"table": "bronze.fx_rates", "format": "json", "column": "record"}],
            "key": ["id"],
            "references": [{"columns": ["other_id"], "table": "silver.rates_copy", "to": ["id"]}],
        },
    )
    assert sync(project) is True
    tasks = {t["name"]: t for t in yaml.safe_load((project.root / "pipeline.declared.yaml").read_text())}
    assert tasks["silver-rates-copy"]["upstream"] == ["silver-fx-rates"]
    assert tasks["silver-mine"]["upstream"] == ["bronze-pull-apis", "silver-rates-copy"]
    assert tasks["silver-mine"]["params"]["table"] == "silver.mine"
    assert tasks["silver-fx-rates"] == before["silver-fx-rates"]  # existing tasks are not disturbed
    names = list(tasks)
    assert names.index("silver-fx-rates") < names.index("silver-rates-copy") < names.index("silver-mine")
    with pytest.raises(ConfigError, match="out of date"):
        _declare(
            project, "mine", {"inputs": [{"table": "bronze.fx_rates"}], "key": ["other_id"], "dedupe": False}
        )
        sync(project, check=True)


def test_a_table_nobody_writes_and_a_cycle_are_named(settings: Settings, tmp_path: Path) -> None:
    project = _project(settings, tmp_path)
    _declare(project, "orphan", {"inputs": [{"table": "bronze.nowhere"}]})
    with pytest.raises(
        ConfigError, match=r"silver/orphan\.yaml: build reads bronze\.nowhere.*bronze: nowhere"
    ):
        declared_tasks(project)
    (project.root / "catalog" / "silver" / "orphan.yaml").unlink()
    _declare(project, "a", {"inputs": [{"table": "silver.b"}]})
    _declare(project, "b", {"inputs": [{"table": "silver.a"}]})
    with pytest.raises(ConfigError, match=r"cycle.*catalog/silver/a\.yaml, catalog/silver/b\.yaml"):
        declared_tasks(project)
