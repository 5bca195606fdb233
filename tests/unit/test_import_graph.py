"""The package's imports run one way: no module imports another that imports it back, even lazily.

Two such cycles were opened (``governance.catalog`` ↔ ``privacy.scanner``: the detectors are now their own
module; ``quality.results`` ↔ ``quality.validate``: the result row lives beside its schema), and one would be
too easy to add again when a function-level import hides it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

pytestmark = pytest.mark.unit

LIB = Path(__file__).resolve().parents[2] / "lib"


def _module(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    """Every ``lakehouse`` import of every module, at module level or inside a function."""
    modules = {_module(path): path for path in (LIB / "lakehouse").rglob("*.py")}
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


def test_the_graph_sees_the_package() -> None:
    graph = import_graph()
    assert graph.number_of_nodes() > 60
    assert graph.has_edge("lakehouse.governance.catalog", "lakehouse.privacy.detectors")


def test_no_module_imports_itself_back() -> None:
    cycles = sorted(sorted(cycle) for cycle in nx.simple_cycles(import_graph()))
    assert cycles == []
