"""The package's imports run one way: along the data's path, and never in a cycle, even lazily.

Cycles: two were opened (``governance.catalog`` ↔ ``privacy.scanner``: the detectors are now their own
module; ``quality.results`` ↔ ``quality.validate``: the result row lives beside its schema), and one would be
too easy to add again when a function-level import hides it.

Direction: every module has a stage (:data:`STAGES`). The stages of the path are ranked as the data flows —
foundation < declarations < cross-cutting < sources < silver < gold < serve — and a module on the path imports
only from its own stage or an earlier one: a connector never imports silver, silver never imports gold or
serving. ``simulate``, ``stack``, the CLI and the orchestration (the DAG, rebuilds, continuous mode's
supervisor, onboarding) are outside the path: they drive it, so they may import any stage, and no module on
the path imports them. A simulator stops at the sources: it feeds them and reads nothing the lake computed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import networkx as nx
import pytest

pytestmark = pytest.mark.unit

LIB = Path(__file__).resolve().parents[2] / "lib"

# The data's path, upstream first.
PATH = ("foundation", "declarations", "cross-cutting", "sources", "silver", "gold", "serve")
# What drives the path from outside it.
OUTSIDE = ("simulate", "stack", "cli", "orchestration")

# A module's stage is its own entry or, failing that, its nearest package's (a new module in a package takes
# the package's stage; a new top-level module must be placed here). A module named ``cli`` or ``*_cli`` is
# a command group (stage ``cli``) wherever it lives.
STAGES: dict[str, str] = {
    # settings, errors, atomic files, the one Spark session and Kafka client factory, Delta helpers (Spark, Arrow)
    "lakehouse": "foundation",
    "lakehouse.errors": "foundation",
    "lakehouse.config": "foundation",
    "lakehouse.state": "foundation",
    "lakehouse.spark": "foundation",
    "lakehouse.tables": "foundation",
    "lakehouse.arrow_lake": "foundation",
    "lakehouse.jvm": "foundation",
    "lakehouse.notebook": "foundation",
    "lakehouse.kafka_clients": "foundation",
    "lakehouse.lag": "foundation",
    # what the user declares: contracts' build/model sections and payloads, the source registry
    # (sources.yaml's model, read by every stage)
    "lakehouse.contracts": "declarations",
    "lakehouse.sources.registry": "declarations",
    # every stage validates, catalogues, protects and traces what it writes
    "lakehouse.governance": "cross-cutting",
    "lakehouse.quality": "cross-cutting",
    "lakehouse.privacy": "cross-cutting",
    "lakehouse.lineage": "cross-cutting",
    "lakehouse.profiling": "cross-cutting",
    # connectors that land bronze, and the topic-to-topic processors ahead of it
    "lakehouse.sources": "sources",
    "lakehouse.streaming.processors": "sources",
    "lakehouse.silver": "silver",
    "lakehouse.gold": "gold",
    "lakehouse.serving": "serve",
    "lakehouse.ml": "serve",
    # outside the path
    "lakehouse.simulate": "simulate",
    "lakehouse.stack": "stack",
    "lakehouse.cli_kit": "cli",
    "lakehouse.dag": "orchestration",
    "lakehouse.rebuild": "orchestration",
    "lakehouse.runs": "orchestration",
    "lakehouse.declared_dag": "orchestration",
    "lakehouse.onboarding": "orchestration",
    "lakehouse.streaming": "orchestration",
}

# What a simulator may import: it produces into the sources and knows nothing downstream of bronze.
SIMULATE_MAY_IMPORT = {"foundation", "declarations", "sources", "simulate", "stack"}

# Imports against the path in files their owners are changing now: each with why it is still here. Remove
# the entry with the import (a stale entry fails too).
KNOWN: dict[tuple[str, str], str] = {}


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = LIB) -> nx.DiGraph:
    """Every ``lakehouse`` import of every module under ``root``, at module level or inside a function."""
    modules = {_module(path, root): path for path in (root / "lakehouse").rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lakehouse"):
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph.add_edges_from((name, target) for target in targets if target in modules and target != name)
    return graph


def stage(module: str) -> str | None:
    """The stage of ``module`` (:data:`STAGES`), or None when neither it nor a package above it is placed."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf == "cli" or leaf.endswith("_cli"):
        return "cli"
    name = module
    while "." in name:
        if name in STAGES:
            return STAGES[name]
        name = name.rsplit(".", 1)[0]
    return STAGES.get(module)


def against_the_path(edges: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The imports (importer, imported) that run against the data's direction."""
    found = []
    for importer, imported in edges:
        source, target = stage(importer), stage(imported)
        if source in PATH:
            wrong = target not in PATH or PATH.index(target) > PATH.index(source)
        elif source == "simulate":
            wrong = target not in SIMULATE_MAY_IMPORT
        else:
            wrong = False
        if wrong:
            found.append((importer, imported))
    return sorted(found)


def test_the_graph_sees_the_package() -> None:
    graph = import_graph()
    assert graph.number_of_nodes() > 60
    assert graph.has_edge("lakehouse.governance.catalog", "lakehouse.privacy.detectors")
    # a function-level import is an edge too
    assert graph.has_edge("lakehouse.sources.http_cli", "lakehouse.simulate.fx_api")


def test_no_module_imports_itself_back() -> None:
    cycles = sorted(sorted(cycle) for cycle in nx.simple_cycles(import_graph()))
    assert cycles == []


def test_every_module_has_a_stage() -> None:
    unplaced = sorted(name for name in import_graph() if stage(name) not in (*PATH, *OUTSIDE))
    assert unplaced == [], "place each in STAGES (its stage on the data's path, or outside it)"


def test_the_stages_are_where_the_layout_says() -> None:
    assert stage("lakehouse.sources.mqtt") == "sources"
    assert stage("lakehouse.sources.kafka") == "sources"
    assert stage("lakehouse.sources.registry") == "declarations"
    assert stage("lakehouse.sources.mqtt_cli") == "cli"
    assert stage("lakehouse.silver.engine") == "silver"
    assert stage("lakehouse.gold.rollups") == "gold"
    assert stage("lakehouse.simulate.fx_api") == "simulate"
    assert stage("lakehouse.simulate.retail") == "simulate"
    assert stage("lakehouse.streaming.continuous") == "orchestration"
    assert stage("lakehouse.cli") == "cli"
    assert stage("lakehouse") == "foundation"
    assert stage("lakehouse.somewhere_new") is None


def test_no_import_runs_against_the_data() -> None:
    found = against_the_path(import_graph().edges)
    unexplained = [edge for edge in found if edge not in KNOWN]
    stale = [edge for edge in KNOWN if edge not in found]
    assert unexplained == [], "move the shared piece upstream instead of importing downstream"
    assert stale == [], "these imports are gone: remove their KNOWN entries"


def test_contracts_are_a_leaf() -> None:
    graph = import_graph()
    contracts = [name for name in graph if name.startswith("lakehouse.contracts")]
    assert contracts
    reached = sorted(
        (name, target)
        for name in contracts
        for target in graph.successors(name)
        if stage(target) != "foundation" and not target.startswith("lakehouse.contracts")
    )
    assert reached == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("lakehouse.sources.mqtt", "lakehouse.silver.engine"),  # a connector reading silver
        ("lakehouse.silver.engine", "lakehouse.gold.models"),
        ("lakehouse.silver.engine", "lakehouse.serving.gold"),
        ("lakehouse.gold.models", "lakehouse.ml.training"),
        ("lakehouse.contracts.build", "lakehouse.quality.suites"),
        ("lakehouse.config", "lakehouse.contracts.payload"),
        ("lakehouse.sources.kafka", "lakehouse.simulate.clickstream"),  # the path importing a driver
        ("lakehouse.sources.postgres", "lakehouse.simulate.retail"),  # the extract knowing the demo's tables
        ("lakehouse.silver.engine", "lakehouse.stack.kafka"),
        ("lakehouse.quality.validate", "lakehouse.sources.cdc_cli"),
        ("lakehouse.gold.rollups", "lakehouse.streaming.continuous"),
        ("lakehouse.simulate.devices", "lakehouse.silver.engine"),  # a simulator reading the lake
    ],
)
def test_an_import_downstream_is_found(importer: str, imported: str) -> None:
    assert against_the_path([(importer, imported)]) == [(importer, imported)]


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("lakehouse.silver.engine", "lakehouse.sources.registry"),
        ("lakehouse.gold.rollups", "lakehouse.sources.kafka"),
        ("lakehouse.serving.quality", "lakehouse.lineage.graph"),
        ("lakehouse.simulate.devices", "lakehouse.sources.device_registry"),
        ("lakehouse.simulate.retail", "lakehouse.sources.postgres_connection"),
        ("lakehouse.streaming.continuous", "lakehouse.silver.engine"),
        ("lakehouse.sources.http_cli", "lakehouse.simulate.fx_api"),
    ],
)
def test_an_import_upstream_or_from_outside_is_not(importer: str, imported: str) -> None:
    assert against_the_path([(importer, imported)]) == []


def test_a_lazy_import_downstream_is_found(tmp_path: Path) -> None:
    package = tmp_path / "lakehouse"
    for folder in ("sources", "silver"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "silver" / "engine.py").write_text("X = 1\n")
    (package / "sources" / "mqtt.py").write_text(
        "def normalize():\n    from lakehouse.silver.engine import X\n\n    return X\n"
    )
    graph = import_graph(tmp_path)
    assert against_the_path(graph.edges) == [("lakehouse.sources.mqtt", "lakehouse.silver.engine")]
