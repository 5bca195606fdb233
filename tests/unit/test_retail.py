"""Retail source and silver logic on inline data: CDNOW parsing, order splitting, the change plan, wal2json
decoding, CDC parsing/quarantine, latest-per-key and SCD2 staging (the extract's SQL and state:
test_postgres_extract.py)."""

from __future__ import annotations

import json
import random
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest

from lakehouse.errors import ConfigError, DataError
from lakehouse.silver.retail import (
    classify_cdc,
    customer_versions,
    latest_per_key,
    scd2_rows,
    typed_changes,
)
from lakehouse.sources.cdc import decode_transactions, lsn_to_int, qualified_tables, record_key
from lakehouse.sources.postgres import (
    RETAIL_TABLES,
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


def _bronze(spark: Any, values: list[str]) -> Any:
    rows = [(value, 0, offset) for offset, value in enumerate(values)]
    return spark.createDataFrame(rows, "value string, partition int, offset long")


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
    change = {"action": action, "lsn": lsn, "commit_lsn": commit, "timestamp": "2024-01-01 10:00:00+00",
              "schema": "public", "table": "orders", "pk": [{"name": "order_id", "type": "bigint"}]}  # fmt: skip
    change["identity" if action == "D" else "columns"] = row
    return json.dumps(change)


def test_cdc_parsing_types_values_and_quarantines_with_reasons(spark: Any) -> None:
    values = [
        _order_change("I", "0/10", "0/18", "placed", "2024-01-01 10:00:00.5+00"),
        "{not json",
        json.dumps({"action": "X", "lsn": "0/1", "commit_lsn": "0/2", "table": "orders"}),
        _order_change("U", "zz", "0/18", "shipped", "2024-01-01 10:00:01+00"),
        _order_change("U", "0/20", "0/28", "shipped", "2024-01-01 10:00:01+00").replace("orders", "unknown"),
        _order_change("U", "0/30", "0/38", "shipped", "not a time"),
        _order_change("U", "0/40", "0/48", "shipped", "2024-01-01 10:00:01+00", order_id=None),
    ]
    classified = classify_cdc(_bronze(spark, values))
    generic = {r["source_offset"]: r["reason"] for r in classified.collect()}
    assert generic == {0: None, 1: "malformed_json", 2: "unknown_action", 3: "invalid_lsn",
                       4: "unknown_table", 5: None, 6: None}  # fmt: skip
    typed = {r["source_offset"]: r for r in typed_changes(classified, RETAIL_TABLES["orders"]).collect()}
    assert typed[0]["reason"] is None and typed[0]["total_amount"] == Decimal("12.50")
    assert typed[0]["updated_at"] == datetime(2024, 1, 1, 10, 0, 0, 500000)
    assert typed[0]["order_date"] == date(1997, 1, 1) and typed[0]["_lsn"] == 0x10
    assert typed[5]["reason"] == "missing_version"
    assert typed[6]["reason"] == "missing_key"


def test_latest_lsn_per_key_wins_and_deletes_are_tombstones(spark: Any) -> None:
    values = [
        _order_change("I", "0/10", "0/18", "placed", "2024-01-01 10:00:00+00"),
        _order_change("U", "0/20", "0/28", "shipped", "2024-01-01 10:00:01+00"),
        _order_change("I", "0/10", "0/18", "placed", "2024-01-01 10:00:00+00"),  # re-delivered
        _order_change("I", "0/30", "0/38", "placed", "2024-01-01 10:00:02+00", order_id=8),
        _order_change("D", "0/40", "0/48", "placed", "2024-01-01 10:00:02+00", order_id=8),
    ]
    typed = typed_changes(classify_cdc(_bronze(spark, values)), RETAIL_TABLES["orders"])
    latest = {
        r["order_id"]: r for r in latest_per_key(typed, ["order_id"], ["_commit_lsn", "_lsn"]).collect()
    }
    assert latest[7]["status"] == "shipped" and not latest[7]["_deleted"]
    assert latest[8]["_deleted"] and latest[8]["_lsn"] == 0x40


def test_scd2_staging_opens_new_versions_and_closes_the_current_row(spark: Any) -> None:
    schema = "customer_id bigint, name string, email string, country string, segment string, updated_at timestamp, _deleted boolean, _lsn bigint"
    t0, t1, t2, t3 = (datetime(2024, 1, 1, h) for h in (1, 2, 3, 4))
    changes = spark.createDataFrame(
        [
            (1, "Ada", "a@x", "US", "gold", t0, False, 1),  # not newer than the current row: ignored
            (1, "Ada", "a2@x", "US", "gold", t2, False, 3),
            (1, "Ada", "a2@x", "US", "gold", t2, False, 3),  # re-delivered
            (1, "Ada", "a3@x", "US", "gold", t3, False, 4),
            (2, "Ben", "b@x", "DE", "silver", t1, False, 2),
            (2, "Ben", "b@x", "DE", "silver", t2, False, 5),  # same attributes: no new version
            (3, "Cy", "c@x", "FR", "standard", t3, True, 6),  # deleted: not a version
        ],
        schema,
    )
    current = spark.createDataFrame(
        [(11, 1, "Ada", "a@x", "US", "gold", t1, None, True)],
        "customer_key bigint, customer_id bigint, name string, email string, country string, segment string, "
        "valid_from timestamp, valid_to timestamp, is_current boolean",
    )
    staged = scd2_rows(customer_versions(changes), current).collect()
    closings = [r for r in staged if r["merge_key"] is not None]
    opened = sorted(
        (r for r in staged if r["merge_key"] is None), key=lambda r: (r["customer_id"], r["valid_from"])
    )
    assert [(r["merge_key"], r["close_at"]) for r in closings] == [(1, t2)]
    assert [
        (r["customer_id"], r["email"], r["valid_from"], r["valid_to"], r["is_current"]) for r in opened
    ] == [
        (1, "a2@x", t2, t3, False),
        (1, "a3@x", t3, None, True),
        (2, "b@x", t1, None, True),
    ]
    assert len({r["customer_key"] for r in opened}) == 3
