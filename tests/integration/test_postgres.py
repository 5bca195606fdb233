"""The operational database on the real PostgreSQL: seed, incremental extract, wal2json CDC → Kafka → bronze,
and the declared retail silver tables (current state + SCD2, run by the silver engine) compared with the
database itself."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic

from lakehouse.config import Settings
from lakehouse.privacy.tokenize import token
from lakehouse.silver import engine
from lakehouse.silver.engine import SilverTable
from lakehouse.simulate.retail import (
    RETAIL_TABLES,
    CustomerUpdate,
    connect,
    generate_changes,
    read_cdnow,
    retail_sources,
    seed,
    table_rows,
)
from lakehouse.sources.cdc import cdc_producer, drop_slot, lsn_to_int, peek_changes, publish, run_cdc
from lakehouse.sources.kafka import ingest_available
from lakehouse.sources.postgres import drop_timezone, extract_incremental
from lakehouse.sources.registry import PostgresCdcSource

pytestmark = pytest.mark.integration

SLICE = 1500


@pytest.fixture(scope="module")
def seeded(postgres: Settings) -> Settings:
    seed(postgres, SLICE, replace=True)
    return postgres


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _topic(settings: Settings, partitions: int = 3) -> str:
    name = f"it-cdc-{_tag()}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


def _consume(settings: Settings, topic: str, expected: int) -> list[Any]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    records = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) >= expected:
                break
    finally:
        consumer.close()
    return records


def _normal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value.quantize(Decimal("0.01"))
    if hasattr(value, "tzinfo") and hasattr(value, "hour"):
        return drop_timezone(value)
    return value


# The declared retail tables, in the DAG's order (a reference's table before the table that names it).
DECLARED = (
    "silver.retail_customers",
    "silver.retail_products",
    "silver.retail_orders",
    "silver.retail_order_items",
    "silver.dim_customer",
)


def _declared(settings: Settings, lake: Path, cdc_bronze: str, tag: str) -> dict[str, SilverTable]:
    """The real declarations, reading this test's bronze tables and writing a private lake."""
    tables = {}
    for name in DECLARED:
        table = engine.silver_table(settings, name)
        short = name.split(".")[1]
        extract = f"it_{tag}_" + short.removeprefix("retail_").replace("dim_customer", "customers")
        tables[name] = dataclasses.replace(
            table,
            path=str(lake / short),
            quarantine=str(lake / f"{short}_quarantine"),
            audit=str(lake / "silver_batches"),
            checkpoints=str(lake / "checkpoints" / short),
            input_paths={"cdc": cdc_bronze, "extract": settings.table_path("bronze", extract)},
            reference_paths={ref: str(lake / ref.split(".")[1]) for ref in table.reference_paths},
        )
    return tables


def _build(spark: Any, settings: Settings, tables: dict[str, SilverTable]) -> dict[str, engine.BuildReport]:
    reports = {}
    for name, table in tables.items():
        reports[name] = engine.build_table(spark, settings, name, table=table)
        engine.check_table(spark, table)  # audit balanced, one row per key, SCD2 history sound
    return reports


def _protected(settings: Settings, name: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A PostgreSQL row as silver holds it: the contract's PII columns as their HMAC tokens."""
    if name != "customers":
        return row
    key = settings.privacy.tokenization_key
    return (row[0], token(row[1], key), token(row[2], key), *row[3:])


def _silver_rows(spark: Any, table: SilverTable, name: str) -> list[tuple[Any, ...]]:
    spec = RETAIL_TABLES[name]
    live = spark.read.format("delta").load(table.path).where("NOT _deleted")
    frame = live.select(*spec.column_names).orderBy(*spec.key)
    return [tuple(_normal(v) for v in row) for row in frame.collect()]


def _pg_rows(settings: Settings, name: str) -> list[tuple[Any, ...]]:
    return [tuple(_normal(v) for v in row) for row in table_rows(settings, name)]


def test_seed_loads_the_real_cdnow_slice(seeded: Settings) -> None:
    purchases = read_cdnow(SLICE)
    with connect(seeded) as conn:
        orders, amount = conn.execute("SELECT count(*), sum(total_amount) FROM orders").fetchone()  # type: ignore[misc]
        customers = conn.execute("SELECT count(*) FROM customers").fetchone()[0]  # type: ignore[index]
        quantities = dict(
            conn.execute("SELECT order_id, sum(quantity) FROM order_items GROUP BY 1").fetchall()
        )
        stamps = conn.execute("SELECT count(DISTINCT updated_at) FROM orders").fetchone()[0]  # type: ignore[index]
    assert orders == SLICE
    assert amount == sum(p.amount for p in purchases)
    assert customers == len({p.customer_id for p in purchases})
    assert [quantities[i + 1] for i in range(SLICE)] == [p.quantity for p in purchases]
    assert stamps == 1  # every seeded row shares one updated_at: the ties the extract must survive


def test_incremental_extract_survives_ties_and_returns_only_changes(seeded: Settings, spark: Any) -> None:
    tag = _tag()
    (orders,) = [s for s in retail_sources(f"it_{tag}_", f"it_{tag}_") if s.table == "orders"]
    first = extract_incremental(spark, seeded, orders, page_size=400)
    bronze = spark.read.format("delta").load(first.bronze)
    assert first.rows == SLICE and first.pages == 4  # page boundaries fall inside one updated_at
    assert bronze.count() == bronze.select("order_id").distinct().count() == SLICE

    assert extract_incremental(spark, seeded, orders, page_size=400).rows == 0

    generate_changes(seeded, 40, seed=5)
    with connect(seeded) as conn:
        changed = {
            int(r[0])
            for r in conn.execute(
                "SELECT order_id FROM orders WHERE updated_at > %s::timestamptz", (first.watermark,)
            )
        }
    third = extract_incremental(spark, seeded, orders, page_size=400)
    assert changed and third.rows == len(changed)
    new_rows = spark.read.format("delta").load(first.bronze).where(f"_batch_id = '{third.batch_ids[0]}'")
    assert {r["order_id"] for r in new_rows.select("order_id").collect()} == changed


def test_cdc_to_kafka_bronze_and_silver(seeded: Settings, spark: Any, tmp_path: Path) -> None:
    tag = _tag()
    topic = _topic(seeded)
    source = PostgresCdcSource(
        name=f"it_cdc_{tag}",
        kind="postgres_cdc",
        slot=f"it_{tag}",
        topic=topic,
        tables=list(RETAIL_TABLES),
        bronze=f"it_cdc_{tag}",
    )
    bronze = str(tmp_path / "bronze_cdc")
    silver = _declared(seeded, tmp_path / "silver", bronze, tag)
    key = seeded.privacy.tokenization_key
    try:
        assert run_cdc(seeded, source, once=True).changes == 0  # creates the slot
        # The initial state comes from the incremental extract; the changes after it from CDC.
        sources = retail_sources(f"it_{tag}_", f"it_{tag}_")
        for extract_source in sources:
            extract_incremental(spark, seeded, extract_source)
        # The CDC bronze does not exist yet: each table builds from its extract alone, suites on. Customer PII
        # lands tokenized (the suites' `*_tokenized` fail rules would stop clear text).
        first = _build(spark, seeded, silver)
        assert set(first["silver.retail_customers"].counts) == {"extract"}
        assert _silver_rows(spark, silver["silver.retail_customers"], "customers") == [
            _protected(seeded, "customers", row) for row in _pg_rows(seeded, "customers")
        ]
        before = {r[0]: r[2] for r in table_rows(seeded, "customers")}

        changes = generate_changes(seeded, 80, seed=11)
        # A crash after producing and before advancing the slot: the next run sends everything again.
        with connect(seeded, autocommit=True) as conn:
            transactions = peek_changes(conn, source)
        producer = cdc_producer(seeded.kafka.bootstrap_servers)
        try:
            crashed = publish(producer, topic, transactions)
        finally:
            producer.close()
        report = run_cdc(seeded, source, once=True)
        assert crashed > 0 and report.changes == crashed
        assert run_cdc(seeded, source, once=True).changes == 0  # the slot advanced

        records = _consume(seeded, topic, 2 * crashed)
        assert len(records) == 2 * crashed
        by_key: dict[bytes, list[Any]] = defaultdict(list)
        for record in sorted(records, key=lambda r: (r.partition, r.offset)):
            by_key[record.key].append(record)
        for record_key, sequence in by_key.items():
            assert len({r.partition for r in sequence}) == 1, f"{record_key!r} spread over partitions"
            lsns = [lsn_to_int(json.loads(r.value)["lsn"]) for r in sequence]
            half = len(lsns) // 2
            assert lsns[:half] == lsns[half:], "the re-delivery repeats the same changes in the same order"
            assert lsns[:half] == sorted(set(lsns[:half])), f"LSNs of {record_key!r} do not increase"
        assert {json.loads(r.value)["action"] for r in records} == {"I", "U", "D"}

        ingested = ingest_available(
            spark, seeded, topic, table=bronze, checkpoint=str(tmp_path / "ck_bronze")
        )
        assert ingested.rows == 2 * crashed
        merged = _build(spark, seeded, silver)
        cdc_rows = 0
        for name, built in merged.items():
            assert set(built.counts) == {"cdc"}, f"{name}: only the change feed had something new"
            assert built.total.quarantined == 0, f"{name} quarantined changes"
            cdc_rows += built.total.input_rows
        # every change record is some table's input (dim_customer reads the customers' changes again)
        customers_cdc = merged["silver.dim_customer"].total.input_rows
        assert cdc_rows - customers_cdc == 2 * crashed
        for name in RETAIL_TABLES:
            expected = [_protected(seeded, name, row) for row in _pg_rows(seeded, name)]
            assert _silver_rows(spark, silver[f"silver.retail_{name}"], name) == expected, (
                f"{name} != PostgreSQL"
            )

        # Re-applying the very same bronze rows (new checkpoints) changes nothing: one table per kind of
        # change — a single key, a composite key (order_items), an SCD2 history (dim_customer).
        replayed = ("silver.retail_customers", "silver.retail_order_items", "silver.dim_customer")
        again = {
            name: dataclasses.replace(table, checkpoints=table.checkpoints + "_again")
            for name, table in silver.items()
            if name in replayed
        }
        _build(spark, seeded, again)
        for name in ("customers", "order_items"):
            expected = [_protected(seeded, name, row) for row in _pg_rows(seeded, name)]
            assert _silver_rows(spark, silver[f"silver.retail_{name}"], name) == expected, (
                f"replay changed {name}"
            )

        # SCD2: one current row per customer (check_table: exactly one, history closed, no overlaps); an email
        # change leaves a closed history row.
        dim = spark.read.format("delta").load(silver["silver.dim_customer"].path)
        assert dim.select("customer_id").distinct().count() == dim.where("is_current").count() == len(before)
        updated = [c for c in changes.changes if isinstance(c, CustomerUpdate)]
        assert updated and dim.where("NOT is_current").count() > 0
        emailed = next(c for c in updated if c.email)
        rows = dim.where(f"customer_id = {emailed.customer_id}").orderBy("valid_from").collect()
        assert rows[0]["email"] == token(before[emailed.customer_id], key) and not rows[0]["is_current"]
        assert rows[0]["valid_to"] == rows[1]["valid_from"]
        assert rows[-1]["is_current"] and rows[-1]["valid_to"] is None
        current_email = {r[0]: r[2] for r in table_rows(seeded, "customers")}[emailed.customer_id]
        assert rows[-1]["email"] == token(current_email, key)
    finally:
        drop_slot(seeded, source.slot)
