"""What the configuration-only onboarding tests share: a user's project (a copy of this one's configuration,
the project's notebooks and lib untouched), running the project's commands and notebooks in it, and the checks
every onboarded dataset must pass (suites' results, the contract, lineage, nothing under lib/ knows it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lakehouse.config import Settings
from lakehouse.dag import ploomber_env
from project_files import copy_declarations

BIN = Path(sys.executable).parent


class Project:
    """A user's project in ``root``: the configuration is theirs to edit, the notebooks are the project's."""

    def __init__(self, stack: Settings, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.stack = stack
        self.root = root
        self.env = {"LAKEHOUSE_SOURCES": str(root / "sources.yaml"), **(env or {})}

    @classmethod
    def create(cls, stack: Settings, tmp_path: Path, env: Mapping[str, str] | None = None) -> Project:
        root = tmp_path / "project"
        root.mkdir()
        copy_declarations(stack.root, root)
        for file in ("pipeline.yaml", "pipeline.declared.yaml", "sources.yaml"):
            shutil.copy(stack.root / file, root / file)
        (root / "notebooks").symlink_to(stack.root / "notebooks")
        settings = yaml.safe_load((stack.root / "env.test.yaml").read_text())
        settings["workspace"] = str(stack.workspace)  # the test stack's lake, Kafka and Spark
        (root / "env.test.yaml").write_text(yaml.safe_dump(settings))
        return cls(stack, root, env)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command of the venv (``lakehouse``, ``papermill``) in the project."""
        env = {**ploomber_env(self.stack), "LAKEHOUSE_ROOT": str(self.root), **self.env}
        done = subprocess.run(
            [str(BIN / command[0]), *command[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done

    def lakehouse(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("lakehouse", "--env", "test", *args, check=check)

    def notebook(self, path: str, out: Path, **params: str) -> None:
        """papermill one of the project's notebooks with ``params`` (and the test environment)."""
        pairs = [x for name, value in {"lakehouse_env": self.stack.env_name, **params}.items()
                 for x in ("-p", name, value)]  # fmt: skip
        self.run("papermill", path, str(out / f"{Path(path).stem}-{len(list(out.glob('*')))}.ipynb"), *pairs)

    def contract(self, table: str) -> dict[str, Any]:
        layer, _, name = table.partition(".")
        document: dict[str, Any] = yaml.safe_load(
            (self.root / "catalog" / layer / f"{name}.yaml").read_text()
        )
        return document

    def write_contract(self, table: str, document: Mapping[str, Any]) -> None:
        layer, _, name = table.partition(".")
        (self.root / "catalog" / layer / f"{name}.yaml").write_text(
            yaml.safe_dump(dict(document), sort_keys=False)
        )

    def gold_model(
        self,
        name: str,
        sql: str,
        columns: list[tuple[str, str]],
        expectations: list[dict[str, Any]],
        owner: str,
    ) -> None:
        """A SQL gold model of the user's own: the query, its contract and its suite."""
        (self.root / "models" / "gold" / f"{name}.sql").write_text(sql)
        self.write_contract(
            f"gold.{name}",
            {
                "table": f"gold.{name}",
                "owner": owner,
                "description": f"{name}, a model of the user's own.",
                "classification": "internal",
                "model": {"sql": f"models/gold/{name}.sql"},
                "columns": [{"name": c, "type": t, "description": c} for c, t in columns],
            },
        )
        suite = {"name": f"gold.{name}", "meta": {"notes": "the user's own"}, "expectations": expectations}
        (self.root / "quality" / "suites" / "gold" / f"{name}.json").write_text(json.dumps(suite, indent=2))

    def declared_tasks(self) -> dict[str, dict[str, Any]]:
        self.lakehouse("dag", "sync")
        return {t["name"]: t for t in yaml.safe_load((self.root / "pipeline.declared.yaml").read_text())}


def rule(kind: str, name: str, action: str = "fail", **kwargs: Any) -> dict[str, Any]:
    """One expectation of a suite (GX's type and kwargs, the workbench's rule name and action)."""
    return {"type": kind, "kwargs": kwargs, "meta": {"rule": name, "action": action}}


def task(table: str) -> str:
    return table.replace(".", "-").replace("_", "-")


def lineage_runs(stack: Settings, job: str) -> list[dict[str, Any]]:
    """The COMPLETE events of ``job``, each with the catalog names of its inputs and outputs."""
    events = [
        json.loads(line)
        for line in (stack.reports / "lineage" / "openlineage.jsonl").read_text().splitlines()
    ]

    def names(datasets: Iterable[dict[str, Any]]) -> set[str]:
        found = set()
        for dataset in datasets:
            symlinks = dataset.get("facets", {}).get("symlinks", {}).get("identifiers", [])
            found |= {s["name"] for s in symlinks} or {dataset["name"]}
        return found

    return [
        {
            "run_id": e["run"]["runId"],
            "inputs": names(e.get("inputs", [])),
            "outputs": names(e.get("outputs", [])),
        }
        for e in events
        if e["eventType"] == "COMPLETE" and e["job"]["name"] == job
    ]


def assert_traced(stack: Settings, bronze: str, silver: str, gold: str) -> dict[str, list[str]]:
    """Lineage links bronze → silver → gold through the tasks' completed runs; the suites' results of those
    runs are recorded. Returns the rules recorded per table."""
    from lakehouse.quality import results_for_run

    silver_runs = [
        r for r in lineage_runs(stack, task(silver)) if bronze in r["inputs"] and silver in r["outputs"]
    ]
    gold_runs = [r for r in lineage_runs(stack, task(gold)) if silver in r["inputs"] and gold in r["outputs"]]
    assert silver_runs and gold_runs, (lineage_runs(stack, task(silver)), lineage_runs(stack, task(gold)))
    rules: dict[str, list[str]] = {}
    for table, runs in ((silver, silver_runs), (gold, gold_runs)):
        for run in runs:
            results = results_for_run(stack, run["run_id"])
            rules.setdefault(table, []).extend(results.loc[results["table"] == table, "rule"].tolist())
        assert rules[table], f"no suite results recorded for {table}"
    return rules


def assert_lib_knows_none_of(stack: Settings, words: Iterable[str]) -> None:
    """No file under lib/ names the dataset (its source, tables or fields), and lib/ is unchanged by the test."""
    lib = stack.root / "lib"
    words = list(words)
    mentions = [
        str(path.relative_to(stack.root))
        for path in lib.rglob("*")
        if path.is_file()
        and path.suffix in {".py", ".yaml", ".json", ".toml", ".sql"}
        and any(word in path.read_text(encoding="utf-8", errors="replace") for word in words)
    ]
    assert mentions == [], mentions
    changed = subprocess.run(
        ["git", "status", "--porcelain", "lib"], cwd=stack.root, capture_output=True, text=True, check=True
    ).stdout
    assert changed == "", changed
