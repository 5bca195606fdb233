"""The postgres extract on inline data: typed state, keyset SQL with typed literals, connections, the
registry's postgres entries, the snapshot diff and the position taken back from bronze (classic Spark)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.simulate.retail import retail_sources
from lakehouse.sources.postgres import (
    ExtractError,
    ExtractOutcome,
    ExtractState,
    PgColumn,
    TableShape,
    bronze_position,
    keyset_query,
    quote_identifier,
    raise_for_failures,
    read_state,
    select_list,
    snapshot_changes,
    snapshot_hashes,
    snapshot_query,
    spark_decimal,
    sql_literal,
    state_path,
    write_state,
)
from lakehouse.sources.postgres_connection import parse_endpoint, settings_endpoint
from lakehouse.sources.registry import PostgresCdcSource, PostgresTableSource, Registry, load_registry
from lakehouse.state import decode_typed, encode_typed, write_json

pytestmark = pytest.mark.unit

TS = datetime(2024, 3, 31, 2, 30, 0, 123456)
TSTZ = datetime(2024, 1, 1, 23, 59, 59, 999999, tzinfo=UTC)


def _shape(*columns: PgColumn, relation: str = '"sales"."readings"') -> TableShape:
    return TableShape(relation, {c.name: c for c in columns}, (frozenset(c.name for c in columns[1:]),))


READINGS = PostgresTableSource(
    name="readings",
    kind="postgres",
    table="sales.readings",
    key=["device", "reading_time"],
    watermark="ingested_at",
    bronze="readings",
)
READINGS_SHAPE = _shape(
    PgColumn("ingested_at", "timestamp with time zone", "timestamptz", not_null=False),
    PgColumn("device", "text", "text", collatable=True),
    PgColumn("reading_time", "timestamp without time zone", "timestamp"),
)


@pytest.mark.parametrize(
    "value",
    [
        True,
        -7,
        2**70,
        Decimal("1.50"),
        Decimal("-0.000000000000000000000001"),
        0.1,
        "O'Brien \\ ünï",
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        date(1999, 12, 31),
        TS,
        TSTZ,
        datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_typed_values_round_trip_exactly(value: Any) -> None:
    document = json.loads(json.dumps(encode_typed(value)))
    back = decode_typed(document)
    assert type(back) is type(value) and back == value and str(back) == str(value)


def test_typed_values_refuse_what_they_cannot_keep() -> None:
    with pytest.raises(DataError, match="bytes"):
        encode_typed(b"\x00")
    for bad in [{"type": "int", "value": "x"}, {"type": "color", "value": "red"}, [1], {"value": "1"}]:
        with pytest.raises(DataError):
            decode_typed(bad)
    with pytest.raises(DataError, match="offset"):
        decode_typed({"type": "timestamptz", "value": "2024-01-01T00:00:00"})


def test_extract_state_keeps_a_timestamp_key_typed(settings: Settings, tmp_path: Path) -> None:
    local = settings.model_copy(update={"workspace": tmp_path})
    state = ExtractState("readings", "app-1", 3, TSTZ, ("dev'1", TS))
    write_state(local, state)  # the bug: a datetime key stopped here with "not JSON serializable"
    document = json.loads(state_path(local, "readings").read_text())
    assert document["key"][1] == {"type": "timestamp", "value": "2024-03-31T02:30:00.123456"}
    back = read_state(local, "readings")
    assert (back.watermark, back.key, back.sequence, back.app_id) == (TSTZ, ("dev'1", TS), 3, "app-1")


def test_state_files_of_the_first_format_are_still_read(settings: Settings, tmp_path: Path) -> None:
    local = settings.model_copy(update={"workspace": tmp_path})
    legacy = {
        "source": "retail_order_items",
        "app_id": "extract-retail_order_items-abc",
        "sequence": 4,
        "watermark": "2024-10-01T08:00:00.000000Z",
        "key": [7, 2],
        "committed_at": "2024-10-01T08:00:01+00:00",
    }
    write_json(state_path(local, "retail_order_items"), legacy)
    state = read_state(local, "retail_order_items")
    assert (state.watermark, state.key, state.sequence, state.mode) == (
        legacy["watermark"],
        (7, 2),
        4,
        "incremental",
    )
    (items,) = [s for s in retail_sources() if s.table == "order_items"]
    shape = _shape(
        PgColumn("updated_at", "timestamp with time zone", "timestamptz"),
        PgColumn("order_id", "bigint", "int"),
        PgColumn("line_no", "integer", "int"),
        relation='"order_items"',
    )
    assert "> ('2024-10-01T08:00:00.000000Z'::timestamp with time zone, '7'::bigint, '2'::integer)" in (
        keyset_query(items, shape, state, 10)
    )
    write_json(state_path(local, "broken"), {"source": "broken", "sequence": "x"})
    with pytest.raises(DataError, match="damaged"):
        read_state(local, "broken")


def test_keyset_query_uses_typed_literals_and_byte_order_for_text() -> None:
    first = keyset_query(READINGS, READINGS_SHAPE, ExtractState.fresh("readings"), 10)
    in_span = (  # a position Spark could not hold is never read: a watermark at infinity would stall
        "\"{}\" BETWEEN '0001-01-01 00:00:00{z}'::timestamp{tz} AND '9999-12-31 23:59:59.999999{z}'::timestamp{tz}"
    )
    assert first == (
        f'SELECT {select_list(READINGS_SHAPE)} FROM "sales"."readings" WHERE "ingested_at" IS NOT NULL '
        f"AND {in_span.format('ingested_at', z='+00', tz='tz')} "
        f"AND {in_span.format('reading_time', z='', tz='')} "
        'ORDER BY "ingested_at", "device" COLLATE "C", "reading_time" LIMIT 10'
    )
    later = keyset_query(READINGS, READINGS_SHAPE, ExtractState("readings", "a", 2, TSTZ, ("O'Brien", TS)), 5)
    assert (
        '("ingested_at", "device" COLLATE "C", "reading_time") > '
        "('2024-01-01T23:59:59.999999+00:00'::timestamp with time zone, 'O''Brien'::text, "
        "'2024-03-31T02:30:00.123456'::timestamp without time zone)"
    ) in later
    with pytest.raises(ConfigError, match="reset"):
        keyset_query(READINGS, READINGS_SHAPE, ExtractState("readings", "a", 2, TSTZ, ("x",)), 5)
    with pytest.raises(ConfigError, match="page_size"):
        keyset_query(READINGS, READINGS_SHAPE, ExtractState.fresh("readings"), 0)


def test_keyset_query_names_a_missing_column_or_an_unsupported_type() -> None:
    no_device = _shape(*[c for c in READINGS_SHAPE.columns.values() if c.name != "device"])
    with pytest.raises(ConfigError, match=r"'readings'.*no column 'device' \(its key\)"):
        keyset_query(READINGS, no_device, ExtractState.fresh("readings"), 10)
    enum = _shape(
        READINGS_SHAPE.columns["ingested_at"],
        PgColumn("device", "device_kind", None),
        READINGS_SHAPE.columns["reading_time"],
    )
    with pytest.raises(ConfigError, match="device_kind"):
        keyset_query(READINGS, enum, ExtractState.fresh("readings"), 10)


def test_sql_literals_are_quoted_typed_and_escaped() -> None:
    assert sql_literal("O'Brien") == "'O''Brien'"
    assert sql_literal(42) == "42"
    assert sql_literal(datetime(2024, 1, 1, 12)) == "'2024-01-01T12:00:00'"
    assert sql_literal(Decimal("1.50"), "numeric(10,2)") == "'1.50'::numeric(10,2)"
    assert sql_literal(1.5, "double precision") == "'1.5'::double precision"
    key = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert sql_literal(key, "uuid") == "'12345678-1234-5678-1234-567812345678'::uuid"
    assert sql_literal("a\\'b", "text") == "E'a\\\\''b'::text"  # right whatever standard_conforming_strings
    with pytest.raises(DataError):
        sql_literal(1.5)  # no exact untyped literal for a float
    with pytest.raises(DataError, match="NUL"):
        sql_literal("a\x00", "text")


def test_identifiers_are_quoted_as_written() -> None:
    assert quote_identifier("sales.Orders") == '"sales"."Orders"'
    assert quote_identifier('we"ird') == '"we""ird"'
    for bad in ["", "a.b.c", "a.", "x\x00"]:
        with pytest.raises(ConfigError):
            quote_identifier(bad)


def test_a_connection_url_becomes_psycopg_and_jdbc_settings() -> None:
    endpoint = parse_endpoint(
        "postgresql://reader:p%40ss%2Fword@db1:6543,db2/sales?sslmode=require&application_name=lh"
    )
    assert endpoint.jdbc_url == "jdbc:postgresql://db1:6543,db2:5432/sales?ApplicationName=lh&sslmode=require"
    assert (endpoint.user, endpoint.password, endpoint.label) == (
        "reader",
        "p@ss/word",
        "db1:6543,db2:5432/sales",
    )
    assert "p@ss" not in repr(endpoint) and "p@ss" not in endpoint.label
    assert endpoint.mask("auth failed for p@ss/word") == "auth failed for ***"
    options = endpoint.jdbc_options()
    assert options["password"] == "p@ss/word" and "UTC" in options["sessionInitStatement"]
    keywords = parse_endpoint("host=db port=5433 dbname=orders user=u connect_timeout=3")
    assert keywords.jdbc_url == "jdbc:postgresql://db:5433/orders?connectTimeout=3"
    with pytest.raises(ConfigError, match="Unix socket"):
        parse_endpoint("host=/var/run/postgresql dbname=x")
    with pytest.raises(ConfigError, match="'keepalives'"):
        parse_endpoint("postgresql://u@db/x?keepalives=1")
    with pytest.raises(ConfigError, match="not a libpq"):
        parse_endpoint("postgresql://db/x?=")
    with pytest.raises(ConfigError, match="not a number"):
        parse_endpoint("postgresql://db:x/y")


def test_the_default_connection_is_the_environment_postgres(settings: Settings) -> None:
    endpoint = settings_endpoint(settings)
    assert endpoint.jdbc_url == settings.postgres.jdbc_url
    assert endpoint.label.endswith(f":{settings.postgres.port}/{settings.postgres.database}")


def test_registry_postgres_entries(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERS_DB_URL", "postgresql://reader:topsecret@db.example:5432/sales")
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n"
        "  orders: {kind: postgres, connection: '${ORDERS_DB_URL}', table: sales.Orders, key: [order_id],"
        " bronze: orders}\n"
        "  penguins: {kind: postgres, mode: snapshot, table: penguins, key: [species, sample_number],"
        " bronze: penguins}\n"
    )
    registry = load_registry(settings, path)
    source, snapshot = registry.get("orders"), registry.get("penguins")
    assert isinstance(source, PostgresTableSource) and isinstance(snapshot, PostgresTableSource)
    assert source.schema_table == ("sales", "Orders") and source.mode == "incremental"
    assert source.watermark == "updated_at"
    assert "topsecret" not in repr(source) and "topsecret" not in str(source.model_dump())
    assert source.connection is not None and "topsecret" in source.connection.get_secret_value()
    assert snapshot.mode == "snapshot" and snapshot.schema_table == ("public", "penguins")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("table: a.b.c, key: [id]", "schema.table"),
        ("table: t, key: []", "primary key"),
        ("table: t, key: [id, id]", "twice"),
        ("table: t, key: [id], mode: snapshot, watermark: v", "watermark is for mode incremental"),
        ("table: t, key: [id], mode: full", "sources.orders.postgres.mode"),
        ("table: t, key: [id], watermark: id", "also a key"),
        ("table: t, key: [id], connection: 'postgresql://u:topsecret@db:x/y'", "not a number.*not shown"),
        ("table: t, key: [id], connection: 'postgresql://u:topsecret@db/y?='", "not shown"),
    ],
)
def test_bad_postgres_entries_are_named_without_their_secrets(
    settings: Settings, tmp_path: Path, fields: str, message: str
) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(f"sources:\n  orders: {{kind: postgres, bronze: orders, {fields}}}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_registry(settings, path)
    assert "sources.yaml" in str(caught.value) and "topsecret" not in str(caught.value)


def test_registry_cdc_entries_take_a_connection_and_any_tables() -> None:
    registry = Registry.model_validate(
        {"sources": {"cdc": {"kind": "postgres_cdc", "slot": "orders_cdc", "topic": "t", "bronze": "cdc"}}}
    )
    cdc = registry.sources["cdc"]
    assert isinstance(cdc, PostgresCdcSource) and cdc.tables == [] and cdc.connection is None
    with pytest.raises(ValueError, match="slot"):
        Registry.model_validate(
            {"sources": {"cdc": {"kind": "postgres_cdc", "slot": "Bad-Slot", "topic": "t", "bronze": "cdc"}}}
        )


def test_snapshot_query_hashes_each_row_and_leaves_out_keys_spark_cannot_hold() -> None:
    day = PgColumn("day", "date", "date")
    shape = TableShape('"xp"."penguins"', {"day": day})
    query = snapshot_query(shape, [day])
    assert query.startswith(f'SELECT {select_list(shape)}, md5(ROW(t.*)::text) AS "_row_hash" FROM')
    assert query.endswith(" AS t WHERE \"day\" BETWEEN '0001-01-01'::date AND '9999-12-31'::date")


def test_spark_reads_a_numeric_as_a_bounded_decimal() -> None:
    # The bound is what decides which numerics are kept aside as text (sources.postgres.representable).
    assert spark_decimal("numeric") == (38, 18)
    assert spark_decimal("numeric(12, 2)") == (12, 2)
    assert spark_decimal("numeric(60,30)") == (38, 30)
    assert spark_decimal("numeric(5,-2)") == (5, 0)
    assert spark_decimal("money_amount") == (38, 18)  # a domain: bounded as the widest


def test_failures_are_named_together() -> None:
    outcomes = [
        ExtractOutcome("good"),
        ExtractOutcome("bad_table", error="postgres source 'bad_table': table 'x' does not exist"),
        ExtractOutcome("bad_login", error="postgres source 'bad_login': cannot connect"),
    ]
    raise_for_failures(outcomes[:1])
    with pytest.raises(
        ExtractError, match=r"2 of 3 postgres sources failed \(1 extracted\).*bad_table.*bad_login"
    ):
        raise_for_failures(outcomes)


# --- Spark: the snapshot diff and the position, on inline frames ---------------------------------------


def test_snapshot_changes_lands_inserts_updates_and_tombstones(spark: Any) -> None:
    previous = spark.createDataFrame(
        [("a", 1, "h1"), ("a", 2, "h2"), ("b", 1, "h3")], "species string, n int, _prev_hash string"
    )
    current = spark.createDataFrame(
        [("a", 1, 10, "h1"), ("a", 2, 21, "h2-new"), ("c", 1, 30, "h4")],
        "species string, n int, mass int, _row_hash string",
    )
    rows = {
        (r["species"], r["n"]): r for r in snapshot_changes(current, previous, ["species", "n"]).collect()
    }
    assert {k: r["_op"] for k, r in rows.items()} == {
        ("a", 2): "update",
        ("b", 1): "delete",
        ("c", 1): "insert",
    }
    assert (
        rows[("b", 1)]["_deleted"] and rows[("b", 1)]["mass"] is None and rows[("b", 1)]["_row_hash"] is None
    )
    assert rows[("a", 2)]["mass"] == 21 and not rows[("a", 2)]["_deleted"]
    unchanged = snapshot_changes(
        current, current.withColumnRenamed("_row_hash", "_prev_hash").drop("mass"), ["species", "n"]
    )
    assert unchanged.count() == 0


def test_snapshot_hashes_follow_the_latest_row_per_key(spark: Any) -> None:
    bronze = spark.createDataFrame(
        [
            ("a", "h1", False, 1),
            ("a", "h1b", False, 3),  # updated in snapshot 3
            ("b", "h2", False, 1),
            ("b", None, True, 2),  # deleted in 2
            ("c", "h3", False, 1),
            ("c", None, True, 2),
            ("c", "h3b", False, 4),  # deleted, then back
        ],
        "k string, _row_hash string, _deleted boolean, _snapshot bigint",
    )
    live, last = snapshot_hashes(bronze, ["k"])
    assert last == 4
    assert {r["k"]: r["_prev_hash"] for r in live.collect()} == {"a": "h1b", "c": "h3b"}


def test_bronze_position_reads_back_exact_typed_values(spark: Any) -> None:
    key = uuid.UUID("f0000000-0000-0000-0000-000000000001")
    frame = spark.createDataFrame(
        [
            (TSTZ, "Z", TS, Decimal("2.000001"), str(key)),
            (TSTZ, "a", TS - timedelta(microseconds=1), Decimal("9.5"), str(uuid.uuid4())),
            (TSTZ - timedelta(microseconds=1), "ä", TS, Decimal("1"), str(uuid.uuid4())),
        ],
        "w timestamp, name string, t timestamp_ntz, amount decimal(20,6), id string",
    )
    columns = [
        PgColumn("w", "timestamp with time zone", "timestamptz"),
        PgColumn("name", "text", "text", collatable=True),
        PgColumn("t", "timestamp without time zone", "timestamp"),
        PgColumn("amount", "numeric(20,6)", "numeric"),
        PgColumn("id", "uuid", "uuid"),
    ]
    rows, position = bronze_position(frame, columns)
    # Byte order, as COLLATE "C": "a" (0x61) sorts after "Z" (0x5A); the newest watermark wins first.
    assert rows == 3 and position == (
        TSTZ,
        "a",
        TS - timedelta(microseconds=1),
        Decimal("9.500000"),
        position[4],
    )
    assert isinstance(position[4], uuid.UUID)
    assert bronze_position(frame.limit(0), columns) == (0, None)
