"""The declarative silver engine ÷ a hand-written Spark job doing the same work on the same micro-batch.

    .venv/bin/python benchmarks/silver_engine.py [--rows 50000 200000] [--repeat 3] [--mode classic|connect]

A bronze-shaped batch (JSON payloads; 1% re-deliveries, 0.5% malformed, 0.5% with a value that does not
cast, 0.5% breaking a declared rule, 0.2% failing a suite rule) goes, into fresh tables each time:

* **engine** — :func:`lakehouse.silver.engine.process_batch` with a declaration (parse by fields, reject
  rules, dedupe by key, the suite compiled into predicates, append, quarantine, the audit row);
* **hand-written** — the same steps written directly in PySpark: ``from_json``, casts, one ``CASE`` for the
  reason, a window for duplicates, an anti-join against the table, the quality predicates as a filter, and
  the same three Delta appends.

Both sides append to tables created before the clock starts (a recurring job's batch does not create its
tables). Prints both times (best of ``--repeat``) and engine ÷ hand-written; the target is ≤ 1.2.
``--mode classic`` (default) needs no running service.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse.config import Settings, load_settings
from lakehouse.governance.catalog import TableContract
from lakehouse.silver import engine
from lakehouse.spark import get_spark

SUITE = {
    "name": "silver.bench_readings",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "device_id"},
         "meta": {"rule": "device_present", "action": "quarantine"}},
        {"type": "expect_column_values_to_be_between",
         "kwargs": {"column": "value", "min_value": 0, "max_value": 1000},
         "meta": {"rule": "value_range", "action": "drop"}},
        {"type": "expect_column_values_to_be_in_set",
         "kwargs": {"column": "site", "value_set": ["a", "b", "c"]},
         "meta": {"rule": "site_known", "action": "warn"}},
    ],
}  # fmt: skip
DECLARATION = {
    "table": "silver.bench_readings",
    "owner": "bench",
    "description": "Benchmark readings.",
    "classification": "internal",
    "build": {
        "inputs": [{"table": "bronze.bench_raw", "format": "json", "keep": ["offset"],
                    "fields": {"device_id": "string", "seq": "string", "value": "string", "site": "string"}}],
        "key": ["device_id", "seq"],
        "sequence": ["offset"],
        "reject": [{"reason": "negative_value", "when": "value < -100"}],
    },
    "columns": [
        {"name": "device_id", "type": "string"},
        {"name": "seq", "type": "long"},
        {"name": "value", "type": "double"},
        {"name": "site", "type": "string"},
        {"name": "offset", "type": "long"},
    ],
}  # fmt: skip


def bronze_batch(spark: SparkSession, rows: int) -> DataFrame:
    i = F.col("id")
    seq = F.when(i % 200 == 1, F.lit("x")).otherwise(
        (F.when(i % 100 == 0, i - 1).otherwise(i)).cast("string")
    )
    value = F.when(i % 200 == 3, F.lit(-500.0)).when(i % 500 == 7, F.lit(5000.0)).otherwise(i % 100)
    payload = F.to_json(
        F.struct(
            F.concat(F.lit("d-"), (i % 1000).cast("string")).alias("device_id"),
            seq.alias("seq"),
            value.cast("string").alias("value"),
            F.element_at(F.array(F.lit("a"), F.lit("b"), F.lit("c")), (i % 3 + 1).cast("int")).alias("site"),
        )
    )
    value_text = F.when(i % 200 == 2, F.lit("{broken")).otherwise(payload)
    return spark.range(rows).select(value_text.alias("value"), i.alias("offset"))


HAND_TABLES = {
    "silver": "device_id string, seq long, value double, site string, offset long",
    "quarantine": "record string, reason string, offset long",
    "audit": "batch_id long, n long",
}


def hand_written(batch: DataFrame, base: str, batch_id: int) -> None:
    """The same work, written as a one-off PySpark job."""
    spark = batch.sparkSession
    schema = "device_id string, seq string, value string, site string"
    p = F.from_json(F.col("value"), schema)
    typed = batch.select(
        F.col("value").alias("_raw"),
        F.col("offset"),
        p["device_id"].alias("device_id"),
        p["seq"].try_cast("long").alias("seq"),
        p["value"].try_cast("double").alias("value_d"),
        p["site"].alias("site"),
        (p["seq"].isNotNull() & p["seq"].try_cast("long").isNull()).alias("_bad_seq"),
        F.json_object_keys(F.col("value")).isNull().alias("_malformed"),
    ).withColumnRenamed("value_d", "value")
    reason = (
        F.when(F.col("_malformed"), F.lit("malformed_json"))
        .when(F.col("value") < -100, F.lit("negative_value"))
        .when(F.col("_bad_seq"), F.lit("invalid_value:seq"))
        .when(F.col("device_id").isNull() | F.col("seq").isNull(), F.lit("missing_key"))
    )
    typed = typed.withColumn("_reason", reason)
    existing = (
        spark.read.format("delta")
        .load(f"{base}/silver")
        .select(F.col("device_id").alias("k1"), F.col("seq").alias("k2"))
    )
    window = Window.partitionBy("device_id", "seq").orderBy("offset")
    marked = (
        typed.withColumn("_rank", F.when(F.col("_reason").isNull(), F.row_number().over(window)))
        .join(existing, (F.col("device_id") == F.col("k1")) & (F.col("seq") == F.col("k2")), "left")
        .withColumn(
            "_outcome",
            F.when(F.col("_reason").isNotNull(), "quarantine")
            .when((F.col("_rank") > 1) | F.col("k1").isNotNull(), "duplicate")
            .otherwise("insert"),
        )
        .localCheckpoint(eager=True)
    )
    inserts = marked.where("_outcome = 'insert'")
    stats = inserts.agg(
        F.count(F.when(F.col("device_id").isNull(), 1)),
        F.count(F.when((F.col("value") < 0) | (F.col("value") > 1000), 1)),
        F.count(F.when(~F.col("site").isin("a", "b", "c"), 1)),
    ).first()
    assert stats is not None
    txn = {"txnAppId": "hand", "txnVersion": str(batch_id)}
    valid = inserts.where(F.col("device_id").isNotNull() & F.col("value").between(0, 1000))
    valid.select("device_id", "seq", "value", "site", "offset").write.format("delta").mode("append").options(
        **txn
    ).save(f"{base}/silver")
    marked.where("_outcome = 'quarantine'").select(
        F.col("_raw").alias("record"), F.col("_reason").alias("reason"), "offset"
    ).write.format("delta").mode("append").options(**txn).save(f"{base}/quarantine")
    spark.createDataFrame([(batch_id, int(stats[0]))], "batch_id long, n long").write.format("delta").mode(
        "append"
    ).options(**txn).save(f"{base}/audit")


def _engine_table(spark: SparkSession, base: str) -> engine.SilverTable:
    contract = TableContract.model_validate(DECLARATION)
    assert contract.build is not None
    table = engine.SilverTable(
        contract=contract,
        build=contract.build,
        path=f"{base}/silver",
        quarantine=f"{base}/quarantine",
        audit=f"{base}/audit",
        checkpoints=f"{base}/checkpoints",
        tokenization_key="bench",
        input_paths={"bench_raw": f"{base}/bronze"},
        reference_paths={},
    )
    engine.ensure_tables(spark, table)  # once per table, as a first build does: not a batch's cost
    return table


def _engine_run(settings: Settings, table: engine.SilverTable, batch: DataFrame, batch_id: int) -> Any:
    contract = table.contract
    assert contract.build is not None
    ctx = engine.RunContext(table=table, spec=contract.build.inputs[0], settings=settings, run_id="bench",
                            app_id="engine", quality=True)  # fmt: skip
    return engine.process_batch(batch, batch_id, ctx)


def main() -> None:
    import json

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default=None)
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", choices=["classic", "connect"], default="classic")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-silver-") as scratch:
        suites = Path(scratch) / "suites" / "silver"
        suites.mkdir(parents=True)
        (suites / "bench_readings.json").write_text(json.dumps(SUITE))
        settings = load_settings(args.env)
        quality = settings.quality.model_copy(
            update={"suites_dir": str(Path(scratch) / "suites"), "data_docs": False}
        )
        settings = settings.model_copy(update={"quality": quality, "workspace": Path(scratch) / "ws"})
        spark = get_spark(settings, mode=args.mode) if args.mode == "classic" else get_spark(settings)
        print(f"{'rows':>9} {'engine s':>9} {'hand s':>8} {'ratio':>6}  engine counts")
        for rows in args.rows:
            batch = bronze_batch(spark, rows).localCheckpoint(eager=True)
            engine_s, hand_s, counts = [], [], None
            for attempt in range(args.repeat + 1):  # the first of each is a warm-up
                base = f"{scratch}/run-{rows}-{attempt}"
                for name, schema in HAND_TABLES.items():  # as the engine's ensure_tables: not a batch's cost
                    spark.createDataFrame([], schema).write.format("delta").save(f"{base}-hand/{name}")
                table = _engine_table(spark, f"{base}-engine")
                start = time.perf_counter()
                counts = _engine_run(settings, table, batch, 0)
                engine_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                hand_written(batch, f"{base}-hand", 0)
                hand_s.append(time.perf_counter() - start)
            e, h = min(engine_s[1:]), min(hand_s[1:])
            print(f"{rows:>9} {e:>9.2f} {h:>8.2f} {e / h:>6.2f}  {counts}", flush=True)
    print("target: engine / hand-written <= 1.2")


if __name__ == "__main__":
    main()
