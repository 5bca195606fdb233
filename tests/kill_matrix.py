"""The kill matrix's task side (issue 11, R5): a silver build killed with SIGKILL at a chosen point, then run
again, must leave the tables an uninterrupted build leaves — no partial table, no row lost, none twice.

The build runs in a child process (a classic Spark session of its own, as a DAG task's kernel would): the
parent kills the child's whole process group (Python and its JVM) when the point is reached, checks every
Delta table still reads, and builds again. The fuzz corpus's expectations then say where each input must
be, and the table's audit must balance.

    python tests/kill_matrix.py --folder F --bronze B --workspace W   # the child: one build of silver.events
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_ENV = os.environ.get("LAKEHOUSE_TEST_ENV", "test")  # as tests/conftest.py
_VERSION_1 = "00000000000000000001.json"


@dataclass(frozen=True)
class KillPoint:
    """When to kill the build: ``reached(folder)`` turns true, then ``delay`` seconds more."""

    name: str
    reached: Callable[[Path], bool]
    delay: float = 0.0


def batch_planned(folder: Path) -> bool:
    """The stream wrote its first batch's offsets: the batch runs, nothing of it is committed yet."""
    return any((folder / "checkpoints").glob("*/offsets/0"))


def table_committed(folder: Path) -> bool:
    """The silver table's first append is committed; the batch's audit row (its 'done') may not be."""
    return (folder / "silver" / "_delta_log" / _VERSION_1).is_file()


POINTS = (
    KillPoint("before any commit", batch_planned),
    KillPoint("after the table's commit", table_committed),
)


def random_points(count: int, seed: int, window: float) -> list[KillPoint]:
    """``count`` kill points at random delays (seeded) within ``window`` seconds of the batch's start."""
    rng = random.Random(seed)
    return [
        KillPoint(f"{delay:.2f}s into the batch", batch_planned, delay)
        for delay in sorted(rng.uniform(0, window) for _ in range(count))
    ]


@dataclass(frozen=True)
class Kill:
    """What happened to one child: killed at the point (True) or finished first, and when."""

    point: str
    killed: bool
    seconds: float


def run_and_kill(folder: Path, bronze: str, workspace: Path, point: KillPoint, timeout: float = 600) -> Kill:
    """Start the child build and SIGKILL its process group at ``point`` (or let it finish first)."""
    command = [sys.executable, str(Path(__file__)), "--folder", str(folder), "--bronze", bronze]
    command += ["--workspace", str(workspace)]
    log = (folder.parent / f"{folder.name}.child.log").open("w")
    child = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    reached_at: float | None = None
    try:
        while child.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                raise TimeoutError(f"the child build ran over {timeout:.0f} s (log: {log.name})")
            if reached_at is None and point.reached(folder):
                reached_at = now
            if reached_at is not None and now - reached_at >= point.delay:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                return Kill(point.name, True, now - started)
            time.sleep(0.005)
        return Kill(point.name, False, time.monotonic() - started)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        log.close()


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", required=True)
    parser.add_argument("--bronze", required=True)
    parser.add_argument("--workspace", required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from fuzz_cases import events_in
    from lakehouse.config import load_settings
    from lakehouse.silver import engine
    from lakehouse.spark import get_spark

    settings = load_settings(TEST_ENV, root=ROOT)
    local = settings.spark.model_copy(update={"master": "local[2]", "driver_memory": "1g"})
    lineage = settings.lineage.model_copy(update={"spark_listener": False})
    own = settings.model_copy(update={"spark": local, "lineage": lineage, "workspace": Path(args.workspace)})
    spark = get_spark(own, mode="classic", app_name="lakehouse-kill-matrix")
    table = events_in(settings, Path(args.folder), args.bronze)
    engine.build_table(spark, settings, table.name, table=table)


if __name__ == "__main__":
    _child(sys.argv[1:])
