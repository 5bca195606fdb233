"""R5 and R6 of the kill matrix (issue 11): a silver build killed mid-batch, or out of disk mid-write,
resumes to exactly the right tables.

``make test`` kills at two points (before the batch commits anything; after the table's append, before the
batch's audit row) and one random point early in the batch; ``make chaos`` makes that ``LAKEHOUSE_CHAOS_POINTS``
random points (20) anywhere in the batch's first 8 seconds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from fuzz_cases import assert_accounted, clickstream_corpus, events_in, land_in_bronze
from kill_matrix import POINTS, KillPoint, random_points, run_and_kill
from lakehouse.config import Settings
from lakehouse.errors import DataError
from lakehouse.silver import engine

pytestmark = pytest.mark.unit

# make test: one random point early in the batch; make chaos: 20 anywhere in its first 8 seconds.
CHAOS_POINTS = int(os.environ.get("LAKEHOUSE_CHAOS_POINTS", "1"))
CHAOS_WINDOW = 8.0 if CHAOS_POINTS > 1 else 2.0


def _killed_then_rebuilt(
    spark: Any, settings: Settings, tmp_path: Path, points: list[KillPoint]
) -> list[Any]:
    cases = clickstream_corpus(settings, per_category=6)
    bronze = str(tmp_path / "bronze")
    coordinates = land_in_bronze(spark, cases, bronze)
    kills = []
    for n, point in enumerate(points):
        folder = tmp_path / f"run-{n}"
        kill = run_and_kill(folder, bronze, tmp_path / f"spark-{n}", point)
        kills.append(kill)
        table = events_in(settings, folder, bronze)
        for path in (table.path, table.quarantine, table.audit):  # every table still reads, whole
            if Path(path, "_delta_log").is_dir():
                DeltaTable(path).to_pyarrow_table()
        engine.build_table(spark, settings, table.name, table=table)  # the next run resumes
        totals = assert_accounted(spark, settings, table, cases, coordinates)
        print(f"{point.name}: killed={kill.killed} after {kill.seconds:.1f} s; then {totals}")
    return kills


@pytest.mark.parametrize("point", POINTS, ids=[p.name for p in POINTS])
def test_a_build_killed_mid_batch_resumes_without_loss_or_duplicates(
    spark: Any, settings: Settings, tmp_path: Path, point: KillPoint
) -> None:
    (kill,) = _killed_then_rebuilt(spark, settings, tmp_path, [point])
    assert kill.killed, f"the build finished before '{point.name}': the kill point was never reached"


def test_builds_killed_at_random_points_resume(spark: Any, settings: Settings, tmp_path: Path) -> None:
    points = random_points(CHAOS_POINTS, seed=11, window=CHAOS_WINDOW)
    kills = _killed_then_rebuilt(spark, settings, tmp_path, points)
    assert sum(k.killed for k in kills) >= -(-CHAOS_POINTS * 3 // 4), kills  # most were killed mid-build


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 24 MiB file system of its own (tmpfs), for the lake's tables; unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root)")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves ``leave`` bytes free on ``disk``."""
    stat = os.statvfs(disk)
    ballast = disk / "ballast"
    with ballast.open("wb") as out:
        out.truncate(0)
        remaining = stat.f_bavail * stat.f_frsize - leave
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            out.write(chunk[: min(len(chunk), remaining)])
            remaining -= len(chunk)
    return ballast


def test_a_full_disk_mid_write_is_a_clear_error_and_the_next_run_completes(
    spark: Any, settings: Settings, tmp_path: Path, small_disk: Path
) -> None:
    """R6: the lake's disk fills while silver writes a batch (its ~900 KB payloads go to the quarantine)."""
    cases = clickstream_corpus(settings, per_category=6)
    bronze = str(tmp_path / "bronze")  # on the big disk: only the silver side runs out
    coordinates = land_in_bronze(spark, cases, bronze)
    table = events_in(settings, small_disk / "lake", bronze)
    engine.ensure_tables(spark, table)
    ballast = _fill(small_disk, leave=256 * 1024)
    with pytest.raises(DataError, match=r"^silver.events <- clickstream failed: the disk is full"):
        engine.build_table(spark, settings, table.name, table=table)
    for path in (table.path, table.quarantine, table.audit):  # nothing half-written is visible
        DeltaTable(path).to_pyarrow_table()
    ballast.unlink()  # space returns: the next run completes the batch, every input accounted once
    engine.build_table(spark, settings, table.name, table=table)
    totals = assert_accounted(spark, settings, table, cases, coordinates)
    assert totals["quarantined"] > 0 and totals["applied"] > 0
