"""Delta tables read into Arrow outside Spark: the same rows as delta-rs, with no Python in Arrow's I/O path."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pa_fs
import pytest
from deltalake import DeltaTable, write_deltalake

from lakehouse import arrow_lake

pytestmark = pytest.mark.unit

AWKWARD = ["a b", "c:d/e", "x%y", "é", "plain"]


@pytest.fixture
def table(tmp_path: Path) -> DeltaTable:
    """A partitioned table in a folder with a space, partition values that need escaping, several files."""
    path = tmp_path / "lake dir" / "events"
    for batch in range(3):
        rows = [(key, batch * 100 + i) for i, key in enumerate(AWKWARD)]
        write_deltalake(
            path,
            pa.table({"key": [k for k, _ in rows], "n": [n for _, n in rows]}),
            mode="append",
            partition_by=["key"],
        )
    return DeltaTable(path)


def test_the_dataset_reads_every_row_delta_rs_reads_on_arrows_own_filesystem(table: DeltaTable) -> None:
    dataset = arrow_lake.dataset(table)
    ours = dataset.to_table().sort_by("n")
    theirs = table.to_pyarrow_dataset().to_table().sort_by("n")
    assert ours.equals(theirs)
    assert ours.num_rows == 15
    assert sorted(set(ours.column("key").to_pylist())) == sorted(AWKWARD)
    # the point of the module: a native filesystem, so no read in flight ever needs the GIL at exit
    assert isinstance(dataset.filesystem, pa_fs.SubTreeFileSystem)
    assert not isinstance(dataset.filesystem.base_fs, pa_fs.PyFileSystem)
    assert isinstance(table.to_pyarrow_dataset().filesystem, pa_fs.PyFileSystem)  # what it replaces


def test_head_keeps_only_the_rows_asked_for(table: DeltaTable) -> None:
    first = arrow_lake.head(table, 4)
    assert first.num_rows == 4
    assert set(first.column("n").to_pylist()) <= set(range(300))
    assert arrow_lake.head(table, 100).num_rows == 15


def test_a_table_deleted_from_is_read_as_its_current_version(table: DeltaTable) -> None:
    table.delete("key = 'a b'")
    table.update_incremental()
    keys = arrow_lake.dataset(table).to_table().column("key").to_pylist()
    assert len(keys) == 12 and "a b" not in keys


def test_a_data_file_gone_from_under_the_log_is_a_clear_error(table: DeltaTable, tmp_path: Path) -> None:
    from lakehouse.errors import DataError

    next((tmp_path / "lake dir" / "events" / "key=plain").glob("*.parquet")).unlink()
    with pytest.raises(DataError, match="a data file could not be read"):
        arrow_lake.read(table)
