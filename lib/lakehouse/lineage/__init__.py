"""OpenLineage for every notebook task: run events with Delta and data-quality facets, and the lineage graph.

``track_run`` (notebooks) and ``lineage_run`` (CLI/library code) emit START, then COMPLETE or FAIL, through
the transport ``settings.lineage`` selects (file JSON Lines by default, Marquez-compatible HTTP, console or
none).
The OpenLineage Spark listener (configured in :mod:`lakehouse.spark`) adds column-level lineage in
``<reports>/lineage/spark.jsonl``; :func:`lineage_graph` reads both files back as edges.
"""

from lakehouse.lineage.datasets import DeltaTableDatasetFacet, dataset_names, identity_from_path
from lakehouse.lineage.emitter import LineageEmitter, events_file, lineage_dir, spark_events_file
from lakehouse.lineage.graph import lineage_digraph, lineage_events, lineage_graph
from lakehouse.lineage.tracker import LineageRun, lineage_run, track_run

__all__ = [
    "DeltaTableDatasetFacet",
    "LineageEmitter",
    "LineageRun",
    "dataset_names",
    "events_file",
    "identity_from_path",
    "lineage_digraph",
    "lineage_dir",
    "lineage_events",
    "lineage_graph",
    "lineage_run",
    "spark_events_file",
    "track_run",
]
