"""The lineage graph read back from the JSON Lines event files (notebook/CLI events and the Spark listener's).

Datasets appear under their workbench identity (``silver.events``) when known: the ``symlinks`` facet of the
notebooks' events, or the lake path of the Spark listener's events; other datasets keep
``<namespace>:<name>``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from lakehouse.config import Settings
from lakehouse.lineage.datasets import identity_from_path
from lakehouse.lineage.emitter import lineage_dir

log = logging.getLogger(__name__)

EDGE_COLUMNS = ["job", "input", "output", "state", "event_time", "run_id", "source"]
TERMINAL = {"COMPLETE", "FAIL", "ABORT"}


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """The run events of one JSON Lines file; malformed lines are skipped with a warning."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d is not JSON: skipped", path, number)
                continue
            if isinstance(event, dict) and "run" in event and "job" in event:
                yield event


def dataset_label(settings: Settings, dataset: dict[str, Any]) -> str:
    """``layer.name`` when the dataset is a lake table, else ``namespace:name``."""
    identifiers = ((dataset.get("facets") or {}).get("symlinks") or {}).get("identifiers") or []
    for identifier in identifiers:
        if identifier.get("namespace") == settings.lineage.namespace:
            return str(identifier["name"])
    namespace, name = str(dataset.get("namespace", "")), str(dataset.get("name", ""))
    return identity_from_path(settings, namespace, name) or f"{namespace}:{name}"


def lineage_events(settings: Settings) -> pd.DataFrame:
    """Every run event of ``<reports>/lineage/*.jsonl``, one row each (job, run_id, state, time, datasets)."""
    rows = []
    for path in sorted(lineage_dir(settings).glob("*.jsonl")):
        for event in read_events(path):
            rows.append(
                {
                    "job": f"{event['job'].get('namespace')}/{event['job'].get('name')}",
                    "job_name": event["job"].get("name"),
                    "run_id": event["run"].get("runId"),
                    "state": event.get("eventType") or "OTHER",
                    "event_time": str(event.get("eventTime") or ""),
                    "inputs": [dataset_label(settings, d) for d in event.get("inputs") or []],
                    "outputs": [dataset_label(settings, d) for d in event.get("outputs") or []],
                    "source": path.name,
                }
            )
    frame = pd.DataFrame(
        rows, columns=["job", "job_name", "run_id", "state", "event_time", "inputs", "outputs", "source"]
    )
    if not frame.empty:
        frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True, format="ISO8601")
    return frame


def lineage_graph(settings: Settings) -> pd.DataFrame:
    """Edges of the lineage graph: one row per (job, input, output) with the job's last state and time.

    A job's datasets are the union over its events (Spark names some only at COMPLETE); a job without inputs
    has rows with ``input`` None, one without outputs rows with ``output`` None.

    Returns:
        Columns ``job, input, output, state, event_time, run_id, source`` (``job`` is the job name,
        ``state`` the last terminal state, else the last state seen).
    """
    events = lineage_events(settings)
    if events.empty:
        return pd.DataFrame(columns=EDGE_COLUMNS)
    edges = []
    for job_name, group in events.sort_values("event_time").groupby("job_name", sort=True):
        terminal = group[group["state"].isin(TERMINAL)]
        last = terminal.iloc[-1] if not terminal.empty else group.iloc[-1]
        inputs = sorted({d for ds in group["inputs"] for d in ds}) or [None]
        outputs = sorted({d for ds in group["outputs"] for d in ds}) or [None]
        for source in inputs:
            for target in outputs:
                if source is None and target is None:
                    continue
                edges.append(
                    {
                        "job": job_name,
                        "input": source,
                        "output": target,
                        "state": last["state"],
                        "event_time": last["event_time"],
                        "run_id": last["run_id"],
                        "source": last["source"],
                    }
                )
    return pd.DataFrame(edges, columns=EDGE_COLUMNS)


def lineage_digraph(settings: Settings, edges: pd.DataFrame | None = None) -> Any:
    """A ``networkx.DiGraph``: nodes carry ``kind`` (job|dataset), jobs also ``state`` and ``event_time``.

    Edges go input dataset -> job -> output dataset.
    """
    import networkx as nx

    edges = lineage_graph(settings) if edges is None else edges
    graph = nx.DiGraph()
    for row in edges.itertuples(index=False):
        job = f"job:{row.job}"
        graph.add_node(job, kind="job", label=row.job, state=row.state, event_time=row.event_time)
        if row.input is not None:
            graph.add_node(row.input, kind="dataset", label=row.input)
            graph.add_edge(row.input, job)
        if row.output is not None:
            graph.add_node(row.output, kind="dataset", label=row.output)
            graph.add_edge(job, row.output)
    return graph
