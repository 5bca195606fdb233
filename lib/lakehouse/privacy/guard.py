"""The run-level PII guard: a written silver or gold table may hold no PII its contract does not protect."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lakehouse.config import Settings
from lakehouse.governance.catalog import load_catalog, sample_frame
from lakehouse.privacy.tokenize import assert_no_untagged_pii

log = logging.getLogger(__name__)

GUARDED_LAYERS = ("silver", "gold")


def assert_tables_protected(settings: Settings, tables: Iterable[str], *, rows: int = 1000) -> list[str]:
    """Scan a sample of each silver/gold table in ``tables``; fail on PII its contract does not protect.

    Bronze and restricted tables (quarantine, which keeps payloads as they arrived) are skipped, as are tables
    not built yet. Reads with delta-rs (no Spark).

    Args:
        settings: the environment (table paths, catalog).
        tables: identities such as ``"silver.events"`` (e.g. a lineage run's outputs).
        rows: rows sampled per table.

    Returns:
        The tables that were scanned.

    Raises:
        PrivacyError: a column looks like PII but is not tagged, or is tagged tokenize and holds clear values.
        ConfigError: a guarded table has no contract.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    catalog = load_catalog(settings)
    scanned = []
    for table in tables:
        layer, _, name = table.partition(".")
        if layer not in GUARDED_LAYERS:
            continue
        contract = catalog.contract(table)
        if contract.restricted:
            continue
        try:
            delta = DeltaTable(settings.table_path(layer, name))
        except TableNotFoundError:
            log.info("PII guard: %s not built yet", table)
            continue
        assert_no_untagged_pii(sample_frame(delta, rows), contract)
        scanned.append(table)
    return scanned
