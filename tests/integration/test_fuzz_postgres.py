"""PostgreSQL rows with values Spark cannot hold, through the extract and the silver engine, accounted.

PostgreSQL keeps dates and timestamps from 4713 BC to 294276 AD plus ±infinity, numerics with NaN, ±Infinity
and a thousand digits; Spark keeps years 1–9999 and decimals of 38 digits. Before, one such row failed its
source's whole read (``ArithmeticException: long overflow``, ``Bad value for type BigDecimal``,
``NUMERIC_VALUE_OUT_OF_RANGE``) or landed a value that was not the source's (infinity as 9999-12-31): a
poison row. Now each lands in bronze with the value NULL and its exact text kept (``_unrepresentable``),
silver quarantines it as ``unrepresentable:<column>``, and the rows around it flow. A row whose watermark
cannot be kept is counted by the extract, never silently skipped, and never moves the position.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lakehouse.config import Settings
from lakehouse.governance.catalog import TableContract
from lakehouse.silver import engine
from lakehouse.silver.engine import SilverTable
from lakehouse.sources.postgres import check_bronze, extract_incremental, extract_snapshot
from lakehouse.sources.registry import PostgresTableSource

pytestmark = pytest.mark.integration

COLUMNS = (
    "id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, seen_at timestamp, shipped_at timestamptz, "
    "day date, amount numeric, price numeric(10,2), ratio double precision, note text, span interval, "
    "blob bytea"
)
HUGE = "ünïcode " * 115_000  # ~1 MB of text in one value

# category: (column, SQL value, expected outcome); every category is several rows.
CASES: dict[str, tuple[str | None, str, str]] = {
    "valid": (None, "", "silver"),
    "timestamp_infinity": ("seen_at", "'infinity'", "unrepresentable:seen_at"),
    "timestamp_minus_infinity": ("seen_at", "'-infinity'", "unrepresentable:seen_at"),
    "timestamp_before_year_1": ("seen_at", "'4713-01-01 00:00:00 BC'", "unrepresentable:seen_at"),
    "timestamp_after_9999": ("seen_at", "'294276-12-31 23:59:59'", "unrepresentable:seen_at"),
    "timestamptz_infinity": ("shipped_at", "'infinity'", "unrepresentable:shipped_at"),
    "timestamptz_after_9999": ("shipped_at", "'10000-01-01 00:00:00+00'", "unrepresentable:shipped_at"),
    "date_infinity": ("day", "'infinity'", "unrepresentable:day"),
    "date_far_future": ("day", "'5874897-12-31'", "unrepresentable:day"),
    "date_before_year_1": ("day", "'4713-01-01 BC'", "unrepresentable:day"),
    "numeric_nan": ("amount", "'NaN'", "unrepresentable:amount"),
    "numeric_infinity": ("amount", "'Infinity'", "unrepresentable:amount"),
    "numeric_thousand_digits": ("amount", f"'{'9' * 1000}'", "unrepresentable:amount"),
    "numeric_beyond_decimal_38_18": ("amount", "'100000000000000000000'", "unrepresentable:amount"),
    "bounded_numeric_nan": ("price", "'NaN'", "unrepresentable:price"),
    "numeric_tiny": ("amount", "'1e-130'", "silver"),  # rounded to decimal(38,18), as Spark's reader does
    "double_nan_and_infinity": ("ratio", "'-Infinity'", "silver"),  # a double holds them
    "huge_text": ("note", f"'{HUGE}'", "silver"),
    "control_and_rtl_text": ("note", "E'\\x01\\x1b[31m\\u202eevil\\t'' OR 1=1; --'", "silver"),
    "interval_extreme": ("span", "'178000000 years'", "silver"),
    "bytea_binary": ("blob", "'\\x00ff00fe'::bytea", "silver"),
    "all_null": ("*", "NULL", "silver"),
}
# `make fuzz` sends 600 rows of each category (13,200), of which still only three carry the ~1 MB text
PER_CATEGORY = int(os.environ.get("LAKEHOUSE_FUZZ_PER_CATEGORY", "3"))
PAGE_SIZE = 25 if PER_CATEGORY <= 3 else 2_000  # small pages cut through the categories
NULLABLE = ("seen_at", "shipped_at", "day", "amount", "price", "ratio", "note", "span", "blob")
VALID = {
    "seen_at": "'2024-05-01 10:00:00'",
    "shipped_at": "'2024-05-02 10:00:00+00'",
    "day": "'2024-05-01'",
    "amount": "'12.5'",
    "price": "'9.99'",
    "ratio": "0.5",
    "note": "'fine'",
    "span": "'1 day'",
    "blob": "'\\x01'::bytea",
}


def _load(url: str, table: str) -> dict[int, str]:
    """The corpus as rows of ``table``; each id's category."""
    category_of: dict[int, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} ({COLUMNS})")  # type: ignore[arg-type]
        for category, (column, value, _) in CASES.items():
            for n in range(PER_CATEGORY):
                row_id = len(category_of) + 1
                values = dict(VALID)
                if category == "huge_text" and n >= 3:
                    value = "'" + "long text " * 2_000 + "'"
                if column == "*":
                    values = dict.fromkeys(NULLABLE, "NULL")
                elif column is not None:
                    values[column] = value
                names = ", ".join(["id", "updated_at", *values])
                version = f"'2024-06-01'::timestamptz + interval '{row_id} s'"
                given = ", ".join([str(row_id), version, *values.values()])
                conn.execute(f"INSERT INTO {table} ({names}) VALUES ({given})")  # type: ignore[arg-type]
                category_of[row_id] = category
    return category_of


def _silver(folder: Path, bronze: str) -> SilverTable:
    """A silver table over the extract, declared as a user would (contract with a build section)."""
    contract = TableContract.model_validate(
        {
            "table": "silver.extremes",
            "owner": "tests",
            "description": "Rows with values at the edges of what PostgreSQL keeps.",
            "classification": "internal",
            "build": {
                "inputs": [{"table": "bronze.extremes", "name": "extract", "keep": ["_batch_id"]}],
                "key": ["id"],
                "sequence": ["updated_at"],
                "apply": "upsert",
            },
            "columns": [
                {"name": "id", "type": "long"},
                {"name": "updated_at", "type": "timestamp"},
                {"name": "seen_at", "type": "timestamp"},
                {"name": "shipped_at", "type": "timestamp"},
                {"name": "day", "type": "date"},
                {"name": "amount", "type": "decimal(38,18)"},
                {"name": "price", "type": "decimal(10,2)"},
                {"name": "ratio", "type": "double"},
                {"name": "note", "type": "string"},
                {"name": "span", "type": "string"},
                {"name": "blob", "type": "binary"},
                {"name": "_deleted", "type": "boolean"},
                {"name": "_source", "type": "string"},
                {"name": "_merged_at", "type": "timestamp"},
            ],
        }
    )
    assert contract.build is not None
    return SilverTable(
        contract=contract,
        build=contract.build,
        path=str(folder / "silver"),
        quarantine=str(folder / "quarantine"),
        audit=str(folder / "silver_batches"),
        checkpoints=str(folder / "checkpoints"),
        tokenization_key="test-key",
        input_paths={"extract": bronze},
        reference_paths={},
    )


def test_values_spark_cannot_hold_land_as_text_and_are_quarantined(
    postgres: Settings, spark: Any, own_db: str, tmp_path: Path
) -> None:
    table = f"extremes_{uuid.uuid4().hex[:6]}"
    category_of = _load(own_db, table)
    # A row whose watermark Spark cannot hold: no position could keep it, so it is counted, not read.
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} (id, updated_at) VALUES (0, 'infinity')")  # type: ignore[arg-type]
    source = PostgresTableSource(
        name=f"it_{table}",
        kind="postgres",
        connection=own_db,  # type: ignore[arg-type]
        table=table,
        key=["id"],
        watermark="updated_at",
        bronze=f"it_{table}",
    )
    report = extract_incremental(spark, postgres, source, page_size=PAGE_SIZE)  # pages cut through the cases
    assert report.rows == len(category_of) and report.null_positions == 1
    assert report.watermark.year == 2024  # the position never moved to infinity
    check_bronze(spark, postgres, source)
    assert extract_incremental(spark, postgres, source, page_size=PAGE_SIZE).rows == 0  # and nothing re-read

    bronze_path = postgres.table_path("bronze", source.bronze)
    bronze = {r["id"]: r for r in spark.read.format("delta").load(bronze_path).collect()}
    with psycopg.connect(own_db, autocommit=True) as conn:
        text_of = {  # each row's values as PostgreSQL writes them
            r[0]: dict(zip(NULLABLE, r[1:], strict=True))
            for r in conn.execute(f"SELECT id, {', '.join(f'{c}::text' for c in NULLABLE)} FROM {table}")  # type: ignore[arg-type]
        }
    for row_id, category in category_of.items():
        column, _, outcome = CASES[category]
        kept = json.loads(bronze[row_id]["_unrepresentable"] or "{}")
        if outcome.startswith("unrepresentable:"):
            assert column is not None and bronze[row_id][column] is None
            assert kept == {column: text_of[row_id][column]}, (category, kept)
        else:
            assert kept == {}, (category, kept)
    first_of = {category: min(i for i, c in category_of.items() if c == category) for category in CASES}
    assert len(bronze[first_of["huge_text"]]["note"]) == len(HUGE)

    silver = _silver(tmp_path, bronze_path)
    engine.build_table(spark, postgres, silver.name, table=silver, quality=False)
    totals = engine.check_table(spark, silver)
    landed = {r["id"] for r in spark.read.format("delta").load(silver.path).select("id").collect()}
    quarantined = {
        r["id"]: (r["reason"], r["record"])
        for r in spark.read.format("delta").load(silver.quarantine).select("id", "reason", "record").collect()
    }
    wrong: Counter[tuple[str, str]] = Counter()
    for row_id, category in category_of.items():
        outcome = "silver" if row_id in landed else quarantined.get(row_id, ("lost", ""))[0]
        if outcome != CASES[category][2]:
            wrong[(category, outcome)] += 1
    assert wrong == Counter(), wrong
    print(
        f"\npostgres edge values: {len(category_of) + 1} rows in {len(CASES)} categories, bronze "
        f"{len(bronze)}, kept as text {sum(1 for r in bronze.values() if r['_unrepresentable'])}, silver "
        f"{len(landed)}, quarantined {Counter(r for r, _ in quarantined.values())}, counted by the extract "
        f"{report.null_positions}, lost {len(category_of) - len(landed) - len(quarantined)}"
    )
    # sent = silver + quarantine + counted by the extract: nothing else, nothing twice
    assert totals["input_rows"] == len(category_of) == len(landed) + len(quarantined)
    assert len(landed & set(quarantined)) == 0
    # the quarantined record keeps the source's text of the value
    assert "9" * 1000 in quarantined[first_of["numeric_thousand_digits"]][1]


def test_a_snapshot_key_spark_cannot_hold_is_counted_and_the_rest_lands(
    postgres: Settings, spark: Any, own_db: str
) -> None:
    table = f"days_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (day date PRIMARY KEY, seen timestamp, n numeric)")  # type: ignore[arg-type]
        conn.execute(
            f"INSERT INTO {table} VALUES ('2024-01-01', 'infinity', 'NaN'), ('2024-01-02', now(), 1), "  # type: ignore[arg-type]
            "('infinity', now(), 2)"
        )
    source = PostgresTableSource(
        name=f"it_{table}",
        kind="postgres",
        mode="snapshot",
        connection=own_db,  # type: ignore[arg-type]
        table=table,
        key=["day"],
        bronze=f"it_{table}",
    )
    report = extract_snapshot(spark, postgres, source)
    assert (report.inserted, report.null_positions) == (2, 1)
    rows = {
        str(r["day"]): r
        for r in spark.read.format("delta").load(postgres.table_path("bronze", source.bronze)).collect()
    }
    assert set(rows) == {"2024-01-01", "2024-01-02"}
    assert json.loads(rows["2024-01-01"]["_unrepresentable"]) == {"n": "NaN", "seen": "infinity"}
    assert rows["2024-01-02"]["_unrepresentable"] is None
    assert extract_snapshot(spark, postgres, source).unchanged
