"""Quality-check cost: validating a silver events batch ÷ writing it to Delta, at two batch sizes.

    .venv/bin/python benchmarks/quality.py [--env local] [--rows 20000 200000] [--repeat 3]

For each size, builds a synthetic silver-events batch on the Spark Connect server (a few rows broken on
purpose, so the quarantine and drop routing really runs), materialises it, then times side by side
(best of ``--repeat``):

* write — appending the batch to a fresh Delta table (what ``write_outcomes`` does for the inserts);
* check — ``check_batch`` with the repo's ``silver.events`` suite as a task calls it (batch materialised,
  row count known), results not persisted: the suite compiled into Spark predicates
  (:mod:`lakehouse.quality.compiled`): one aggregate over the batch counts every rule, the routing is a
  projection the write evaluates; GX only for rules the compiler does not know;
* gx — the same call on GX's own engine for the whole suite (pandas on an Arrow copy up to
  ``quality.pandas_max_rows``, else Spark) with its routing join: the baseline the compiler replaced.

Prints the times and check ÷ write for both; target: ratio <= 0.2 (the check's). The two must route the
same rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Settings, load_settings
from lakehouse.quality import CheckedBatch, check_batch, load_suite
from lakehouse.simulate.event_contract import EVENT_TYPES
from lakehouse.spark import get_spark


def events_batch(spark: SparkSession, rows: int) -> DataFrame:
    """A silver-events-shaped batch; one row in 997 has a bad country, one in 991 is test traffic."""
    i = F.col("id")
    types = F.array(*[F.lit(t) for t in EVENT_TYPES])
    return spark.range(rows).select(
        F.concat(F.lit("e-"), i.cast("string")).alias("event_id"),
        F.element_at(types, (i % len(EVENT_TYPES) + 1).cast("int")).alias("event_type"),
        F.timestamp_millis(F.lit(1_730_419_200_000) + i * 1000).alias("event_time"),
        F.when(i % 991 == 0, F.lit("test-bot"))
        .otherwise(F.concat(F.lit("u-"), (i % 5000).cast("string")))
        .alias("user_id"),
        F.element_at(F.array(F.lit("web"), F.lit("ios"), F.lit("android")), (i % 3 + 1).cast("int")).alias(
            "platform"
        ),
        F.when(i % 997 == 0, F.lit("GERMANY")).otherwise(F.lit("DE")).alias("country"),
        (i % 5 + 1).cast("int").alias("quantity"),
        (i % 100).cast("double").alias("price"),
        (i % 100).cast("double").alias("revenue"),
        F.lit("EUR").alias("currency"),
        F.lit(1).alias("schema_version"),
        (i % 2).cast("int").alias("source_partition"),
        i.alias("source_offset"),
        F.current_timestamp().alias("ingested_at"),
        F.lit('{"raw": "payload kept for quarantine"}').alias("value"),
    )


def best(repeat: int, action: Callable[[], object]) -> float:
    """The fastest of ``repeat`` runs of ``action``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(spark: SparkSession, settings: Settings, rows: int, target: str, repeat: int) -> str:
    """One table line: write and validate times of a ``rows``-row batch and their ratio."""
    suite = load_suite(settings, "silver.events")
    batch = events_batch(spark, rows).localCheckpoint(eager=True)

    def write() -> None:
        batch.write.format("delta").mode("append").save(target)

    gx_engine = "pandas" if rows <= settings.quality.pandas_max_rows else "spark"

    def check(engine: str | None = None) -> CheckedBatch:
        # As a task calls it: the batch is materialised and its row count known.
        return check_batch(
            batch,
            "silver.events",
            settings=settings,
            run_id=str(uuid.uuid4()),
            batch_id=0,
            suite=suite,
            persist=False,
            materialised=True,
            rows=rows,
            engine=engine,
        )

    write()  # warm up: table creation, GX import and context
    checked, baseline = check(), check(gx_engine)
    write_s = best(repeat, write)
    check_s = best(repeat, check)
    gx_s = best(repeat, lambda: check(gx_engine))
    assert (checked.quarantined_count, checked.dropped) == (baseline.quarantined_count, baseline.dropped)
    return (
        f"{rows:>9} {write_s:>8.2f} {check_s:>8.2f} {check_s / write_s:>6.2f} "
        f"{gx_engine:>7} {gx_s:>8.2f} {gx_s / write_s:>6.2f} "
        f"{checked.quarantined_count:>11} {checked.dropped:>7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default=None)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", choices=["connect", "classic"], default="connect")
    args = parser.parse_args()
    settings = load_settings(args.env)
    spark = get_spark(settings, mode="classic") if args.mode == "classic" else get_spark(settings)
    header = ("rows", "write s", "check s", "ratio", "gx", "gx s", "ratio", "quarantined", "dropped")
    widths = (9, 8, 8, 6, 7, 8, 6, 11, 7)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        for rows in args.rows:
            print(measure(spark, settings, rows, f"{scratch}/events-{rows}", args.repeat), flush=True)
    print("target: check / write <= 0.2")


if __name__ == "__main__":
    main()
