"""Delta tables read into Arrow outside Spark: delta-rs for the log, Arrow's own filesystem for the files.

delta-rs's ``to_pyarrow_dataset()`` reads the Parquet files through a filesystem written in Python
(``PyFileSystem(DeltaStorageHandler)``) with pre-buffering on, so Arrow's I/O threads call back into Python.
A scan cut short (``head``) leaves such reads in flight, and when a short-lived process then exits, one of
them takes the GIL of a finalizing interpreter: the process aborts with "terminate called without an active
exception" after its work is done (``lakehouse table scaffold`` in CI; a process sampling a table twice, 4 at
once on 2 cores: 6 aborts in 800 runs, 0 in 800 on the native filesystem). Arrow's native filesystem needs no
GIL, so a dataset built on it cannot do that.

Example:
    >>> from deltalake import DeltaTable
    >>> head(DeltaTable("/lake/bronze/events"), 5).num_rows  # doctest: +SKIP
    5
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow.dataset as ds
import pyarrow.fs as pa_fs

from lakehouse.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from deltalake import DeltaTable


def dataset(table: DeltaTable) -> ds.Dataset:
    """The table's current files as a pyarrow dataset on Arrow's filesystem for its URI (local, S3, ...)."""
    filesystem, root = pa_fs.FileSystem.from_uri(table.table_uri)
    return table.to_pyarrow_dataset(filesystem=pa_fs.SubTreeFileSystem(root, filesystem))


def head(table: DeltaTable, rows: int) -> pa.Table:
    """The first ``rows`` rows, read in order in this thread with nothing buffered ahead of what is kept."""
    return dataset(table).head(
        rows,
        batch_readahead=0,
        fragment_readahead=0,
        fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
        use_threads=False,
    )


def read(table: DeltaTable, columns: list[str] | None = None) -> pa.Table:
    """The whole table (or ``columns`` of it) as one Arrow table.

    Raises:
        DataError: a file the log names is gone (vacuumed or rewritten while it was read) or unreadable.
    """
    try:
        return dataset(table).to_table(columns=columns)
    except OSError as exc:
        raise DataError(f"Delta table {table.table_uri}: a data file could not be read ({exc})") from exc


def frame(table: DeltaTable, columns: list[str] | None = None) -> pd.DataFrame:
    """:func:`read` as pandas."""
    result: pd.DataFrame = read(table, columns).to_pandas()
    return result
