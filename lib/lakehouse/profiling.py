"""Data profiles of the lake's tables: one ydata-profiling HTML report per table, PII kept out.

Each report profiles a reproducible sample (at most ``sample_rows`` rows, drawn with a fixed seed by delta-rs,
no Spark) in ydata-profiling's minimal mode, without sample rows or a duplicates table, so a report stays
well under a few megabytes whatever the table's size. Columns whose catalog contract classifies them as PII
are replaced by a constant marker before profiling (the report keeps their missing and distinct counts, never
a value); every other text column is scrubbed of anything shaped like an e-mail address or an IPv4 address,
because raw payload columns (bronze ``value``, quarantine ``value``/``record``) can carry PII inside JSON.

Reports land in ``settings.reports / "profiles" / "<layer>.<name>.html"`` with an ``index.html`` listing them.

Example:
    >>> results = profile_tables(load_settings("dev1"), layers=("silver",))  # doctest: +SKIP
    >>> results[0].path.name  # doctest: +SKIP
    'silver.events.html'
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse import arrow_lake
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.governance.catalog import catalog_root, load_catalog
from lakehouse.privacy.mask import PII_MARKER, pii_columns, scrub_text

logger = logging.getLogger(__name__)

# The layers whose tables get a profile (bronze and silver by default: gold is aggregated, no raw values).
PROFILED_LAYERS: Final = ("bronze", "silver", "gold")
# Profiled with a layer: its bookkeeping in the audit layer. The silver engine's reconciliation of every
# declared table is one table, by table name (input rows = applied + quarantined + duplicates + dropped).
LAYER_AUDIT_TABLES: Final[Mapping[str, tuple[str, ...]]] = {"silver": ("audit.silver_batches",)}
DEFAULT_SAMPLE_ROWS: Final = 5000
DEFAULT_SEED: Final = 20240601


@dataclass(frozen=True)
class TableSample:
    """A reproducible sample of one Delta table and what it was drawn from."""

    table: str
    frame: pd.DataFrame
    total_rows: int
    version: int


@dataclass(frozen=True)
class ProfileResult:
    """One written profile report."""

    table: str
    path: Path
    total_rows: int
    sampled_rows: int
    version: int
    pii_columns: tuple[str, ...] = field(default_factory=tuple)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def split_table(table: str) -> tuple[str, str]:
    """Split ``"silver.events"`` into ``("silver", "events")``.

    Raises:
        ConfigError: the name is not ``<layer>.<name>`` with a known layer.
    """
    layer, _, name = table.partition(".")
    if not name or layer not in (*PROFILED_LAYERS, "audit"):
        raise ConfigError(f"table {table!r} is not '<layer>.<name>' (layer bronze, silver, gold or audit)")
    return layer, name


def _arrow_for_pandas(table: pa.Table) -> pa.Table:
    """Decimals become floats, nested values strings and bytes text (what is not UTF-8 as ``\\xNN``):
    ydata-profiling types plain columns only."""
    columns = []
    for column in table.columns:
        kind = column.type
        if pa.types.is_decimal(kind):
            column = column.cast(pa.float64())
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            column = pa.array(
                [
                    None if value is None else value.decode("utf-8", "backslashreplace")
                    for value in column.to_pylist()
                ],
                type=pa.string(),
            )
        elif (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_struct(kind)
            or pa.types.is_map(kind)
        ):
            column = pa.array(
                [None if value is None else str(value) for value in column.to_pylist()], type=pa.string()
            )
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def sample_table(
    path: str | os.PathLike[str], rows: int = DEFAULT_SAMPLE_ROWS, seed: int = DEFAULT_SEED, table: str = ""
) -> TableSample:
    """Read at most ``rows`` rows of the Delta table at ``path``, the same rows for the same seed and version.

    Only the sampled rows are materialised (delta-rs dataset ``take``), so a large table is not loaded whole.

    Raises:
        DataError: there is no readable Delta table at ``path``.
        ConfigError: ``rows`` is not positive.
    """
    if rows < 1:
        raise ConfigError(f"sample_rows must be at least 1, got {rows}")
    try:
        delta = DeltaTable(os.fspath(path))
        dataset = arrow_lake.dataset(delta)
        total = int(dataset.count_rows())
        if total <= rows:
            arrow = dataset.to_table()
        else:
            picked = np.sort(np.random.default_rng(seed).choice(total, size=rows, replace=False))
            arrow = dataset.take(pa.array(picked))
    except TableNotFoundError as exc:
        raise DataError(f"no Delta table at {os.fspath(path)}: build the DAG first (make demo)") from exc
    except DeltaError as exc:
        raise DataError(f"Delta table {os.fspath(path)} cannot be read by delta-rs: {exc}") from exc
    frame = _arrow_for_pandas(arrow).to_pandas(date_as_object=False)
    return TableSample(
        table=table or os.fspath(path), frame=frame, total_rows=total, version=int(delta.version())
    )


def mask_for_profile(frame: pd.DataFrame, pii_columns: Iterable[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """A copy of ``frame`` safe to profile, and a description per PII column for the report.

    PII columns become :data:`PII_MARKER` where they hold a value (nulls stay null, so missing counts stay
    true); their distinct count in the sample goes into the description instead of a value list. Every other
    text column is passed through :func:`scrub_text`. PII columns missing from the frame are ignored.
    """
    masked = frame.copy()
    descriptions: dict[str, str] = {}
    pii = [column for column in pii_columns if column in masked.columns]
    for column in pii:
        values = masked[column]
        descriptions[column] = (
            f"PII (catalog classification): values masked before profiling; "
            f"{int(values.nunique(dropna=True))} distinct non-null values in the sample."
        )
        masked[column] = values.where(values.isna(), PII_MARKER).astype(object)
    for column in masked.columns:
        if column in pii:
            continue
        if masked[column].dtype == object or pd.api.types.is_string_dtype(masked[column].dtype):
            masked[column] = masked[column].map(scrub_text)
    return masked, descriptions


def _empty_report(frame: pd.DataFrame, output: Path, title: str) -> Path:
    columns = "".join(
        f"<tr><td>{html.escape(str(name))}</td><td>{html.escape(str(kind))}</td></tr>"
        for name, kind in frame.dtypes.items()
    )
    output.write_text(
        f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>
<body><h1>{html.escape(title)}</h1><p class="empty-table">The table has no rows: nothing to profile.</p>
<table><thead><tr><th>Column</th><th>Type</th></tr></thead><tbody>{columns}</tbody></table></body></html>
""",
        encoding="utf-8",
    )
    logger.info("%s has no rows: wrote a schema-only page to %s", title, output)
    return output


def profile_frame(frame: pd.DataFrame, output: Path, title: str, pii: Sequence[str] = ()) -> Path:
    """Write a minimal, bounded ydata-profiling HTML report of ``frame`` to ``output`` (PII masked first).

    An empty frame gets a short page naming its columns instead (ydata-profiling cannot profile no rows).

    Returns:
        ``output``.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    if frame.empty:  # ydata-profiling refuses an empty frame; an empty table still gets its page
        return _empty_report(frame, output, title)
    masked, descriptions = mask_for_profile(frame, pii)
    # ydata-profiling 4.18 draws one progress bar per column even with progress_bar=False: keep them out of
    # the notebook's output (logging handlers hold their own stream and still work).
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # its import warns about deprecation and a missing IProgress
        from ydata_profiling import ProfileReport  # heavy import: only when a report is written

        report = ProfileReport(
            masked,
            title=title,
            minimal=True,
            progress_bar=False,
            samples={"head": 0, "tail": 0, "random": 0},
            duplicates={"head": 0},
            variables={"descriptions": descriptions},
            show_variable_description=True,
            # word and character breakdowns of free text dominate a report's size and repeat raw values
            vars={
                "cat": {"words": False, "characters": False},
                "text": {"words": False, "characters": False},
            },
            plot={"image_format": "png", "dpi": 72},
        )
        report.to_file(output, silent=True)
    logger.info("profile of %s written to %s (%d bytes)", title, output, output.stat().st_size)
    return output


def profile_table(
    settings: Settings,
    table: str,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    pii: Sequence[str] | None = None,
    seed: int = DEFAULT_SEED,
) -> ProfileResult:
    """Profile one table (``"silver.events"``) into ``settings.reports / "profiles" / "<table>.html"``.

    Args:
        settings: the environment.
        table: ``<layer>.<name>``.
        sample_rows: at most this many rows are profiled.
        pii: the table's PII columns; ``None`` asks the catalog (:func:`pii_columns`).
        seed: the sampling seed (same seed and table version, same rows).

    Raises:
        DataError: the table does not exist or cannot be read.
    """
    layer, name = split_table(table)
    columns = tuple(pii) if pii is not None else tuple(pii_columns(settings).get(table, ()))
    sample = sample_table(settings.table_path(layer, name), sample_rows, seed, table=table)
    output = settings.reports / "profiles" / f"{table}.html"
    subtitle = f"{len(sample.frame):,} of {sample.total_rows:,} rows, Delta version {sample.version}"
    profile_frame(sample.frame, output, f"{table} ({subtitle})", columns)
    return ProfileResult(
        table=table,
        path=output,
        total_rows=sample.total_rows,
        sampled_rows=len(sample.frame),
        version=sample.version,
        pii_columns=columns,
    )


def write_index(
    directory: Path,
    results: Sequence[ProfileResult],
    missing: Sequence[str] = (),
    uncatalogued: Sequence[str] = (),
) -> Path:
    """Write ``directory / "index.html"`` linking every report (and naming tables that had none, and why)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(r.path.name)}">{html.escape(r.table)}</a></td>'
        f"<td>{r.sampled_rows:,}</td><td>{r.total_rows:,}</td><td>{r.version}</td>"
        f"<td>{html.escape(', '.join(r.pii_columns)) or '&mdash;'}</td></tr>"
        for r in results
    )
    absent = "<p>No table yet (not profiled): " + html.escape(", ".join(missing)) + "</p>" if missing else ""
    if uncatalogued:
        absent += (
            "<p>In the lake without a catalog contract, so with PII unknown (not profiled: add a contract, "
            "<code>lakehouse catalog scaffold &lt;table&gt;</code>): "
            + html.escape(", ".join(uncatalogued))
            + "</p>"
        )
    empty = "" if results else "<p>No table has been profiled yet: build the DAG first (make demo).</p>"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Lakehouse table profiles</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #d8dee4;padding:4px 10px;text-align:left}}</style></head>
<body><h1>Lakehouse table profiles</h1><p>Generated {generated}. PII columns are masked before profiling.</p>
{empty}<table><thead><tr><th>Table</th><th>Rows profiled</th><th>Rows in table</th><th>Delta version</th>
<th>PII columns (masked)</th></tr></thead><tbody>
{rows}
</tbody></table>{absent}</body></html>
"""
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def layer_tables(settings: Settings, layers: Sequence[str]) -> list[str]:
    """The tables :func:`profile_tables` profiles for ``layers`` (``<layer>.<name>``), in order.

    Per layer, every table the catalog declares (a declared table's quarantine too), by name; then the
    layer's bookkeeping (:data:`LAYER_AUDIT_TABLES`). A user's table is profiled as soon as it has a contract:
    no list to edit. A table in the lake without one is not (:func:`uncatalogued_tables`): nothing says which
    of its columns are PII, so a report could show them in clear.

    Raises:
        ConfigError: an unknown layer, or an invalid contract in the catalog.
    """
    unknown = [layer for layer in layers if layer not in PROFILED_LAYERS]
    if unknown:
        raise ConfigError(f"cannot profile layer {unknown[0]!r}: use {', '.join(PROFILED_LAYERS)}")
    declared = _catalogued(settings)
    return [
        *(table for layer in layers for table in sorted(t for t in declared if split_table(t)[0] == layer)),
        *(table for layer in layers for table in LAYER_AUDIT_TABLES.get(layer, ())),
    ]


def uncatalogued_tables(settings: Settings, layers: Sequence[str]) -> list[str]:
    """Delta tables the lake has in ``layers`` that no catalog contract declares (left out of profiling)."""
    declared = set(_catalogued(settings))
    landed = (
        f"{layer}.{log.parent.name}"
        for layer in layers
        for log in (settings.lake / layer).glob("*/_delta_log")
    )
    return sorted(table for table in landed if table not in declared)


def _catalogued(settings: Settings) -> list[str]:
    return list(load_catalog(settings).tables) if catalog_root(settings).is_dir() else []


def profile_tables(
    settings: Settings,
    layers: Sequence[str] = ("bronze", "silver"),
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    pii: Mapping[str, Sequence[str]] | None = None,
    tables: Sequence[str] | None = None,
    seed: int = DEFAULT_SEED,
) -> list[ProfileResult]:
    """Profile every existing table of ``layers`` (or the given ``tables``) and write the index page.

    Tables that do not exist yet are skipped (and named in the index), so a partial lake still gets reports;
    so are the lake's tables without a catalog contract, named in the index as such (their PII is unknown).

    Args:
        settings: the environment.
        layers: the layers whose :func:`layer_tables` are profiled (ignored when ``tables`` is given).
        sample_rows: at most this many rows per table.
        pii: PII columns per table; ``None`` asks the catalog.
        tables: explicit ``<layer>.<name>`` list.
        seed: sampling seed.

    Returns:
        One :class:`ProfileResult` per written report.

    Raises:
        ConfigError: an unknown layer or a malformed table name.
    """
    wanted = list(tables) if tables is not None else layer_tables(settings, layers)
    unprofiled = uncatalogued_tables(settings, layers) if tables is None else []
    known = pii if pii is not None else pii_columns(settings)
    results: list[ProfileResult] = []
    missing: list[str] = []
    for table in wanted:
        layer, name = split_table(table)
        if not DeltaTable.is_deltatable(settings.table_path(layer, name)):
            logger.info("no table %s yet: not profiled", table)
            missing.append(table)
            continue
        results.append(profile_table(settings, table, sample_rows, tuple(known.get(table, ())), seed))
    if unprofiled:
        logger.warning("not profiled, no catalog contract (PII unknown): %s", ", ".join(unprofiled))
    write_index(settings.reports / "profiles", results, missing, unprofiled)
    return results


def parse_layers(layers: str) -> tuple[str, ...]:
    """``"bronze, silver"`` → ``("bronze", "silver")`` (the notebook's string parameter)."""
    parsed = tuple(part.strip() for part in layers.split(",") if part.strip())
    if not parsed:
        raise ConfigError("layers is empty: give e.g. 'bronze,silver'")
    return parsed
