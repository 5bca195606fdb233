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

Prints the times and check ÷ write for both. The two must route the same rows.

Then the same rows as the silver engine validates them, where silver's suites run: the repo's
``silver.events`` declaration and suite through :func:`lakehouse.silver.engine.process_batch` on a
bronze-shaped batch of the same events (JSON payloads as Kafka landed them, 1% re-delivered), into fresh
tables each time, with the suite and without it (``quality=False``). The engine counts the suite in the
aggregate it runs over the batch anyway (its uniqueness rule on the declared key judged by the dedupe's own
rank, its rules' flags computed in the pass that materialises the batch), so validation costs the
difference: ``validation = with - without``, best of ``--repeat`` each (``paired``: the median
difference of the back-to-back pairs, printed beside it), set against appending the rows it inserts to the
table as declared (``write``). Target: validation ÷ write <= 0.2.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Settings, load_settings
from lakehouse.quality import CheckedBatch, check_batch, load_suite
from lakehouse.silver import apply, engine
from lakehouse.simulate.event_contract import EVENT_TYPES
from lakehouse.sources.kafka import BRONZE_KAFKA
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


def bronze_events(spark: SparkSession, rows: int) -> DataFrame:
    """The events of :func:`events_batch` as the Kafka ingest lands them: v1 JSON payloads in ``value``.

    One row in 100 is a re-delivery of an earlier one (the same payload at a later offset).
    """
    first = rows - rows // 100
    events = events_batch(spark, first)
    again = events.where(F.col("source_offset") % 99 == 0).limit(rows - first)
    events = events.unionByName(again).withColumn("n", F.monotonically_increasing_id())
    payload = F.to_json(
        F.struct(
            F.col("schema_version"),
            F.col("event_id"),
            F.col("event_type"),
            F.unix_millis(F.col("event_time")).alias("ts"),
            F.col("user_id"),
            F.concat(F.lit("s-"), (F.col("source_offset") % 20000).cast("string")).alias("session_id"),
            F.col("platform"),
            F.col("country"),
            F.col("quantity"),
            F.col("price"),
            F.col("revenue"),
            F.col("currency"),
        )
    )
    columns = {
        "key": F.col("user_id"),
        "value": payload,
        "topic": F.lit("clickstream"),
        "partition": (F.col("n") % 2).cast("int"),
        "offset": F.col("n"),
        "kafka_timestamp": F.col("event_time"),
        "ingested_at": F.col("event_time") + F.expr("INTERVAL 1 SECOND"),
        "ingest_date": F.to_date(F.col("event_time")),
        "key_bytes": F.lit(None).cast("binary"),
        "value_bytes": F.lit(None).cast("binary"),
    }
    return events.select(*[columns[f.name].cast(f.dataType).alias(f.name) for f in BRONZE_KAFKA.fields])


def measure_engine(spark: SparkSession, settings: Settings, rows: int, scratch: str, repeat: int) -> str:
    """One table line: the silver engine with and without its suite, and the write of what it inserts."""
    batch = bronze_events(spark, rows).localCheckpoint(eager=True)
    declared = engine.silver_table(settings, "silver.events")
    spec = declared.build.inputs[0]
    runs = iter(range(10_000))

    def fresh() -> engine.SilverTable:
        base = Path(scratch) / f"engine-{rows}-{next(runs)}"
        table = dataclasses.replace(
            declared,
            path=str(base / "silver"),
            quarantine=str(base / "quarantine"),
            audit=str(base / "audit"),
            checkpoints=str(base / "checkpoints"),
        )
        engine.ensure_tables(spark, table)  # a recurring batch does not create its tables: not timed
        return table

    def run(quality: bool) -> tuple[float, engine.SilverTable, engine.BatchCounts]:
        table = fresh()
        ctx = engine.RunContext(table=table, spec=spec, settings=settings, run_id=str(uuid.uuid4()),
                                app_id="bench", quality=quality)  # fmt: skip
        start = time.perf_counter()
        counts = engine.process_batch(batch, 0, ctx)
        return time.perf_counter() - start, table, counts

    run(True)  # warm up: GX import, suite load, plans
    with_suite, without = [], []
    for _ in range(repeat):  # interleaved, so a drift of the machine's speed hits both alike
        with_suite.append(run(True))
        without.append(run(False))
    validated, plain = min(t for t, _, _ in with_suite), min(t for t, _, _ in without)
    # As the other benchmarks: best of each side. Two runs of several seconds differ by more than the suite
    # costs on a busy machine, so the median of the back-to-back pairs' differences is printed beside it.
    validation = max(validated - plain, 0.0)
    paired = statistics.median(a[0] - b[0] for a, b in zip(with_suite, without, strict=True))
    _, table, counts = without[0]
    inserted = spark.read.format("delta").load(table.path).localCheckpoint(eager=True)

    def write() -> None:  # the same rows into the table as declared (partitioned by event_date)
        apply.append(inserted, fresh().path, table.columns, {})

    write_s = best(repeat, write)
    checked = with_suite[0][2]
    return (
        f"{rows:>9} {plain:>9.2f} {validated:>9.2f} {validation:>10.2f} {write_s:>8.2f} "
        f"{validation / write_s:>6.2f} {paired:>7.2f} {paired / write_s:>6.2f} {counts.applied:>8} "
        f"{checked.dropped + checked.quarantined:>9}"
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
    scratch_dir = tempfile.TemporaryDirectory(prefix="bench-quality-")
    # The engine's validation results and Data Docs land in a scratch workspace, not the environment's.
    settings = settings.model_copy(update={"workspace": Path(scratch_dir.name) / "workspace"})
    header = ("rows", "write s", "check s", "ratio", "gx", "gx s", "ratio", "quarantined", "dropped")
    widths = (9, 8, 8, 6, 7, 8, 6, 11, 7)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    with scratch_dir as scratch:
        for rows in args.rows:
            print(measure(spark, settings, rows, f"{scratch}/events-{rows}", args.repeat), flush=True)
        print("\nin the silver engine (silver.events declaration and suite, with and without the suite):")
        header = ("rows", "plain s", "suite s", "validation", "write s", "ratio", "paired", "ratio",
                  "inserted", "held")  # fmt: skip
        widths = (9, 9, 9, 10, 8, 6, 7, 6, 8, 9)
        print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
        for rows in args.rows:
            print(measure_engine(spark, settings, rows, scratch, args.repeat), flush=True)
    print("target: validation / write <= 0.2")


if __name__ == "__main__":
    main()
