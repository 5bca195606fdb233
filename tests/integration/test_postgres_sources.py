"""Postgres sources of the user's own database on the real PostgreSQL and Spark: a connection of their own,
schema-qualified tables, keys of any type kept exactly across runs, snapshot change detection on a real
dataset (palmerpenguins), one failing source isolated from the others, and CDC of any tables."""

from __future__ import annotations

import csv
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.sources.cdc import drop_slot, run_cdc
from lakehouse.sources.postgres import (
    ExtractError,
    check_bronze,
    extract_incremental,
    extract_snapshot,
    extract_sources,
    raise_for_failures,
    read_state,
    source_fingerprint,
    state_path,
)
from lakehouse.sources.registry import PostgresCdcSource, PostgresTableSource
from lakehouse.state import write_json

pytestmark = pytest.mark.integration


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _sql(url: str, *statements: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        result: list[tuple[Any, ...]] = []
        for statement in statements:
            cursor = conn.execute(statement)  # type: ignore[arg-type]
            result = cursor.fetchall() if cursor.description else []
        return result


def _bronze(spark: Any, settings: Settings, source: PostgresTableSource) -> Any:
    return spark.read.format("delta").load(settings.table_path("bronze", source.bronze))


# --- incremental: a composite key with a timestamp, and numeric + uuid ------------------------------------

DEVICES = ["alpha", "Beta", "beta", "O'Brien", "Zürich", "z z"]  # case, quote, non-ASCII, space


def test_a_timestamp_key_pages_exactly_once_across_runs(postgres: Settings, spark: Any, own_db: str) -> None:
    schema = f"it_sensors_{_tag()}"
    t0 = datetime(2024, 3, 31, 1, 59, 59, 999_999)  # microseconds, and a wall time in a DST change
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[arg-type]
        conn.execute(
            f'CREATE TABLE "{schema}".readings (device text, reading_time timestamp, '  # type: ignore[arg-type]
            "value double precision, ingested_at timestamptz NOT NULL, PRIMARY KEY (device, reading_time))"
        )
        # Every row shares one ingested_at (a bulk load): the key alone orders the pages.
        conn.execute(
            f"INSERT INTO \"{schema}\".readings SELECT d, %s::timestamp + i * interval '7919 microseconds', "  # type: ignore[arg-type]
            "i / 3.0, %s FROM generate_series(1, 20) i, unnest(%s::text[]) d",
            (t0, datetime(2024, 4, 1, tzinfo=UTC), DEVICES),
        )
    source = PostgresTableSource(
        name=f"it_readings_{_tag()}",
        kind="postgres",
        connection=own_db,  # type: ignore[arg-type]
        table=f"{schema}.readings",
        key=["device", "reading_time"],
        watermark="ingested_at",
        bronze=f"it_readings_{_tag()}",
    )
    first = extract_incremental(spark, postgres, source, page_size=25)
    assert (first.rows, first.pages) == (120, 5)  # 25 × 4 + 20: page boundaries fall inside one watermark
    again = extract_incremental(spark, postgres, source, page_size=25)
    assert again.rows == 0 and again.table_version == first.table_version  # nothing new: no commit at all

    # An update moves rows forward; new rows arrive with the same new ingested_at.
    _sql(
        own_db,
        f"UPDATE \"{schema}\".readings SET value = -value, ingested_at = '2024-04-02 00:00:00.000001+00' "
        "WHERE device IN ('Beta', 'Zürich') AND reading_time < timestamp '2024-03-31 02:00:00.05'",
        f"INSERT INTO \"{schema}\".readings SELECT d, timestamp '2024-03-31 03:00:00' + i * interval '1 second',"
        " i, '2024-04-02 00:00:00.000001+00' FROM generate_series(1, 7) i, unnest(ARRAY['alpha', 'new']) d",
    )
    changed = _sql(own_db, f"SELECT count(*) FROM \"{schema}\".readings WHERE ingested_at > '2024-04-01'")[0][
        0
    ]
    third = extract_incremental(spark, postgres, source, page_size=25)
    assert third.rows == changed and changed > 14
    assert extract_incremental(spark, postgres, source, page_size=25).rows == 0

    bronze = _bronze(spark, postgres, source)
    version = [
        "device",
        F.date_format("reading_time", "yyyy-MM-dd HH:mm:ss.SSSSSS").alias("t"),
        "ingested_at",
    ]
    assert bronze.count() == bronze.select(*version).distinct().count() == 120 + changed  # each version once
    assert dict(bronze.dtypes)["reading_time"] == "timestamp_ntz"  # the wall time, as PostgreSQL has it
    latest = {
        (r["device"], r["t"]): r["value"]
        for r in bronze.groupBy("device", version[1])
        .agg(F.max(F.struct("ingested_at", "value")).alias("m"))
        .select("device", "t", "m.value")
        .collect()
    }
    rows = _sql(
        own_db,
        f"SELECT device, to_char(reading_time, 'YYYY-MM-DD HH24:MI:SS.US'), value FROM \"{schema}\".readings",
    )
    assert latest == {(d, t): v for d, t, v in rows}

    # The state keeps the position typed, and it is the table's last row in (watermark, key) order.
    state = read_state(postgres, source.name)
    document = json.loads(state_path(postgres, source.name).read_text())
    assert document["key"][1]["type"] == "timestamp" and document["watermark"]["type"] == "timestamptz"
    ((device, reading_time, ingested_at),) = _sql(
        own_db,
        f'SELECT device, reading_time, ingested_at FROM "{schema}".readings '
        'ORDER BY ingested_at DESC, device COLLATE "C" DESC, reading_time DESC LIMIT 1',
    )
    assert (state.watermark, state.key) == (ingested_at.astimezone(UTC), (device, reading_time))
    check_bronze(spark, postgres, source)
    first_print = source_fingerprint(postgres, source)
    assert source_fingerprint(postgres, source) == first_print
    _sql(own_db, f"DELETE FROM \"{schema}\".readings WHERE device = 'new'")
    assert source_fingerprint(postgres, source) != first_print


def test_numeric_and_uuid_keys_with_an_integer_watermark(postgres: Settings, spark: Any, own_db: str) -> None:
    schema = f"it_ledger_{_tag()}"
    keys = [(Decimal(f"{i % 4}.{i:04d}"), uuid.UUID(int=(i * 2654435761) % 2**128)) for i in range(40)]
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[arg-type]
        conn.execute(
            f'CREATE TABLE "{schema}".entries (batch numeric(12,4), entry uuid, amount numeric, '  # type: ignore[arg-type]
            "version bigint NOT NULL, PRIMARY KEY (batch, entry))"
        )
        with conn.cursor() as cursor:
            cursor.executemany(
                f'INSERT INTO "{schema}".entries VALUES (%s, %s, %s, 1)',  # type: ignore[arg-type]
                [(b, e, Decimal(i) / 7) for i, (b, e) in enumerate(keys)],
            )
    source = PostgresTableSource(
        name=f"it_ledger_{_tag()}",
        kind="postgres",
        connection=own_db,  # type: ignore[arg-type]
        table=f"{schema}.entries",
        key=["batch", "entry"],
        watermark="version",
        bronze=f"it_ledger_{_tag()}",
    )
    assert extract_incremental(spark, postgres, source, page_size=7).rows == 40
    _sql(
        own_db,
        f'UPDATE "{schema}".entries SET amount = amount + 1, version = 2 WHERE batch < 1',
        f"INSERT INTO \"{schema}\".entries VALUES (9.9999, '{uuid.uuid4()}', 0, 2), "
        f"(0.0001, '{uuid.uuid4()}', 0, 3)",
    )
    assert extract_incremental(spark, postgres, source, page_size=7).rows == 10 + 2
    state = read_state(postgres, source.name)
    assert state.watermark == 3 and isinstance(state.key[0], Decimal) and isinstance(state.key[1], uuid.UUID)  # type: ignore[index]
    bronze = _bronze(spark, postgres, source)
    assert bronze.count() == bronze.select("batch", "entry", "version").distinct().count() == 52
    assert dict(bronze.dtypes)["batch"] == "decimal(12,4)"
    check_bronze(spark, postgres, source)


def test_an_old_state_file_and_a_crash_resume_where_bronze_is(postgres: Settings, spark: Any) -> None:
    table = f"it_legacy_{_tag()}"

    def _insert(first: int, last: int) -> None:
        with psycopg.connect(**postgres.postgres.connect_kwargs(), autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute(
                f"INSERT INTO {table} SELECT i, 'n' || i, '2024-01-01 00:00:00.5+00' "  # type: ignore[arg-type]
                f"FROM generate_series({first}, {last}) i"
            )

    with psycopg.connect(**postgres.postgres.connect_kwargs(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, note text, updated_at timestamptz NOT NULL)"  # type: ignore[arg-type]
        )
    _insert(1, 30)
    source = PostgresTableSource(name=table, kind="postgres", table=table, key=["id"], bronze=table)
    assert extract_incremental(spark, postgres, source, page_size=20).rows == 30
    # What the extract wrote before positions were typed: the watermark as text, the key as JSON values.
    state = read_state(postgres, table)
    write_json(
        state_path(postgres, table),
        {
            "source": table,
            "app_id": state.app_id,
            "sequence": state.sequence,
            "watermark": "2024-01-01T00:00:00.500000Z",
            "key": [30],
            "committed_at": "2024-01-01T00:00:01+00:00",
        },
    )
    _insert(31, 35)
    assert extract_incremental(spark, postgres, source, page_size=20).rows == 5  # nothing read twice
    assert json.loads(state_path(postgres, table).read_text())["key"] == [{"type": "int", "value": "35"}]

    # A crash after a page landed and before its position was committed: the next run takes the
    # position from bronze (the page is not written again) and goes on after it.
    committed = state_path(postgres, table).read_text()
    _insert(36, 40)
    assert extract_incremental(spark, postgres, source, page_size=20).rows == 5
    state_path(postgres, table).write_text(committed)
    _insert(41, 42)
    assert extract_incremental(spark, postgres, source, page_size=20).rows == 2
    bronze = _bronze(spark, postgres, source)
    assert bronze.count() == bronze.select("id").distinct().count() == 42
    assert read_state(postgres, table).key == (42,)
    check_bronze(spark, postgres, source)


# --- snapshot: palmerpenguins, a real table without a version column --------------------------------------

PENGUIN_COLUMNS = [
    ("study_name", "text"),
    ("sample_number", "integer"),
    ("species", "text"),
    ("region", "text"),
    ("island", "text"),
    ("stage", "text"),
    ("individual_id", "text"),
    ("clutch_completion", "text"),
    ("date_egg", "date"),
    ("culmen_length_mm", "numeric"),
    ("culmen_depth_mm", "numeric"),
    ("flipper_length_mm", "integer"),
    ("body_mass_g", "integer"),
    ("sex", "text"),
    ("delta_15_n", "double precision"),
    ("delta_13_c", "double precision"),
    ("comments", "text"),
]


def _penguins_csv() -> Path:
    spec = find_spec("palmerpenguins")
    assert spec is not None and spec.submodule_search_locations, (
        "pip install --no-deps palmerpenguins (make venv)"
    )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "penguins-raw.csv"


def load_penguins(url: str, table: str) -> int:
    """The real Palmer Station penguin measurements (penguins-raw.csv, 344 birds) as a PostgreSQL table."""
    columns = ", ".join(f"{name} {type_}" for name, type_ in PENGUIN_COLUMNS)
    with _penguins_csv().open(newline="", encoding="utf-8") as handle:
        rows = [[None if v in ("", "NA") else v for v in row] for row in list(csv.reader(handle))[1:]]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} ({columns}, PRIMARY KEY (species, sample_number))")  # type: ignore[arg-type]
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:  # type: ignore[arg-type]
            for row in rows:
                copy.write_row([str(int(float(v))) if v and i in (11, 12) else v for i, v in enumerate(row)])
    return len(rows)


def test_a_snapshot_of_palmerpenguins_lands_only_what_changed(
    postgres: Settings, spark: Any, own_db: str
) -> None:
    schema = f"it_field_{_tag()}"
    _sql(own_db, f"CREATE SCHEMA {schema}")
    birds = load_penguins(own_db, f"{schema}.penguins")
    source = PostgresTableSource(
        name=f"it_penguins_{_tag()}",
        kind="postgres",
        mode="snapshot",
        connection=own_db,  # type: ignore[arg-type]
        table=f"{schema}.penguins",
        key=["species", "sample_number"],
        bronze=f"it_penguins_{_tag()}",
    )
    first = extract_snapshot(spark, postgres, source)
    assert birds == 344 and (first.rows, first.inserted, first.updated, first.deleted) == (344, 344, 0, 0)
    fingerprint = source_fingerprint(postgres, source)

    second = extract_snapshot(spark, postgres, source)
    assert second.unchanged and second.rows == 0 and second.table_version == first.table_version
    assert source_fingerprint(postgres, source) == fingerprint

    adelie, gentoo = "Adelie Penguin (Pygoscelis adeliae)", "Gentoo penguin (Pygoscelis papua)"
    _sql(
        own_db,
        f"UPDATE {schema}.penguins SET body_mass_g = body_mass_g + 50, comments = 'reweighed' "
        f"WHERE species = '{adelie}' AND sample_number IN (1, 2)",
        f"DELETE FROM {schema}.penguins WHERE species = '{gentoo}' AND sample_number = 3",
    )
    assert source_fingerprint(postgres, source) != fingerprint
    third = extract_snapshot(spark, postgres, source)
    assert (third.rows, third.inserted, third.updated, third.deleted) == (3, 0, 2, 1)
    changes = {
        (r["species"], r["sample_number"]): r
        for r in _bronze(spark, postgres, source).where(F.col("_batch_id") == third.batch_ids[0]).collect()
    }
    assert set(changes) == {(adelie, 1), (adelie, 2), (gentoo, 3)}
    assert changes[(adelie, 1)]["comments"] == "reweighed" and changes[(adelie, 1)]["_op"] == "update"
    tombstone = changes[(gentoo, 3)]
    assert tombstone["_deleted"] and tombstone["_op"] == "delete" and tombstone["body_mass_g"] is None
    assert tombstone["_extracted_at"] is not None and tombstone["_snapshot"] == 2

    # The bird comes back: one insert; then nothing again.
    _sql(
        own_db,
        f"INSERT INTO {schema}.penguins (species, sample_number, island) VALUES ('{gentoo}', 3, 'Biscoe')",
    )
    assert (lambda r: (r.rows, r.inserted))(extract_snapshot(spark, postgres, source)) == (1, 1)
    assert extract_snapshot(spark, postgres, source).rows == 0
    bronze = _bronze(spark, postgres, source)
    assert bronze.count() == 344 + 3 + 1  # never an unchanged row twice
    assert dict(bronze.dtypes)["date_egg"] == "date" and dict(bronze.dtypes)["delta_15_n"] == "double"
    check_bronze(spark, postgres, source)


# --- isolation: one bad source does not stop the others ---------------------------------------------------


def test_one_bad_source_is_named_and_the_others_land(postgres: Settings, spark: Any, own_db: str) -> None:
    schema = f"it_iso_{_tag()}"
    _sql(
        own_db,
        f"CREATE SCHEMA {schema}",
        f"CREATE TABLE {schema}.items (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now())",
        f"INSERT INTO {schema}.items (id) SELECT generate_series(1, 12)",
    )
    wrong_password = own_db.replace(f":{postgres.postgres.password}@", ":not-the-Pa55word@")

    def source(name: str, **fields: Any) -> PostgresTableSource:
        entry = {
            "kind": "postgres",
            "connection": own_db,
            "table": f"{schema}.items",
            "key": ["id"],
            **fields,
        }
        return PostgresTableSource.model_validate({"name": name, "bronze": f"it_{name}_{_tag()}", **entry})

    sources = [
        source("missing_table", table=f"{schema}.Items"),
        source("bad_column", key=["item_id"]),
        source("bad_login", connection=wrong_password),
        source("good"),
    ]
    outcomes = extract_sources(spark, postgres, sources, page_size=5)
    by_name = {o.source: o for o in outcomes}
    assert by_name["good"].ok and by_name["good"].report is not None and by_name["good"].report.rows == 12
    assert "'missing_table'" in str(by_name["missing_table"].error)
    assert f"{schema}.items" in str(by_name["missing_table"].error)  # the name it probably meant
    assert "'bad_column'" in str(by_name["bad_column"].error) and "item_id" in str(
        by_name["bad_column"].error
    )
    assert "'bad_login'" in str(by_name["bad_login"].error) and "cannot connect" in str(
        by_name["bad_login"].error
    )
    assert all("not-the-Pa55word" not in str(o.error) for o in outcomes)
    with pytest.raises(
        ExtractError, match=r"3 of 4 postgres sources failed.*missing_table.*bad_column.*bad_login"
    ):
        raise_for_failures(outcomes)


# --- CDC: any tables of any database ----------------------------------------------------------------------


def test_cdc_captures_any_schema_of_its_own_database(postgres: Settings, own_db: str) -> None:
    tag = _tag()
    schema = f"it_shop_{tag}"
    _sql(
        own_db,
        f"CREATE SCHEMA {schema}",
        f"CREATE TABLE {schema}.baskets (basket_id uuid PRIMARY KEY, total numeric(10,2))",
        f"CREATE TABLE {schema}.lines (basket_id uuid, line int, sku text, PRIMARY KEY (basket_id, line))",
        "CREATE TABLE public.elsewhere (id int PRIMARY KEY)",  # not captured: another schema
    )
    topic = f"it-cdc-own-{tag}"
    admin = KafkaAdminClient(bootstrap_servers=postgres.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    source = PostgresCdcSource(
        name=f"it_cdc_own_{tag}",
        kind="postgres_cdc",
        connection=own_db,  # type: ignore[arg-type]
        slot=f"it_own_{tag}",
        topic=topic,
        tables=[f"{schema}.*"],
        bronze=f"it_cdc_own_{tag}",
    )
    try:
        assert run_cdc(postgres, source, once=True).changes == 0  # creates the slot
        idle = source_fingerprint(postgres, source)
        basket = uuid.uuid4()
        _sql(
            own_db,
            f"INSERT INTO {schema}.baskets VALUES ('{basket}', 12.50)",
            f"INSERT INTO {schema}.lines VALUES ('{basket}', 1, 'a'), ('{basket}', 2, 'b')",
            f"UPDATE {schema}.baskets SET total = 13.00",
            "INSERT INTO public.elsewhere VALUES (1)",
        )
        pending = source_fingerprint(postgres, source)
        assert pending != idle
        report = run_cdc(postgres, source, once=True)
        assert report.changes == 4 and report.by_table == {f"{schema}.baskets": 2, f"{schema}.lines": 2}
        published = source_fingerprint(postgres, source)
        assert published not in (idle, pending) and source_fingerprint(postgres, source) == published
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=postgres.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        try:
            keys = sorted(r.key.decode() for _, r in zip(range(4), consumer, strict=False))
        finally:
            consumer.close()
        assert keys[0] == f'{schema}.baskets:["{basket}"]' and keys[-1] == f'{schema}.lines:["{basket}", 2]'
    finally:
        drop_slot(postgres, source.slot, source)
