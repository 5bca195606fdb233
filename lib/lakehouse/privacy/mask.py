"""Masking for everything the lake *shows*: profiles, dashboards, validation results and Data Docs.

Tables protect PII by tokenizing it (:mod:`lakehouse.privacy.tokenize`); reports about tables must not undo
that by quoting values. Two rules, used by every report:

- a column the governance catalog classifies as PII never shows a value, only :data:`PII_MARKER`;
- any other text is scrubbed of e-mail and IPv4 addresses (:func:`scrub_text`), because raw payload columns
  (bronze ``value``, quarantine ``record``) can carry PII inside JSON.

A validation result is the sneakiest report: when a rule fails, GX lists the unexpected values, so a silver
rule that catches a clear e-mail would copy that e-mail into the audit table and the Data Docs.
:func:`mask_validation_result` masks those lists.

Example:
    >>> entry = {"expectation_config": {"kwargs": {"column": "email"}},
    ...          "result": {"partial_unexpected_list": ["ann@example.com"], "unexpected_count": 1}}
    >>> mask_validation_result({"results": [entry]}, ["email"])["results"][0]["result"]
    {'partial_unexpected_list': ['<pii masked>'], 'unexpected_count': 1}
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Final

from lakehouse.config import Settings
from lakehouse.governance.catalog import Catalog, catalog_root, load_catalog, load_catalog_dir

log = logging.getLogger(__name__)

PII_MARKER: Final = "<pii masked>"
EMAIL_PATTERN: Final = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
IPV4_PATTERN: Final = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")

# Used only when the project has no governance catalog folder (a bare library install).
FALLBACK_PII: Final[Mapping[str, tuple[str, ...]]] = {
    "bronze.retail_customers": ("name", "email"),
    "silver.retail_customers": ("name", "email"),
    "silver.dim_customer": ("name", "email"),
    "bronze.clickstream": ("client_ip",),
    "silver.events": ("client_ip",),
}

# The parts of a GX result that quote the batch's values (the counts and percentages around them do not).
_VALUE_KEYS: Final = (
    "partial_unexpected_list",
    "unexpected_list",
    "partial_unexpected_counts",
    "partial_unexpected_index_list",
    "unexpected_index_list",
    "observed_value",
    "details",
)


def scrub_text(value: Any) -> Any:
    """Replace e-mail addresses and IPv4 addresses inside a string by placeholders; other values pass.

    Example:
        >>> scrub_text('{"email": "ann@example.com", "ip": "10.1.2.3"}')
        '{"email": "<email>", "ip": "<ipv4>"}'
    """
    if not isinstance(value, str):
        return value
    return IPV4_PATTERN.sub("<ipv4>", EMAIL_PATTERN.sub("<email>", value))


def pii_columns(settings: Settings, catalog: Catalog | None = None) -> Mapping[str, tuple[str, ...]]:
    """The PII columns of every table: the catalog's contracts, or :data:`FALLBACK_PII` without a catalog.

    Raises:
        ConfigError: the catalog exists but a contract is invalid.
    """
    if catalog is None:
        if not catalog_root(settings).is_dir():
            log.warning("no governance catalog under %s: using the built-in PII column list", settings.root)
            return FALLBACK_PII
        catalog = load_catalog(settings)
    return pii_columns_of(catalog)


@functools.lru_cache(maxsize=8)
def _cached_pii(root: str, stamp: tuple[tuple[str, float], ...]) -> Mapping[str, tuple[str, ...]]:
    del stamp  # part of the cache key only: an edited contract is read again
    return pii_columns_of(load_catalog_dir(Path(root)))


def pii_columns_of(catalog: Catalog) -> Mapping[str, tuple[str, ...]]:
    """The PII columns per table of a loaded catalog (tagged with a PII kind or classified ``pii``)."""
    return {
        name: tuple(c.name for c in contract.columns if c.pii is not None or c.classification == "pii")
        for name, contract in catalog.tables.items()
    }


def table_pii(settings: Settings, table: str) -> tuple[str, ...]:
    """The PII columns of one table, for masking on a hot path (validation of every micro-batch).

    The catalog is read once and again only when a contract file changes.

    Raises:
        ConfigError: a contract is invalid.
    """
    root = catalog_root(settings)
    if not root.is_dir():
        return FALLBACK_PII.get(table, ())
    stamp = tuple((str(p), p.stat().st_mtime) for p in sorted(root.glob("*/*.yaml")))
    return _cached_pii(str(root), stamp).get(table, ())


def _mask_all(value: Any) -> Any:
    """Every scalar inside ``value`` replaced by the marker (None stays None: missing is no secret)."""
    if isinstance(value, dict):
        return {key: _mask_all(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_all(item) for item in value]
    return None if value is None else PII_MARKER


def _scrub_all(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _scrub_all(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_all(item) for item in value]
    return scrub_text(value)


def _mask_quoted(key: str, value: Any, pii: Collection[str], whole: bool) -> Any:
    """One quoted part of a result: fully masked when the rule reads a PII column, else scrubbed.

    Index lists and value counts are lists of small dicts; there only the PII columns' values (and a
    count entry's ``value``) are masked, so row ids and counts stay readable.
    """
    if not whole:
        return _scrub_all(value)
    if key in ("partial_unexpected_index_list", "unexpected_index_list") and isinstance(value, list):
        return [
            {k: (_mask_all(v) if k in pii else v) for k, v in item.items()}
            if isinstance(item, dict)
            else _mask_all(item)
            for item in value
        ]
    if key == "partial_unexpected_counts" and isinstance(value, list):
        return [
            {**item, "value": _mask_all(item.get("value"))} if isinstance(item, dict) else _mask_all(item)
            for item in value
        ]
    return _mask_all(value)


def mask_result_body(
    body: Mapping[str, Any], columns: Collection[str], pii: Collection[str]
) -> dict[str, Any]:
    """A copy of one GX expectation result's ``result`` dict fit to store or show.

    Args:
        body: the expectation's ``result`` (``partial_unexpected_list``, counts, ``observed_value`` ...).
        columns: the columns the expectation reads.
        pii: the table's PII columns (the catalog's).

    Returns:
        The same keys; when the expectation reads a PII column every quoted value is :data:`PII_MARKER`,
        otherwise quoted text is scrubbed of e-mails and IPs. Counts and percentages are unchanged.
    """
    whole = any(column in pii for column in columns)
    return {
        key: (_mask_quoted(key, value, pii, whole) if key in _VALUE_KEYS else value)
        for key, value in body.items()
    }


def _result_columns(entry: Mapping[str, Any]) -> list[str]:
    kwargs = (entry.get("expectation_config") or {}).get("kwargs") or {}
    names = [kwargs.get("column"), kwargs.get("column_A"), kwargs.get("column_B")]
    names += kwargs.get("column_list", [])
    return [str(name) for name in names if name]


def mask_validation_result(document: Mapping[str, Any], pii: Collection[str]) -> dict[str, Any]:
    """A copy of a GX validation result (its JSON dict) with every quoted batch value masked.

    See :func:`mask_result_body`; the expectation configurations (the suite's own values) are kept.
    """
    masked = dict(document)
    masked["results"] = [
        {**entry, "result": mask_result_body(entry.get("result") or {}, _result_columns(entry), pii)}
        for entry in document.get("results", [])
    ]
    return masked
