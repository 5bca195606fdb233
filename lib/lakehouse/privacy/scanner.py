"""The lake-wide PII scan: every Delta table of some layers sampled, each finding beside its contract's tag.

The detectors themselves are :mod:`lakehouse.privacy.detectors` (pure; the catalog's scaffolding uses them
too); this module adds the lake and the catalog.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from lakehouse.config import Settings
from lakehouse.privacy.detectors import PII_KINDS, Finding, detect_value, name_hint, scan_frame

__all__ = ["PII_KINDS", "Finding", "detect_value", "name_hint", "scan_frame", "scan_tables"]


def scan_tables(settings: Settings, layers: Iterable[str] = ("bronze",), *, rows: int = 2000) -> pd.DataFrame:
    """Scan every Delta table of the given layers (read with delta-rs) and list the findings.

    Returns:
        One row per finding: table, column, kind, hit_rate, proposed_classification, evidence, sampled,
        declared (the contract's ``pii`` kind for the column, if the catalog has one).
    """
    from pathlib import Path

    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from lakehouse.errors import LakehouseError
    from lakehouse.governance.catalog import load_catalog, sample_frame

    try:
        catalog = load_catalog(settings)
        contracts = catalog.tables
    except LakehouseError:
        contracts = {}
    records: list[dict[str, Any]] = []
    for layer in layers:
        root = Path(settings.table_path(layer, "_")).parent
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.iterdir() if (p / "_delta_log").is_dir()):
            table = f"{layer}.{path.name}"
            try:
                delta = DeltaTable(str(path))
            except TableNotFoundError:
                continue
            sample = sample_frame(delta, rows)
            contract = contracts.get(table)
            declared = {c.name: c.pii for c in contract.columns} if contract else {}
            for finding in scan_frame(sample, max_rows=rows):
                record = {"table": table, **finding.__dict__}
                record["declared"] = declared.get(finding.column.split(".", 1)[0]) if declared else None
                records.append(record)
    columns = [
        "table",
        "column",
        "kind",
        "hit_rate",
        "proposed_classification",
        "evidence",
        "sampled",
        "declared",
    ]
    return pd.DataFrame.from_records(records, columns=columns)
