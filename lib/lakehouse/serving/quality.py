"""Readers for the quality dashboard: validation results, quarantines, freshness, lineage and the catalog.

Like :mod:`lakehouse.serving.gold`, nothing here starts a JVM: Delta tables are read with delta-rs into
pandas, the lineage comes from the OpenLineage JSON Lines files (:mod:`lakehouse.lineage.graph`), and the
catalog from the YAML contracts (:mod:`lakehouse.governance.catalog`). Every reader returns an empty frame
with the documented columns when its source does not exist yet, so a page can say "nothing yet" instead of
failing. No reader ever returns clear PII: quarantine samples are tokenized per the catalog and scrubbed of
anything shaped like an e-mail or IP address.

Example:
    >>> results = load_validation_results(settings)  # doctest: +SKIP
    >>> failing_rules(results, "silver.events")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Final

import networkx as nx
import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse import arrow_lake
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.governance.catalog import Catalog, catalog_root, freshness_report, load_catalog
from lakehouse.lineage.emitter import events_file
from lakehouse.lineage.graph import EDGE_COLUMNS, lineage_digraph, lineage_graph
from lakehouse.privacy.mask import PII_MARKER, pii_columns, scrub_text
from lakehouse.privacy.tokenize import token

logger = logging.getLogger(__name__)

VALIDATION_COLUMNS: Final = (
    "run_id",
    "batch_id",
    "table",
    "suite",
    "expectation",
    "rule",
    "column",
    "action",
    "success",
    "element_count",
    "unexpected_count",
    "unexpected_percent",
    "engine",
    "validated_at",
    "details",
)
RUN_COLUMNS: Final = ("table", "run_id", "validated_at", "expectations", "failed", "success_rate")
FAILING_COLUMNS: Final = (
    "table",
    "run_id",
    "rule",
    "expectation",
    "column",
    "action",
    "failed_batches",
    "unexpected_count",
    "unexpected_percent",
)
QUARANTINE_COLUMNS: Final = ("table", "reason", "rows")
FRESHNESS_COLUMNS: Final = ("table", "last_commit", "age_seconds", "sla_seconds", "ok", "optional")
CATALOG_COLUMNS: Final = (
    "table",
    "owner",
    "table_classification",
    "freshness_sla",
    "column",
    "type",
    "classification",
    "pii",
    "treatment",
)
_QUARANTINE_LAYERS: Final = ("bronze", "silver", "gold")


def _read_delta(path: str) -> pd.DataFrame | None:
    """The whole table at ``path`` as pandas, or None when there is no table there yet."""
    if not DeltaTable.is_deltatable(path):
        return None
    try:
        arrow = arrow_lake.read(DeltaTable(path))
    except TableNotFoundError:
        return None
    except DeltaError as exc:
        raise DataError(f"Delta table {path} cannot be read by delta-rs: {exc}") from exc
    frame: pd.DataFrame = _displayable(arrow).to_pandas(date_as_object=False)
    return frame


def _displayable(table: pa.Table) -> pa.Table:
    """Lists become ``"a, b"`` strings and decimals floats, so frames show and compare plainly."""
    columns = []
    for column in table.columns:
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = pa.array(
                [None if value is None else ", ".join(map(str, value)) for value in column.to_pylist()],
                type=pa.string(),
            )
        elif pa.types.is_decimal(column.type):
            column = column.cast(pa.float64())
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def load_validation_results(settings: Settings) -> pd.DataFrame:
    """Every row of ``audit.validation_results`` (see the shared schema), oldest first; empty if none yet.

    Raises:
        DataError: the table exists but cannot be read or lacks a column.
    """
    path = settings.table_path("audit", "validation_results")
    frame = _read_delta(path)
    if frame is None:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in VALIDATION_COLUMNS})
    missing = [name for name in VALIDATION_COLUMNS if name not in frame.columns]
    if missing:
        raise DataError(f"validation results at {path} lack columns {missing}: rerun the quality checks")
    frame["validated_at"] = pd.to_datetime(frame["validated_at"], utc=True)
    return frame.sort_values(["validated_at", "table", "batch_id"], kind="stable").reset_index(drop=True)


def validated_tables(results: pd.DataFrame) -> list[str]:
    """The tables that have validation results, sorted."""
    return sorted(str(name) for name in results["table"].dropna().unique())


def validation_runs(results: pd.DataFrame, table: str | None = None) -> pd.DataFrame:
    """Success rate per table per run: expectations evaluated, how many failed, success rate (0..1).

    Args:
        results: :func:`load_validation_results`.
        table: only this table (``None``: all).

    Returns:
        Columns ``table, run_id, validated_at`` (the run's last validation), ``expectations, failed,
        success_rate``, ordered by time.
    """
    if table is not None:
        results = results[results["table"] == table]
    if results.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in RUN_COLUMNS})
    success = results["success"].astype(bool)
    runs = (
        results.assign(failed=~success, passed=success)
        .groupby(["table", "run_id"], as_index=False)
        .agg(
            validated_at=("validated_at", "max"),
            expectations=("rule", "size"),
            failed=("failed", "sum"),
            success_rate=("passed", "mean"),
        )
    )
    runs["failed"] = runs["failed"].astype(int)
    runs["expectations"] = runs["expectations"].astype(int)
    return runs.sort_values(["validated_at", "table"], kind="stable").reset_index(drop=True)[
        list(RUN_COLUMNS)
    ]


def latest_run(results: pd.DataFrame, table: str) -> str | None:
    """The run id of the latest validation of ``table`` (None if it was never validated)."""
    runs = validation_runs(results, table)
    return None if runs.empty else str(runs.iloc[-1]["run_id"])


def failing_rules(results: pd.DataFrame, table: str, run_id: str | None = None) -> pd.DataFrame:
    """The rules ``table`` broke in one run (default: its latest), summed over the run's batches.

    Returns:
        Columns ``table, run_id, rule, expectation, column, action, failed_batches, unexpected_count,
        unexpected_percent`` (the worst batch), most unexpected rows first; empty when every rule passed.
    """
    run = run_id if run_id is not None else latest_run(results, table)
    failed = results[
        (results["table"] == table) & (results["run_id"] == run) & ~results["success"].astype(bool)
    ]
    if failed.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in FAILING_COLUMNS})
    rules = (
        failed.fillna({"column": ""})
        .groupby(["table", "run_id", "rule", "expectation", "column", "action"], as_index=False)
        .agg(
            failed_batches=("batch_id", "nunique"),
            unexpected_count=("unexpected_count", "sum"),
            unexpected_percent=("unexpected_percent", "max"),
        )
    )
    rules["unexpected_count"] = rules["unexpected_count"].astype("int64")
    return rules.sort_values(["unexpected_count", "rule"], ascending=[False, True]).reset_index(drop=True)[
        list(FAILING_COLUMNS)
    ]


def quarantine_tables(settings: Settings) -> list[str]:
    """The ``<layer>.<name>_quarantine`` tables that exist in the lake, sorted."""
    found = []
    for layer in _QUARANTINE_LAYERS:
        folder = settings.lake / layer
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*_quarantine")):
            if DeltaTable.is_deltatable(str(path)):
                found.append(f"{layer}.{path.name}")
    return found


def _split(table: str) -> tuple[str, str]:
    layer, _, name = table.partition(".")
    if not name:
        raise ConfigError(f"table {table!r} is not '<layer>.<name>', e.g. silver.events_quarantine")
    return layer, name


def quarantine_counts(settings: Settings) -> pd.DataFrame:
    """Rows per quarantine table and reason (``reason`` null shows as ``"(none)"``), largest first."""
    counts = []
    for table in quarantine_tables(settings):
        frame = _read_delta(settings.table_path(*_split(table)))
        if frame is None or frame.empty:
            continue
        reasons = frame["reason"] if "reason" in frame.columns else pd.Series(None, index=frame.index)
        per_reason = reasons.fillna("(none)").astype(str).value_counts()
        counts += [
            {"table": table, "reason": reason, "rows": int(rows)} for reason, rows in per_reason.items()
        ]
    frame = pd.DataFrame(counts, columns=list(QUARANTINE_COLUMNS))
    return frame.sort_values(["rows", "table", "reason"], ascending=[False, True, True]).reset_index(
        drop=True
    )


def load_catalog_if_any(settings: Settings) -> Catalog | None:
    """The governance catalog, or None when the project has no ``catalog/`` folder.

    Raises:
        ConfigError: a contract is invalid.
    """
    if not catalog_root(settings).is_dir():
        return None
    return load_catalog(settings)


def mask_frame(frame: pd.DataFrame, pii: Sequence[str], key: str) -> pd.DataFrame:
    """A copy fit to show: ``pii`` columns tokenized with ``key`` (or masked when there is no key), every
    other text column scrubbed of e-mail and IPv4 addresses.

    Example:
        >>> shown = mask_frame(pd.DataFrame({"email": ["a@b.io"], "note": ["from 10.0.0.1"]}), ["email"], "k")
        >>> shown.iloc[0, 1]
        'from <ipv4>'
    """
    shown = frame.copy()
    for column in shown.columns:
        values = shown[column]
        if column in pii:
            if key:
                shown[column] = [token(value, key) for value in values]
            else:
                shown[column] = values.where(values.isna(), PII_MARKER)
        elif values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            shown[column] = values.map(scrub_text)
    return shown


def quarantine_samples(
    settings: Settings, table: str, limit: int = 20, pii: Sequence[str] | None = None
) -> pd.DataFrame:
    """The most recently quarantined rows of ``table``, masked (:func:`mask_frame`).

    Args:
        settings: the environment (the tokenization key comes from ``settings.privacy``).
        table: ``<layer>.<name>_quarantine``.
        limit: at most this many rows.
        pii: the table's PII columns; ``None`` asks the catalog.

    Returns:
        The rows, newest ``quarantined_at`` first when the table has it; empty if the table does not exist.
    """
    frame = _read_delta(settings.table_path(*_split(table)))
    if frame is None:
        return pd.DataFrame()
    if "quarantined_at" in frame.columns:
        frame = frame.sort_values("quarantined_at", ascending=False, kind="stable")
    columns = tuple(pii) if pii is not None else pii_columns(settings).get(table, ())
    return mask_frame(frame.head(limit).reset_index(drop=True), columns, settings.privacy.tokenization_key)


def _lake_tables(settings: Settings) -> list[str]:
    found = []
    for layer in ("bronze", "silver", "gold", "audit"):
        folder = settings.lake / layer
        if folder.is_dir():
            found += [
                f"{layer}.{p.name}" for p in sorted(folder.iterdir()) if DeltaTable.is_deltatable(str(p))
            ]
    return found


def _last_commit(path: str) -> pd.Timestamp | None:
    try:
        history = DeltaTable(path).history(1)
        return pd.Timestamp(history[0]["timestamp"], unit="ms", tz="UTC")
    except (TableNotFoundError, IndexError, KeyError):
        return None


def freshness(settings: Settings, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per table: last Delta commit, its age, the contract's SLA and whether the table is within it.

    With a catalog this is :func:`lakehouse.governance.catalog.freshness_report` (tables that declare an SLA);
    without one, every lake table with its last commit and no SLA (``ok`` missing).

    Returns:
        Columns ``table, last_commit, age_seconds, sla_seconds, ok`` and ``optional`` (the contract says the
        table is built only in some modes, e.g. continuous).
    """
    moment = now if now is not None else pd.Timestamp.now(tz="UTC")
    catalog = load_catalog_if_any(settings)
    if catalog is not None:
        report = freshness_report(settings, catalog=catalog, now=moment.to_pydatetime())
        optional = {name for name, contract in catalog.tables.items() if contract.optional}
        return report.assign(optional=report["table"].isin(optional))
    rows = []
    for table in _lake_tables(settings):
        last = _last_commit(settings.table_path(*_split(table)))
        age = (moment - last).total_seconds() if last is not None else float("nan")
        rows.append(
            {
                "table": table,
                "last_commit": last,
                "age_seconds": age,
                "sla_seconds": float("nan"),
                "ok": None,
                "optional": False,
            }
        )
    frame = pd.DataFrame(rows, columns=list(FRESHNESS_COLUMNS))
    frame["last_commit"] = pd.to_datetime(frame["last_commit"], utc=True)
    return frame


def _duration(seconds: float) -> str:
    if pd.isna(seconds):
        return ""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def freshness_status(report: pd.DataFrame) -> pd.DataFrame:
    """:func:`freshness` for reading: ``table, last_commit, age, sla, status`` with ``status`` one of
    ``within SLA``, ``LATE``, ``missing`` (no table yet), ``not built (optional)`` (an optional table that
    does not exist) or ``no SLA``; late and missing tables first.
    """
    if report.empty:
        return pd.DataFrame(columns=["table", "last_commit", "age", "sla", "status"])

    def status(row: Any) -> str:
        if pd.isna(row.last_commit):
            return "not built (optional)" if bool(getattr(row, "optional", False)) else "missing"
        if pd.isna(row.sla_seconds):
            return "no SLA"
        return "within SLA" if bool(row.ok) else "LATE"

    shown = pd.DataFrame(
        {
            "table": report["table"],
            "last_commit": report["last_commit"].dt.strftime("%Y-%m-%d %H:%M:%S UTC").fillna(""),
            "age": report["age_seconds"].map(_duration),
            "sla": report["sla_seconds"].map(_duration),
            "status": [status(row) for row in report.itertuples(index=False)],
        }
    )
    order = shown["status"].map(
        {"LATE": 0, "missing": 1, "within SLA": 2, "no SLA": 3, "not built (optional)": 4}
    )
    return (
        shown.assign(_order=order)
        .sort_values(["_order", "table"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def lineage_edges(settings: Settings, *, tasks_only: bool = True) -> pd.DataFrame:
    """The lineage graph's edges (job, input, output, state, event_time, run_id, source) from the event files.

    ``tasks_only`` keeps the notebook tasks' events and leaves out the Spark listener's.

    Returns:
        An empty frame with those columns when no events were written yet.
    """
    if not (settings.reports / "lineage").is_dir():
        return pd.DataFrame(columns=EDGE_COLUMNS)
    edges = lineage_graph(settings)
    if tasks_only:
        # The Spark listener's events (one job per write, column lineage) are too fine-grained to draw;
        # the picture is the DAG's tasks between sources and tables.
        edges = edges[edges["source"] == events_file(settings).name].reset_index(drop=True)
    return edges


def lineage_network(settings: Settings, edges: pd.DataFrame | None = None) -> nx.DiGraph:
    """The lineage as a directed graph, input dataset → job → output dataset, each node laid out.

    Nodes carry ``kind`` (job|dataset), ``label`` and ``pos`` = (x, y): x is the node's generation in the
    graph (sources left), y its place within the generation, so the layout is stable from run to run.
    """
    edges = lineage_edges(settings) if edges is None else edges
    graph: nx.DiGraph = lineage_digraph(settings, edges)
    # A job that reads what it writes (a MERGE, a dedupe against the table) makes a cycle: lay out the
    # graph of strongly connected components, whose generations always exist.
    condensed = nx.condensation(graph)
    generation_of = {
        node: x
        for x, members in enumerate(nx.topological_generations(condensed))
        for component in members
        for node in condensed.nodes[component]["members"]
    }
    columns: dict[int, list[Any]] = {}
    for node, x in generation_of.items():
        columns.setdefault(x, []).append(node)
    for x, generation in columns.items():
        for y, node in enumerate(sorted(generation, key=str)):
            graph.nodes[node]["pos"] = (float(x), -float(y) + (len(generation) - 1) / 2)
    return graph


def lineage_layout(graph: nx.DiGraph) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Plain frames of a :func:`lineage_network` for drawing: nodes (``x, y, node, kind, label``) and links
    (``source, target``)."""
    nodes = pd.DataFrame(
        [
            {
                "x": data["pos"][0],
                "y": data["pos"][1],
                "node": str(node),
                "kind": str(data.get("kind", "dataset")),
                "label": str(data.get("label", node)),
            }
            for node, data in graph.nodes(data=True)
        ],
        columns=["x", "y", "node", "kind", "label"],
    )
    links = pd.DataFrame([(str(a), str(b)) for a, b in graph.edges], columns=["source", "target"])
    return nodes, links


def catalog_frame(settings: Settings) -> pd.DataFrame:
    """One row per catalogued column: table, owner, table classification, SLA, column, type, classification,
    PII kind and treatment; empty when there is no catalog.

    Raises:
        ConfigError: a contract is invalid.
    """
    catalog = load_catalog_if_any(settings)
    rows: list[dict[str, Any]] = []
    if catalog is not None:
        for name, contract in sorted(catalog.tables.items()):
            for column in contract.columns:
                rows.append(
                    {
                        "table": name,
                        "owner": contract.owner,
                        "table_classification": contract.classification,
                        "freshness_sla": contract.freshness_sla or "",
                        "column": column.name,
                        "type": column.type,
                        "classification": column.classification,
                        "pii": column.pii or "",
                        "treatment": column.treatment or "",
                    }
                )
    return pd.DataFrame(rows, columns=list(CATALOG_COLUMNS))


def catalog_tables(catalog: pd.DataFrame) -> pd.DataFrame:
    """One row per table of :func:`catalog_frame`: owner, classification, SLA, column count, PII columns."""
    if catalog.empty:
        return pd.DataFrame(
            columns=["table", "owner", "classification", "freshness_sla", "columns", "pii_columns"]
        )
    return (
        catalog.assign(pii_name=catalog["column"].where(catalog["pii"] != "", None))
        .groupby("table", as_index=False)
        .agg(
            owner=("owner", "first"),
            classification=("table_classification", "first"),
            freshness_sla=("freshness_sla", "first"),
            columns=("column", "size"),
            pii_columns=("pii_name", lambda names: ", ".join(n for n in names if n)),
        )
    )


def path_of(settings: Settings, table: str) -> str:
    """The storage path of ``<layer>.<name>`` (for page footers)."""
    return os.fspath(settings.table_path(*_split(table)))
