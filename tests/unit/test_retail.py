"""Retail source logic and the retail silver declarations on inline data: CDNOW parsing, order splitting, the
change plan, wal2json decoding; then ``catalog/silver/retail_*.yaml`` and ``dim_customer.yaml`` run by the
silver engine — CDC parsing and quarantine, insert/update/delete ordering, the extract and CDC on the same
key, SCD2 versions and the dimension's invariants (the extract's SQL and state: test_postgres_extract.py)."""

from __future__ import annotations

import json
import random
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.privacy.tokenize import token
from lakehouse.silver import engine
from lakehouse.silver.engine import BatchCounts, RunContext, SilverTable
from lakehouse.simulate.retail import (
    CustomerUpdate,
    DeleteOrder,
    NewOrder,
    RetailState,
    StatusChange,
    parse_cdnow,
    plan_changes,
    product_catalog,
    split_order,
)
from lakehouse.sources.cdc import decode_transactions, lsn_to_int, qualified_tables, record_key

pytestmark = pytest.mark.unit


def test_parse_cdnow_skips_the_header_and_types_fields() -> None:
    lines = [" customer_id  date number_of_cds  dollar_value", " 00002 19970112  2   12.00\r\n"]
    (purchase,) = parse_cdnow(lines)
    assert (purchase.customer_id, purchase.day, purchase.quantity) == (2, date(1997, 1, 12), 2)
    assert purchase.amount == Decimal("12.00")
    with pytest.raises(DataError, match="line 1"):
        list(parse_cdnow(["00001 1997x101 1 2.0"]))


@pytest.mark.parametrize("quantity", [1, 2, 3, 7, 40])
def test_split_order_keeps_quantity_and_amount(quantity: int) -> None:
    amount = Decimal("87.43")
    lines = split_order(1, quantity, amount, product_catalog(), random.Random(quantity))
    assert sum(q for _, _, q, _ in lines) == quantity
    assert len({p for _, p, _, _ in lines}) == len(lines) <= 3
    total = sum(q * price for _, _, q, price in lines)
    assert abs(total - amount) <= Decimal("0.01") * quantity


def _state() -> RetailState:
    customers = {i: (f"c{i}@example.com", "standard") for i in range(1, 30)}
    return RetailState(customers, {i: Decimal("9.99") for i in range(1, 10)}, next_order_id=100)


def test_change_plan_is_deterministic_and_follows_the_status_machine() -> None:
    first = plan_changes(_state(), 300, seed=3, order_date=date(2024, 1, 1))
    assert first == plan_changes(_state(), 300, seed=3, order_date=date(2024, 1, 1))
    assert first != plan_changes(_state(), 300, seed=4, order_date=date(2024, 1, 1))
    kinds = {type(c) for c in first}
    assert kinds == {NewOrder, StatusChange, CustomerUpdate, DeleteOrder}
    status: dict[int, str] = {}
    allowed = {"placed": {"shipped", "cancelled"}, "shipped": {"delivered"}}
    for change in first:
        if isinstance(change, NewOrder):
            status[change.order_id] = "placed"
            assert change.items and change.total > 0
        elif isinstance(change, StatusChange):
            assert change.status in allowed[status[change.order_id]]
            status[change.order_id] = change.status
        elif isinstance(change, DeleteOrder):
            assert status.pop(change.order_id) == "cancelled"
        else:
            assert change.email or change.segment


def test_change_plan_needs_a_seeded_database() -> None:
    with pytest.raises(DataError, match="seed"):
        plan_changes(RetailState({}, {}, 1), 1, seed=1, order_date=date(2024, 1, 1))


def test_lsn_and_table_names() -> None:
    assert lsn_to_int("0/16B3748") == 0x16B3748
    assert lsn_to_int("1/0") > lsn_to_int("0/FFFFFFFF")
    with pytest.raises(DataError):
        lsn_to_int("16B3748")
    assert qualified_tables(["orders", "sales.orders"]) == ["public.orders", "sales.orders"]
    assert qualified_tables(["sales.*", "*.orders"]) == ["sales.*", "*.orders"]
    assert qualified_tables(["crm.order lines", "a,b"]) == ["crm.order\\ lines", "public.a\\,b"]
    for bad in ["a.b.c", "sales.", 'x."y"', "back\\slash"]:
        with pytest.raises(ConfigError):
            qualified_tables([bad])


def _wal(action: str, lsn: str, **row: Any) -> dict[str, Any]:
    change: dict[str, Any] = {"action": action, "lsn": lsn, "timestamp": "2024-01-01 10:00:00+00",
                              "schema": "public", "table": "orders",
                              "pk": [{"name": "order_id", "type": "bigint"}]}  # fmt: skip
    columns = [{"name": k, "type": "text", "value": v} for k, v in row.items()]
    change["identity" if action == "D" else "columns"] = columns
    return change


def test_decode_groups_transactions_and_keys_by_primary_key() -> None:
    rows = [
        ("0/10", json.dumps({"action": "B", "lsn": "0/30", "nextlsn": "0/38"})),
        ("0/10", json.dumps(_wal("I", "0/10", order_id=5, status="placed"))),
        ("0/20", json.dumps(_wal("U", "0/20", order_id=5, status="shipped"))),
        ("0/38", json.dumps({"action": "C", "lsn": "0/30", "nextlsn": "0/38"})),
        ("0/40", json.dumps({"action": "B", "lsn": "0/48", "nextlsn": "0/50"})),
        ("0/40", json.dumps(_wal("D", "0/40", order_id=5, status="shipped"))),
        ("0/50", json.dumps({"action": "C", "lsn": "0/48", "nextlsn": "0/50"})),
    ]
    first, second = decode_transactions(rows, "slot_a")
    assert (first.end_lsn, second.end_lsn) == ("0/38", "0/50")  # where the slot advances to
    keys = {change.key for t in (first, second) for change in t.changes}
    assert keys == {b"public.orders:[5]"}
    value = json.loads(first.changes[0].value)
    assert value["commit_lsn"] == "0/30" and value["slot"] == "slot_a"
    with pytest.raises(DataError, match="primary key"):
        record_key({**_wal("I", "0/1", order_id=1), "pk": []})


# --- the retail silver declarations, run by the engine ------------------------------------------------------

BRONZE_CDC = "key string, value string, partition int, offset long"


class Declared:
    """One declared retail table (its real contract and suite) in a private lake, fed one batch at a time per
    input as ``foreachBatch`` would."""

    def __init__(self, spark: Any, settings: Settings, tmp_path: Path, name: str) -> None:
        quality = settings.quality.model_copy(update={"data_docs": False})
        self.settings = settings.model_copy(update={"workspace": tmp_path / "ws", "quality": quality})
        self.spark = spark
        self.table: SilverTable = engine.silver_table(self.settings, name)
        engine.ensure_tables(spark, self.table)
        self.batches: dict[str, int] = {}

    def feed(self, input_name: str, frame: Any) -> BatchCounts:
        (spec,) = [s for s in self.table.build.inputs if s.label == input_name]
        ctx = RunContext(
            table=self.table,
            spec=spec,
            settings=self.settings,
            run_id="run-1",
            app_id=f"app-{self.table.contract.name}-{input_name}",
        )
        batch_id = self.batches.get(input_name, 0)
        self.batches[input_name] = batch_id + 1
        return engine.process_batch(frame, batch_id, ctx)

    def cdc(self, values: list[str]) -> BatchCounts:
        rows = [(f"k{offset}", value, 0, offset) for offset, value in enumerate(values)]
        return self.feed("cdc", self.spark.createDataFrame(rows, BRONZE_CDC))

    def rows(self, order: str) -> list[Any]:
        frame = self.spark.read.format("delta").load(self.table.path)
        return list(frame.orderBy(*order.split(",")).collect())

    def quarantine(self) -> dict[int | None, str]:
        rows = self.spark.read.format("delta").load(self.table.quarantine).collect()
        return {r["offset"]: r["reason"] for r in rows}


def _change(table: str, action: str, lsn: str, commit: str, row: list[dict[str, Any]]) -> str:
    change: dict[str, Any] = {"action": action, "lsn": lsn, "commit_lsn": commit,
                              "timestamp": "2024-01-01 10:00:00+00", "schema": "public", "table": table}  # fmt: skip
    change["identity" if action == "D" else "columns"] = row
    return json.dumps(change)


def _order_change(action: str, lsn: str, commit: str, status: str, updated: str, order_id: Any = 7) -> str:
    row = [
        {"name": "order_id", "type": "bigint", "value": order_id},
        {"name": "customer_id", "type": "bigint", "value": 1},
        {"name": "order_date", "type": "date", "value": "1997-01-01"},
        {"name": "status", "type": "text", "value": status},
        {"name": "total_amount", "type": "numeric(12,2)", "value": 12.5},
        {"name": "currency", "type": "text", "value": "USD"},
        {"name": "updated_at", "type": "timestamptz", "value": updated},
    ]
    return _change("orders", action, lsn, commit, row)


def test_cdc_parsing_types_values_and_quarantines_with_reasons(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    orders = Declared(spark, settings, tmp_path, "silver.retail_orders")
    values = [
        _order_change("I", "0/10", "0/18", "placed", "2024-01-01 10:00:00.5+00"),
        "{not json",
        json.dumps({"action": "X", "lsn": "0/1", "commit_lsn": "0/2", "table": "orders"}),
        _order_change("U", "zz", "0/18", "shipped", "2024-01-01 10:00:01+00"),
        _order_change("U", "0/20", "0/28", "shipped", "2024-01-01 10:00:01+00").replace("orders", "unknown"),
        _order_change("U", "0/30", "0/38", "shipped", "not a time"),
        _order_change("U", "0/40", "0/48", "shipped", "2024-01-01 10:00:01+00", order_id=None),
        json.dumps({"action": "I", "lsn": "0/50", "commit_lsn": "0/58"}),  # a change of no table
    ]
    counts = orders.cdc(values)
    assert orders.quarantine() == {1: "malformed_json", 2: "unknown_action", 3: "invalid_lsn",
                                   5: "invalid_value:updated_at", 6: "missing_key",
                                   7: "unknown_table"}  # fmt: skip
    # another table's change is not this table's input: it stays in bronze for that table's declaration
    assert (counts.input_rows, counts.applied, counts.quarantined) == (7, 1, 6)
    (row,) = orders.rows("order_id")
    assert row["total_amount"] == Decimal("12.50") and row["updated_at"] == datetime(
        2024, 1, 1, 10, 0, 0, 500000
    )
    assert row["order_date"] == date(1997, 1, 1) and row["_lsn"] == 0x10 and row["_source"] == "cdc"
    assert not row["_deleted"]


def test_latest_lsn_per_key_wins_and_deletes_are_tombstones(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    orders = Declared(spark, settings, tmp_path, "silver.retail_orders")
    counts = orders.cdc(
        [
            _order_change("I", "0/10", "0/18", "placed", "2024-01-01 10:00:00+00"),
            _order_change("U", "0/20", "0/28", "shipped", "2024-01-01 10:00:01+00"),
            _order_change("I", "0/10", "0/18", "placed", "2024-01-01 10:00:00+00"),  # re-delivered
            _order_change("I", "0/30", "0/38", "placed", "2024-01-01 10:00:02+00", order_id=8),
            # a delete carries the deleted row (REPLICA IDENTITY FULL): the same updated_at, a later LSN
            _order_change("D", "0/40", "0/48", "placed", "2024-01-01 10:00:02+00", order_id=8),
        ]
    )
    assert (counts.input_rows, counts.applied, counts.duplicates) == (5, 2, 3)
    latest = {r["order_id"]: r for r in orders.rows("order_id")}
    assert latest[7]["status"] == "shipped" and not latest[7]["_deleted"]
    assert latest[8]["_deleted"] and latest[8]["_lsn"] == 0x40
    # The insert re-delivered after the delete cannot bring the order back.
    orders.cdc([_order_change("I", "0/30", "0/38", "placed", "2024-01-01 10:00:02+00", order_id=8)])
    assert {r["order_id"]: r["_deleted"] for r in orders.rows("order_id")} == {7: False, 8: True}
    totals = engine.check_table(spark, orders.table)  # the audit balances, one row per key
    assert totals["input_rows"] == 6


EXTRACT_ORDERS = (
    "order_id bigint, customer_id bigint, order_date date, status string, total_amount decimal(12,2), "
    "currency string, updated_at timestamp, _extracted_at timestamp, _batch_id string, _source_table string"
)


def _extracted(spark: Any, *rows: tuple[int, str, datetime]) -> Any:
    values = [
        (order_id, 1, date(1997, 1, 1), status, Decimal("12.50"), "USD", at, at, "b1", "public.orders")
        for order_id, status, at in rows
    ]
    return spark.createDataFrame(values, EXTRACT_ORDERS)


def test_the_extract_and_cdc_on_the_same_key_agree_on_the_latest_version(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    orders = Declared(spark, settings, tmp_path, "silver.retail_orders")
    t0, t1, t2 = (datetime(2024, 1, 1, 10, 0, s) for s in (0, 1, 2))
    orders.feed("extract", _extracted(spark, (7, "placed", t0)))  # the initial state, from the extract
    orders.cdc([_order_change("U", "0/20", "0/28", "shipped", "2024-01-01 10:00:01+00")])
    first = orders.rows("order_id")[0]
    assert (first["status"], first["_source"], first["_lsn"]) == ("shipped", "cdc", 0x20)
    # The extract then reads the same version (no LSN) and an older one: neither changes the row.
    counts = orders.feed("extract", _extracted(spark, (7, "shipped", t1)))
    assert (counts.applied, counts.duplicates) == (0, 1)
    orders.feed("extract", _extracted(spark, (7, "placed", t0)))
    assert (orders.rows("order_id")[0]["_source"], orders.rows("order_id")[0]["status"]) == ("cdc", "shipped")
    # A newer version from the extract wins over the CDC row before it.
    orders.feed("extract", _extracted(spark, (7, "delivered", t2)))
    row = orders.rows("order_id")[0]
    assert (row["status"], row["_source"], row["_lsn"], row["_deleted"]) == (
        "delivered",
        "extract",
        None,
        False,
    )
    # CDC's delete of that version leaves a tombstone the extract's re-delivery cannot undo.
    orders.cdc([_order_change("D", "0/40", "0/48", "delivered", "2024-01-01 10:00:02+00")])
    orders.feed("extract", _extracted(spark, (7, "delivered", t2)))
    row = orders.rows("order_id")[0]
    assert (row["_deleted"], row["_source"]) == (True, "cdc")
    totals = engine.check_table(spark, orders.table)
    # a version that replaced an older one counts as a duplicate of its key: the table holds what was applied
    assert (totals["input_rows"], totals["applied"], totals["duplicates"]) == (7, 1, 6)


def _customer(
    action: str, lsn: str, customer_id: int, email: str, at: datetime, segment: str = "gold"
) -> str:
    row = [
        {"name": "customer_id", "type": "bigint", "value": customer_id},
        {"name": "name", "type": "text", "value": f"Customer {customer_id}"},
        {"name": "email", "type": "text", "value": email},
        {"name": "country", "type": "text", "value": "US"},
        {"name": "segment", "type": "text", "value": segment},
        {"name": "created_at", "type": "timestamptz", "value": "2024-01-01 00:00:00+00"},
        {"name": "updated_at", "type": "timestamptz", "value": at.strftime("%Y-%m-%d %H:%M:%S+00")},
    ]
    return _change("customers", action, lsn, lsn, row)


EXTRACT_CUSTOMERS = (
    "customer_id bigint, name string, email string, country string, segment string, created_at timestamp, "
    "updated_at timestamp, _extracted_at timestamp, _batch_id string, _source_table string"
)


def test_dim_customer_opens_a_version_per_change_and_keeps_its_invariants(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    dim = Declared(spark, settings, tmp_path, "silver.dim_customer")
    key = dim.table.tokenization_key
    t0, t1, t2, t3 = (datetime(2024, 1, 1, h) for h in (1, 2, 3, 4))
    created = datetime(2024, 1, 1)
    current = [(1, "Customer 1", "a@x", "US", "gold", created, t1, t1, "b0", "public.customers")]
    dim.feed("extract", spark.createDataFrame(current, EXTRACT_CUSTOMERS))  # the current row, valid from t1
    dim.cdc(
        [
            _customer("U", "0/10", 1, "a@x", t0),  # not newer than the current row: ignored
            _customer("U", "0/20", 1, "a2@x", t2),
            _customer("U", "0/20", 1, "a2@x", t2),  # re-delivered
            _customer("U", "0/30", 1, "a3@x", t3),
            _customer("I", "0/40", 2, "b@x", t1, segment="silver"),
            _customer("U", "0/50", 2, "b@x", t2, segment="silver"),  # same attributes: no new version
            _customer("D", "0/60", 3, "c@x", t3),  # deleted: not a version
        ]
    )
    rows = dim.rows("customer_id,valid_from")
    assert [
        (r["customer_id"], r["email"], r["valid_from"], r["valid_to"], r["is_current"]) for r in rows
    ] == [
        (1, token("a@x", key), t1, t2, False),  # closed where the next version opens
        (1, token("a2@x", key), t2, t3, False),
        (1, token("a3@x", key), t3, None, True),
        (2, token("b@x", key), t1, None, True),
    ]
    assert len({r["customer_key"] for r in rows}) == 4
    # A delete of a known customer keeps its last version current (orders still join to it).
    dim.cdc([_customer("D", "0/70", 2, "b@x", t2, segment="silver")])
    assert [(r["customer_id"], r["is_current"]) for r in dim.rows("customer_id,valid_from")][-1] == (2, True)
    # check_dimension's invariants, now the engine's: one current row per customer, history closed and
    # not overlapping, the audit balanced.
    totals = engine.check_table(spark, dim.table)
    assert totals["applied"] == 4 and totals["input_rows"] == 9
    # The same versions again (a replay under new batch ids) change nothing.
    dim.feed("extract", spark.createDataFrame(current, EXTRACT_CUSTOMERS))
    assert len(dim.rows("customer_id,valid_from")) == 4
    engine.check_table(spark, dim.table)
