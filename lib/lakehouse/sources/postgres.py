"""PostgreSQL into bronze: the extract of any table of any database (incremental or snapshot).

**Where.** A ``postgres`` source names its table (``table`` or ``schema.table``, quoted as written) and
optionally its own database (``connection``: a libpq string or ``postgresql://`` URL, from the environment);
the environment file's PostgreSQL is the default. psycopg looks the table up first (:func:`describe_table`:
a missing table or column is a clear error naming the source), then Spark's JDBC reader reads it — the
Spark server reads PostgreSQL directly, no row passes through this process.

**mode: incremental.** Rows are read after ``(watermark, key) > (last watermark, last key)`` in pages
ordered by the same tuple (keyset pagination): rows that share one ``updated_at`` — a bulk load gives
thousands of them — are never skipped or read twice, however a page boundary falls. The key may be of any
type a position keeps exactly (:data:`POSITION_KINDS`: integers, numeric, float, text, uuid, boolean, date,
timestamp, timestamptz): the position is stored typed (``{"type": "timestamp", "value": "…"}``), compared
as literals of the column's own type, and text columns are ordered byte-wise (``COLLATE "C"``) — the order
Spark compares the strings in when the position is taken back from bronze. Each page is appended to
``bronze/<source.bronze>`` as an idempotent Delta write (``txnAppId``/``txnVersion``) and only then is the
new position committed to the state file; a crash between the two replays the page into the same
transaction id, which Delta skips, and the state is then taken from what bronze actually holds. So bronze
gets every row version the extract saw exactly once. Known limit of any watermark extract (the CDC path has
none of them): a transaction that commits long after it wrote can carry an ``updated_at`` older than a
position already extracted, and deletes are invisible.

**mode: snapshot.** For tables without a version column: each run compares the whole table by key with the
last snapshot (row hashes) and lands only new and changed rows, plus a tombstone per deleted key
(:func:`extract_snapshot`); an unchanged table costs one checksum query and lands nothing.

Bronze rows keep the table's own typed columns (a ``timestamp without time zone`` lands as
``TIMESTAMP_NTZ``) plus ``_extracted_at``, ``_batch_id`` and ``_source_table`` (a snapshot adds ``_op``,
``_deleted``, ``_row_hash`` and ``_snapshot``). :func:`extract_sources` runs every source on its own: one
failing source is reported by name and the others still land. :func:`source_fingerprint` says cheaply
whether a source has anything new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import psycopg
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError, LakehouseError
from lakehouse.sources.postgres_connection import (
    STABLE_SESSION,
    Endpoint,
    connect_to,
    source_endpoint,
)
from lakehouse.sources.registry import PostgresCdcSource, PostgresTableSource
from lakehouse.state import decode_typed, encode_typed, read_json, write_json
from lakehouse.tables import is_delta_table, table_version

log = logging.getLogger(__name__)


def _execute(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] | None = None) -> Any:
    # Queries here are built from quoted identifiers and typed literals (see quote_identifier/sql_literal).
    return conn.execute(query, params)


# --- the table a source reads -----------------------------------------------------------------------------

# A value Spark cannot hold (see :func:`representable`) lands as NULL in its column, and its exact text here:
# ``{"<column>": "<text>"}`` (NULL when the row has none). Silver quarantines such a row with its reason.
UNREPRESENTABLE: Final = "_unrepresentable"
EXTRACT_COLUMNS: Final = ("_extracted_at", "_batch_id", "_source_table", UNREPRESENTABLE)
SNAPSHOT_COLUMNS: Final = ("_op", "_deleted", "_row_hash", "_snapshot")
DEFAULT_PAGE_SIZE: Final = 50_000

# PostgreSQL base types a keyset position can hold exactly, by the kind its value is kept as (state.py).
POSITION_KINDS: Final = {
    "int2": "int", "int4": "int", "int8": "int",
    "numeric": "numeric",
    "float4": "float", "float8": "float",
    "text": "text", "varchar": "text", "bpchar": "text", "name": "text",
    "uuid": "uuid",
    "bool": "bool",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
}  # fmt: skip


@dataclass(frozen=True)
class PgColumn:
    """One column of a source table: its type as PostgreSQL spells it, and how a position keeps it."""

    name: str
    type: str
    kind: str | None
    not_null: bool = True
    collatable: bool = False


@dataclass(frozen=True)
class TableShape:
    """A source table as the database describes it: columns in order and the unique column sets."""

    relation: str
    columns: dict[str, PgColumn]
    unique: tuple[frozenset[str], ...] = ()

    def column(self, source: PostgresTableSource, name: str, role: str) -> PgColumn:
        """The column ``name`` (``role``: how the source uses it, for the message).

        Raises:
            ConfigError: the table has no such column.
        """
        if name not in self.columns:
            raise ConfigError(
                f"postgres source {source.name!r}: {source.table} has no column {name!r} (its {role}); "
                f"its columns: {list(self.columns)}"
            )
        return self.columns[name]

    def position(self, source: PostgresTableSource) -> list[PgColumn]:
        """The columns of an incremental source's position: watermark, then key, each of a supported type.

        Raises:
            ConfigError: a column is missing or of a type a position cannot keep exactly.
        """
        columns = [self.column(source, source.watermark, "watermark")]
        columns += [self.column(source, name, "key") for name in source.key]
        for column in columns:
            if column.kind is None:
                raise ConfigError(
                    f"postgres source {source.name!r}: column {column.name!r} is {column.type}, which a "
                    "keyset position cannot keep exactly: use a column of type integer, numeric, float, "
                    "text, uuid, boolean, date or timestamp(tz)"
                )
        return columns

    def is_unique(self, columns: Iterable[str]) -> bool:
        """True when a primary key or unique index covers a subset of ``columns`` (so they identify rows)."""
        wanted = set(columns)
        return any(index <= wanted for index in self.unique)


_DESCRIBE = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), b.typname, a.attnotnull, a.attcollation <> 0
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_UNIQUE = """
SELECT array_agg(a.attname::text)
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid
"""


def describe_table(
    conn: psycopg.Connection[Any], source: PostgresTableSource, endpoint: Endpoint
) -> TableShape:
    """Look the source's table up in the database: its columns, their types, its unique column sets.

    Raises:
        ConfigError: the table does not exist (the message lists tables of similar name: names are quoted,
            so ``Orders`` is not ``orders``), or has a column named like the extract's bookkeeping.
    """
    relation = quote_identifier(source.table)
    row = conn.execute("SELECT to_regclass(%s)::oid", (relation,)).fetchone()
    if row is None or row[0] is None:
        schema, table = source.schema_table
        similar = [
            f"{r[0]}.{r[1]}"
            for r in conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE lower(table_name) = lower(%s) OR lower(table_schema || '.' || table_name) = lower(%s) "
                "ORDER BY 1, 2 LIMIT 10",
                (table, f"{schema}.{table}"),
            )
        ]
        hint = f"; tables of that name in another case or schema: {similar}" if similar else ""
        raise ConfigError(
            f"postgres source {source.name!r}: table {source.table!r} does not exist in {endpoint.label}"
            f" (names are case-sensitive, the schema defaults to public){hint}"
        )
    oid = int(row[0])
    columns = {
        str(name): PgColumn(str(name), str(type_), POSITION_KINDS.get(str(base)), bool(not_null), bool(coll))
        for name, type_, base, not_null, coll in conn.execute(_DESCRIBE, (oid,))
    }
    clash = sorted(set(columns) & {*EXTRACT_COLUMNS, *SNAPSHOT_COLUMNS})
    if clash:
        raise ConfigError(
            f"postgres source {source.name!r}: {source.table} has columns named like the extract's "
            f"bookkeeping ({clash}): extract a view that renames them"
        )
    unique = tuple(frozenset(str(c) for c in r[0]) for r in conn.execute(_UNIQUE, (oid,)))
    return TableShape(relation, columns, unique)


# --- SQL text ---------------------------------------------------------------------------------------------


def quote_identifier(name: str) -> str:
    """A PostgreSQL identifier, maybe schema-qualified, quoted: ``sales.orders`` → ``"sales"."orders"``.

    A double quote inside a name is doubled, as PostgreSQL reads it; the name's case is kept.

    Raises:
        ConfigError: the name is empty, has an empty part, more than two parts or a NUL.

    Example:
        >>> print(quote_identifier('sales.Order "Lines" 2'))
        "sales"."Order ""Lines"" 2"
    """
    parts = name.split(".")
    if not name or len(parts) > 2 or any(not part or "\x00" in part for part in parts):
        raise ConfigError(f"{name!r} is not a valid table or column name")
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def _text_form(value: object) -> str:
    """The exact text of a position value, as PostgreSQL's input functions read it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, int | Decimal | str | uuid.UUID):
        return str(value)
    raise DataError(
        f"cannot use a {type(value).__name__} as a keyset position: use int, numeric, text, uuid, "
        "boolean, date or timestamp keys"
    )


def _quoted(text: str) -> str:
    if "\x00" in text:
        raise DataError("a key value has a NUL character")
    if "\\" in text:  # E'' reads the same whatever standard_conforming_strings says
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"


def sql_literal(value: object, column_type: str | None = None) -> str:
    """A SQL literal for a keyset position value; with ``column_type``, typed: ``'<text>'::<type>``.

    Typed literals are what the extract builds (``format_type`` of the column, so an index on it is used
    and the comparison is the column's own); without a type, ints and decimals are bare and text,
    dates and timestamps quoted.

    Example:
        >>> sql_literal("O'Brien")
        "'O''Brien'"
        >>> sql_literal(datetime(2024, 1, 1, 0, 0, 0, 5), "timestamp without time zone")
        "'2024-01-01T00:00:00.000005'::timestamp without time zone"
    """
    if column_type is not None:
        return f"{_quoted(_text_form(value))}::{column_type}"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, datetime | date | str | uuid.UUID):
        return _quoted(_text_form(value))
    raise DataError(
        f"cannot use a {type(value).__name__} as a keyset position without its column type: use int, "
        "numeric, text, uuid, boolean, date or timestamp keys"
    )


def _ordered(column: PgColumn) -> str:
    # Text keys compare byte-wise ("C"), which is how Spark compares the strings it reads back: the
    # position taken from bronze is then the page's last row in the database's order too.
    name = quote_identifier(column.name)
    return f'{name} COLLATE "C"' if column.collatable else name


# --- values Spark cannot hold -----------------------------------------------------------------------------

# Spark's dates and timestamps span years 1 to 9999; PostgreSQL's go from 4713 BC to 294276 AD, plus
# ±infinity. Outside Spark's span the JDBC reader fails the whole read (a long overflow) or lands a
# value that is not the source's (infinity as 9999-12-31), so one such row would stop or falsify its source.
_TIME_SPAN: Final = {
    "timestamp": ("'0001-01-01 00:00:00'::timestamp", "'9999-12-31 23:59:59.999999'::timestamp"),
    "timestamptz": ("'0001-01-01 00:00:00+00'::timestamptz", "'9999-12-31 23:59:59.999999+00'::timestamptz"),
    "date": ("'0001-01-01'::date", "'9999-12-31'::date"),
}
_NUMERIC_TYPE = re.compile(r"numeric\((\d+),(-?\d+)\)")


def spark_decimal(column_type: str) -> tuple[int, int]:
    """The decimal Spark's JDBC reader gives a PostgreSQL numeric: (38, 18) unbounded, else capped at 38.

    Example:
        >>> spark_decimal("numeric"), spark_decimal("numeric(12,2)"), spark_decimal("numeric(60,30)")
        ((38, 18), (12, 2), (38, 30))
    """
    match = _NUMERIC_TYPE.fullmatch(column_type.replace(" ", ""))
    if match is None:
        return 38, 18
    return min(int(match[1]), 38), max(0, min(int(match[2]), 38))


def representable(column: PgColumn) -> str | None:
    """A SQL predicate: the column's value fits the type Spark reads it as (None: every value does).

    NULL for a NULL value. Dates and timestamps must fall in years 1–9999; a numeric must not be NaN or
    ±Infinity, and rounded to the scale Spark reads it with (:func:`spark_decimal`), must fit its
    precision: an unbounded numeric is read as ``decimal(38,18)``, so 10^20 and beyond do not fit. Digits
    past that scale are rounded, as Spark's reader does.

    Example:
        >>> print(representable(PgColumn("amount", "numeric(12,2)", "numeric")))
        abs(round("amount", 2)) < 1e10
    """
    name = quote_identifier(column.name)
    if column.kind in _TIME_SPAN:
        low, high = _TIME_SPAN[column.kind]
        return f"{name} BETWEEN {low} AND {high}"
    if column.kind == "numeric":
        precision, scale = spark_decimal(column.type)
        # NaN and ±Infinity never compare below a finite bound
        return f"abs(round({name}, {scale})) < 1e{precision - scale}"
    return None


def select_list(shape: TableShape) -> str:
    """The extract's columns: each column as Spark can read it, and :data:`UNREPRESENTABLE`.

    A value :func:`representable` rejects is selected as NULL (of the column's own type, so bronze's
    schema does not change) and its text kept in ``_unrepresentable``, keyed by its column.

    Example:
        >>> shape = TableShape('"t"', {"id": PgColumn("id", "bigint", "int"),
        ...     "day": PgColumn("day", "date", "date")})
        >>> print(select_list(shape).replace(representable(shape.columns["day"]), "<fits>"))
        ... # doctest: +NORMALIZE_WHITESPACE
        "id", (CASE WHEN <fits> THEN "day" END)::date AS "day",
        NULLIF(jsonb_strip_nulls(jsonb_build_object('day',
        CASE WHEN NOT (<fits>) THEN "day"::text END))::text, '{}') AS "_unrepresentable"
    """
    selected, kept = [], []
    for column in shape.columns.values():
        name = quote_identifier(column.name)
        fits = representable(column)
        if fits is None:
            selected.append(name)
            continue
        selected.append(f"(CASE WHEN {fits} THEN {name} END)::{column.type} AS {name}")
        kept.append(
            f"jsonb_build_object({_quoted(column.name)}, CASE WHEN NOT ({fits}) THEN {name}::text END)"
        )
    unrepresentable = (
        f"NULLIF(jsonb_strip_nulls({' || '.join(kept)})::text, '{{}}')" if kept else "NULL::text"
    )
    return ", ".join([*selected, f"{unrepresentable} AS {quote_identifier(UNREPRESENTABLE)}"])


def _reachable(columns: Sequence[PgColumn]) -> list[str]:
    """Predicates of rows whose position an extract can keep: no NULL and nothing Spark cannot hold."""
    conditions = [f"{quote_identifier(c.name)} IS NOT NULL" for c in columns if not c.not_null]
    return conditions + [fits for c in columns if (fits := representable(c)) is not None]


# --- the incremental extract ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractState:
    """The committed position of one source: the last (watermark, key) in bronze, and the write sequence.

    ``watermark`` and ``key`` hold typed values (datetime, Decimal, UUID, …), kept in the state file as
    ``{"type": ..., "value": ...}`` (:func:`lakehouse.state.encode_typed`); a file written before types
    were kept holds plain JSON values, which the extract casts to the column's type. A snapshot source
    keeps ``checksum`` (the table's row count and hash sum when it was last read) instead of a position.
    """

    source: str
    app_id: str
    sequence: int = 0
    watermark: Any = None
    key: tuple[Any, ...] | None = None
    mode: str = "incremental"
    checksum: str | None = None

    def to_document(self) -> dict[str, Any]:
        """The JSON document the state file holds."""
        document: dict[str, Any] = {
            "format": STATE_FORMAT,
            "source": self.source,
            "mode": self.mode,
            "app_id": self.app_id,
            "sequence": self.sequence,
            "watermark": None if self.watermark is None else encode_typed(self.watermark),
            "key": None if self.key is None else [encode_typed(v) for v in self.key],
            "committed_at": datetime.now(UTC).isoformat(),
        }
        if self.checksum is not None:
            document["checksum"] = self.checksum
        return document

    @classmethod
    def from_document(cls, document: Any) -> ExtractState:
        """Read a state document, typed (this format) or plain (the first format, still read)."""

        def value(item: Any) -> Any:
            return decode_typed(item) if isinstance(item, dict) else item

        key = document.get("key")
        return cls(
            source=str(document["source"]),
            app_id=str(document["app_id"]),
            sequence=int(document["sequence"]),
            watermark=value(document.get("watermark")),
            key=None if key is None else tuple(value(v) for v in key),
            mode=str(document.get("mode", "incremental")),
            checksum=document.get("checksum"),
        )

    @classmethod
    def fresh(cls, source: str, mode: str = "incremental") -> ExtractState:
        return cls(source=source, app_id=f"extract-{source}-{uuid.uuid4()}", mode=mode)


STATE_FORMAT: Final = 2  # 1 (no "format" field): plain JSON watermark and key values


def keyset_query(source: PostgresTableSource, shape: TableShape, state: ExtractState, page_size: int) -> str:
    """The SQL of the next page: rows after the stored (watermark, key), in that order, at most ``page_size``.

    Every position value is a literal of its column's type; rows whose watermark or key is NULL or a value
    Spark cannot hold (:func:`representable`) are left out (a NULL never compares, and such a value could
    not be kept as a position; :func:`extract_incremental` counts them).

    Example:
        >>> src = PostgresTableSource(
        ...     kind="postgres", table="sales.orders", key=["order_id"], watermark="version", bronze="o")
        >>> shape = TableShape('"sales"."orders"', {
        ...     "version": PgColumn("version", "bigint", "int"),
        ...     "order_id": PgColumn("order_id", "numeric(12,0)", "numeric")})
        >>> state = ExtractState("o", "app", 1, 3, (Decimal(7),))
        >>> print(keyset_query(src, shape, state, 10).replace(select_list(shape), "…"))
        ... # doctest: +NORMALIZE_WHITESPACE
        SELECT … FROM "sales"."orders" WHERE ("version", "order_id") > ('3'::bigint, '7'::numeric(12,0))
        AND abs(round("order_id", 0)) < 1e12 ORDER BY "version", "order_id" LIMIT 10
    """
    if page_size < 1:
        raise ConfigError(f"page_size must be at least 1 (got {page_size})")
    columns = shape.position(source)
    order = ", ".join(_ordered(c) for c in columns)
    where = _after(source, shape, state)
    return (
        f"SELECT {select_list(shape)} FROM {shape.relation} WHERE {where} ORDER BY {order} LIMIT {page_size}"
    )


def _after(source: PostgresTableSource, shape: TableShape, state: ExtractState) -> str:
    """The predicate of rows after the state's position (all rows with a complete position when none)."""
    columns = shape.position(source)
    reachable = _reachable(columns)
    if state.watermark is None or state.key is None:
        return " AND ".join(reachable) or "TRUE"
    if len(state.key) != len(source.key):
        raise ConfigError(
            f"the stored position of {source.name} has {len(state.key)} key values but the source has "
            f"{len(source.key)} key columns: reset the state (delete {source.name}.json) to extract again"
        )
    values = (state.watermark, *state.key)
    position = ", ".join(sql_literal(v, c.type) for v, c in zip(values, columns, strict=True))
    # A row comparison is NULL when a column is: such rows are never "after" a position.
    after = f"({', '.join(_ordered(c) for c in columns)}) > ({position})"
    return " AND ".join([after, *[fits for c in columns if (fits := representable(c)) is not None]])


def state_path(settings: Settings, source_name: str) -> Path:
    """Where the extract position of a source is kept: ``<workspace>/state/postgres/<source>.json``."""
    return settings.workspace / "state" / "postgres" / f"{source_name}.json"


def read_state(settings: Settings, source_name: str) -> ExtractState:
    """The committed position of a source (a fresh one when none was committed yet).

    Raises:
        DataError: the state file exists but is not what this module writes.
    """
    path = state_path(settings, source_name)
    try:
        raw = read_json(path)
        if raw is None:
            return ExtractState.fresh(source_name)
        return ExtractState.from_document(raw)
    except (ValueError, KeyError, TypeError, AttributeError, DataError) as exc:
        raise DataError(
            f"the extract state {path} is damaged ({exc}): delete it to extract from the start"
        ) from exc


def write_state(settings: Settings, state: ExtractState) -> None:
    """Commit a position atomically and durably (:func:`lakehouse.state.write_json`).

    Raises:
        DataError: a position value has a type a state file cannot keep (nothing is written then).
    """
    write_json(state_path(settings, state.source), state.to_document())


@dataclass(frozen=True)
class ExtractReport:
    """What one extract of a source added to bronze, and where it now stands.

    ``rows`` is what landed; a snapshot splits it into ``inserted``, ``updated`` and ``deleted`` and says
    ``unchanged`` when the table's checksum showed nothing to read. ``null_positions`` counts rows an
    incremental extract cannot reach (a NULL watermark or key, or one Spark cannot hold), and a snapshot the
    rows whose key Spark cannot hold.
    """

    source: str
    table: str
    bronze: str
    rows: int
    pages: int
    batch_ids: tuple[str, ...]
    watermark: Any
    key: tuple[Any, ...] | None
    table_version: int
    mode: str = "incremental"
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: bool = False
    null_positions: int = 0


def _read_query(spark: SparkSession, endpoint: Endpoint, query: str) -> DataFrame:
    return spark.read.format("jdbc").options(**endpoint.jdbc_options()).option("query", query).load()


def _position_text(column: PgColumn) -> Column:
    """A Spark expression giving a bronze column's value as the exact text :func:`_typed` reads back."""
    col = F.col(column.name)
    if column.kind == "timestamptz":
        return F.date_format(col, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")  # the session is UTC
    if column.kind == "timestamp":
        return F.date_format(col, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS")
    if column.kind == "date":
        return F.date_format(col, "yyyy-MM-dd")
    return col.cast("string")


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _timestamptz(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_PARSERS: Final[dict[str, Callable[[str], Any]]] = {
    "int": int,
    "numeric": Decimal,
    "float": float,
    "uuid": uuid.UUID,
    "bool": lambda text: text.lower() in ("true", "t"),
    "date": date.fromisoformat,
    "timestamp": _timestamp,
    "timestamptz": _timestamptz,
}


def _typed(column: PgColumn, text: str) -> Any:
    """The Python value of a position column from its text (the types :mod:`lakehouse.state` keeps)."""
    return _PARSERS.get(column.kind or "text", str)(text)


def _typed_position(state: ExtractState, columns: Sequence[PgColumn]) -> ExtractState:
    """The state with its position typed by the columns (a state of the first format holds plain JSON)."""
    if state.watermark is None or state.key is None or len(state.key) + 1 != len(columns):
        return state
    try:
        values = (state.watermark, *state.key)
        typed = [_typed(c, _text_form(v)) for v, c in zip(values, columns, strict=True)]
    except (ValueError, ArithmeticError) as exc:
        raise DataError(
            f"the stored position of {state.source} does not fit its columns' types ({exc}): delete "
            f"{state.source}.json to extract from the start"
        ) from exc
    return replace(state, watermark=typed[0], key=tuple(typed[1:]))


def _align(frame: DataFrame, existing: dict[str, Any]) -> DataFrame:
    """``frame`` with timestamp columns cast to the type they already have in bronze (``existing``).

    Bronze written before timestamps without time zone were read as ``TIMESTAMP_NTZ`` holds them as
    ``TIMESTAMP`` (UTC); appending keeps that type rather than failing on the mismatch.
    """
    casts = {
        f.name: F.col(f.name).cast(existing[f.name])
        for f in frame.schema.fields
        if f.name in existing
        and {f.dataType.typeName(), existing[f.name].typeName()} == {"timestamp", "timestamp_ntz"}
    }
    return frame.withColumns(casts) if casts else frame


def _bronze_types(spark: SparkSession, bronze: str, exists: bool) -> dict[str, Any]:
    if not exists:
        return {}
    return {f.name: f.dataType for f in spark.read.format("delta").load(bronze).schema.fields}


def bronze_position(frame: DataFrame, columns: Sequence[PgColumn]) -> tuple[int, tuple[Any, ...] | None]:
    """Rows of ``frame`` and its greatest ``(watermark, key)`` as typed values, in one Spark query.

    Structs compare field by field, so the greatest struct of the original columns is the last row in
    the page's order; its values are read back through their exact text, not Spark's Python conversion.
    """
    order = F.struct(
        *[F.col(c.name).alias(f"_o{i}") for i, c in enumerate(columns)],
        *[_position_text(c).alias(f"_t{i}") for i, c in enumerate(columns)],
    )
    row = frame.agg(F.count(F.lit(1)).alias("rows"), F.max(order).alias("last")).first()
    if row is None or not row["rows"]:
        return 0, None
    last = row["last"]
    return int(row["rows"]), tuple(_typed(c, str(last[f"_t{i}"])) for i, c in enumerate(columns))


def _null_positions(conn: psycopg.Connection[Any], shape: TableShape, columns: Sequence[PgColumn]) -> int:
    reachable = _reachable(columns)
    if not reachable:
        return 0
    where = f"NOT coalesce({' AND '.join(reachable)}, false)"
    row = _execute(conn, f"SELECT count(*) FROM {shape.relation} WHERE {where}").fetchone()
    return int(row[0]) if row else 0


def extract_incremental(
    spark: SparkSession,
    settings: Settings,
    source: PostgresTableSource,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> ExtractReport:
    """Append the rows of ``source.table`` changed since the last run to ``bronze/<source.bronze>``.

    Pages of at most ``page_size`` rows are read over Spark's JDBC source (the Spark server reads
    PostgreSQL directly, nothing passes through this process) in ``(watermark, key)`` order, each appended
    with ``_extracted_at``, ``_batch_id`` and ``_source_table``; after each page lands the position —
    typed values, whatever the key columns' types — is committed to the state file (see the module
    docstring for why a crash in between is harmless). A run that finds nothing after the position writes
    nothing: bronze keeps its version.

    Args:
        spark: a session from :func:`lakehouse.spark.get_spark`.
        settings: the environment (PostgreSQL, lake paths, state folder).
        source: a registry source of kind ``postgres``, mode ``incremental``.
        page_size: rows per page (one Delta commit each).

    Returns:
        Rows added, pages, batch ids and the new position.

    Raises:
        ConfigError: the source is not an incremental postgres source, or its table, a column or a column
            type does not fit (the message names the source).
        ServiceError: the database does not answer.
    """
    if not isinstance(source, PostgresTableSource) or source.mode != "incremental":
        raise ConfigError(f"extract_incremental needs an incremental postgres source, got {source!r}")
    name = source.name or source.bronze
    endpoint = source_endpoint(settings, source)
    bronze = settings.table_path("bronze", source.bronze)
    with connect_to(endpoint, autocommit=True, what=f"postgres source {name!r}") as conn:
        _execute(conn, STABLE_SESSION)
        shape = describe_table(conn, source, endpoint)
        columns = shape.position(source)
        if not shape.is_unique([source.watermark, *source.key]):
            log.warning(
                "extract %s: no primary key or unique index covers %s: rows sharing a (watermark, key) "
                "position could be skipped at a page boundary",
                name,
                [source.watermark, *source.key],
            )
        nulls = _null_positions(conn, shape, columns)
        if nulls:
            log.warning(
                "extract %s: %d rows have a NULL watermark or key, or one Spark cannot hold (years 1-9999, "
                "finite numbers): not extracted",
                name,
                nulls,
            )
        state = _typed_position(read_state(settings, name), columns)
        if state.mode != "incremental":
            raise ConfigError(
                f"postgres source {name!r}: its state {state_path(settings, name)} is of a {state.mode} "
                "extract: delete it (and bronze) to change the mode"
            )
        exists = is_delta_table(spark, bronze)
        if state.sequence and not exists:
            log.warning("bronze %s is gone: extracting %s from the start", bronze, name)
            state = ExtractState.fresh(name)
        types = _bronze_types(spark, bronze, exists)
        replay = bool(state.sequence) and exists  # only a run's first page can be one (see below)
        rows, batch_ids = 0, []
        while True:
            more = _execute(
                conn, f"SELECT EXISTS (SELECT 1 FROM {shape.relation} WHERE {_after(source, shape, state)})"
            ).fetchone()
            # Nothing new: no write, bronze keeps its version (a first run still creates the table, empty).
            if not (more and more[0]) and exists:
                break
            sequence = state.sequence + 1
            batch_id = f"{name}-{state.app_id[-12:]}-{sequence:06d}"
            landed = spark.read.format("delta").load(bronze).where(F.col("_batch_id") == batch_id)
            replay = replay and bool(landed.limit(1).count())
            if not replay:
                # One JDBC read, kept: the rows written are the rows the position is taken from.
                page = _read_query(spark, endpoint, keyset_query(source, shape, state, page_size))
                landed = (
                    _align(page, types)
                    .select(
                        "*",
                        F.current_timestamp().alias("_extracted_at"),
                        F.lit(batch_id).alias("_batch_id"),
                        F.lit(source.table).alias("_source_table"),
                    )
                    .localCheckpoint(eager=True)
                )
                (
                    landed.write.format("delta")
                    .mode("append")
                    .option("mergeSchema", "true")
                    .option("txnAppId", state.app_id)
                    .option("txnVersion", str(sequence))
                    .save(bronze)
                )
            # else: a crash after this batch landed and before its position was committed; Delta holds it
            # (a write would be skipped as a duplicate transaction), so its position is taken from bronze.
            count, position = bronze_position(landed, columns)
            if position is None:  # the rows went between the check and the read: the position stands
                state = replace(state, sequence=sequence)
                write_state(settings, state)
                break
            state = replace(state, sequence=sequence, watermark=position[0], key=position[1:])
            write_state(settings, state)
            if replay:
                log.info("extract %s: page %d had landed before a crash; now at %s", name, sequence, position)
            else:
                rows += count
                batch_ids.append(batch_id)
                log.info("extract %s: page %d, %d rows, now at %s", name, sequence, count, position)
            if count < page_size and not replay:
                break
            replay, exists = False, True
    return ExtractReport(
        source=name,
        table=source.table,
        bronze=bronze,
        rows=rows,
        pages=len(batch_ids),
        batch_ids=tuple(batch_ids),
        watermark=state.watermark,
        key=state.key,
        table_version=table_version(spark, bronze),
        null_positions=nulls,
    )


# --- the snapshot extract ---------------------------------------------------------------------------------


def _row_text(alias: str = "t") -> str:
    # The row's text in the stable session (STABLE_SESSION): what a row's hash is taken of. ROW(t.*), not
    # t::text: a column named t would win over the table alias.
    return f"ROW({alias}.*)::text"


def table_checksum(conn: psycopg.Connection[Any], shape: TableShape) -> str:
    """The row count and an order-free sum of 64-bit row hashes: changes when any row does (one scan).

    The connection must run in the stable session (the extract sets it), so the text of a row — and its
    hash — is the same on every run.
    """
    row = _execute(
        conn,
        f"SELECT count(*), coalesce(sum(('x' || substr(md5({_row_text()}), 1, 16))::bit(64)::bigint), 0) "
        f"FROM {shape.relation} AS t",
    ).fetchone()
    return f"{row[0]}:{row[1]}" if row else "0:0"


def snapshot_query(shape: TableShape, key: Sequence[PgColumn] = ()) -> str:
    """The SQL that reads the whole table with each row's hash (``_row_hash``: md5 of the row's text).

    Rows whose ``key`` holds a value Spark cannot (:func:`representable`) are left out: their key would
    land as NULL, and a snapshot tells rows apart by key. :func:`extract_snapshot` counts them.

    Example:
        >>> print(snapshot_query(TableShape('"public"."parcels"', {})))  # doctest: +NORMALIZE_WHITESPACE
        SELECT NULL::text AS "_unrepresentable", md5(ROW(t.*)::text) AS "_row_hash"
        FROM "public"."parcels" AS t
    """
    query = f'SELECT {select_list(shape)}, md5({_row_text()}) AS "_row_hash" FROM {shape.relation} AS t'
    reachable = _reachable(key)
    return f"{query} WHERE {' AND '.join(reachable)}" if reachable else query


def _check_snapshot_key(
    conn: psycopg.Connection[Any], source: PostgresTableSource, shape: TableShape
) -> None:
    """A snapshot tells rows apart by key: refuse NULL or repeated keys (they would land as noise)."""
    columns = [shape.column(source, name, "key") for name in source.key]
    keys = ", ".join(quote_identifier(c.name) for c in columns)
    nullable = [f"{quote_identifier(c.name)} IS NULL" for c in columns if not c.not_null]
    if nullable:
        where = " OR ".join(nullable)
        row = _execute(conn, f"SELECT count(*) FROM {shape.relation} WHERE {where}").fetchone()
        if row and row[0]:
            raise DataError(
                f"postgres source {source.name!r}: {row[0]} rows of {source.table} have a NULL in the key "
                f"{source.key}: a snapshot cannot track them; declare a key that is never NULL"
            )
    if not shape.is_unique(source.key):
        row = _execute(
            conn, f"SELECT {keys}, count(*) FROM {shape.relation} GROUP BY {keys} HAVING count(*) > 1 LIMIT 1"
        ).fetchone()
        if row:
            raise DataError(
                f"postgres source {source.name!r}: the key {source.key} of {source.table} is not unique "
                f"({row[-1]} rows share one key): declare the columns that identify a row"
            )


def snapshot_hashes(bronze: DataFrame, key: Sequence[str]) -> tuple[DataFrame, int]:
    """The live keys of a snapshot bronze table with their last row hash, and its last snapshot number.

    Bronze is the record of what was landed: per key, the row of the latest ``_snapshot``; keys whose
    latest row is a tombstone are gone.
    """
    latest = bronze.groupBy(*key).agg(F.max(F.struct("_snapshot", "_deleted", "_row_hash")).alias("_last"))
    live = latest.where(~F.col("_last._deleted")).select(*key, F.col("_last._row_hash").alias("_prev_hash"))
    row = bronze.agg(F.max("_snapshot").alias("m")).first()
    return live, int(row["m"]) if row is not None and row["m"] is not None else 0


def snapshot_changes(current: DataFrame, previous: DataFrame, key: Sequence[str]) -> DataFrame:
    """The rows of ``current`` that are new or changed against ``previous``, and tombstones for gone keys.

    Args:
        current: the table as read now, with ``_row_hash``.
        previous: live keys with ``_prev_hash`` (see :func:`snapshot_hashes`).
        key: the key columns.

    Returns:
        ``current``'s columns plus ``_op`` (``insert``, ``update`` or ``delete``) and ``_deleted``; a
        tombstone holds only its key (the other columns are NULL).
    """
    joined = current.join(previous, on=list(key), how="full_outer")
    op = (
        F.when(F.col("_row_hash").isNull(), F.lit("delete"))
        .when(F.col("_prev_hash").isNull(), F.lit("insert"))
        .when(F.col("_row_hash") != F.col("_prev_hash"), F.lit("update"))
    )
    return (
        joined.withColumn("_op", op)
        .where(F.col("_op").isNotNull())
        .select(*current.columns, "_op", (F.col("_op") == "delete").alias("_deleted"))
    )


def extract_snapshot(spark: SparkSession, settings: Settings, source: PostgresTableSource) -> ExtractReport:
    """Land what changed in ``source.table`` since the last snapshot: new and changed rows, and tombstones.

    For tables without a version column. The table's checksum (:func:`table_checksum`, one scan in
    PostgreSQL) is compared with the last run's first: unchanged, nothing is read or written. Otherwise the
    whole table is read once over JDBC with each row's md5 (``_row_hash``) and compared by key with the
    latest hash bronze holds for it (:func:`snapshot_hashes`): one append carries the rows whose hash is new
    (``_op`` ``insert``/``update``) and a tombstone (``_op`` ``delete``, ``_deleted`` true, only the key) for
    each key no longer there, with ``_snapshot`` (the snapshot's number), ``_extracted_at``, ``_batch_id``
    and ``_source_table``. The append is idempotent (``txnAppId``/``txnVersion``); the snapshot number and
    the hashes come from bronze itself, so a crash before the state file is written loses nothing.

    Raises:
        ConfigError: the source is not a snapshot postgres source, or its table or a key column is missing.
        DataError: a key is NULL or not unique.
        ServiceError: the database does not answer.
    """
    if not isinstance(source, PostgresTableSource) or source.mode != "snapshot":
        raise ConfigError(f"extract_snapshot needs a snapshot postgres source, got {source!r}")
    name = source.name or source.bronze
    endpoint = source_endpoint(settings, source)
    bronze = settings.table_path("bronze", source.bronze)
    with connect_to(endpoint, autocommit=True, what=f"postgres source {name!r}") as conn:
        _execute(conn, STABLE_SESSION)
        shape = describe_table(conn, source, endpoint)
        _check_snapshot_key(conn, source, shape)
        key = [shape.column(source, k, "key") for k in source.key]
        unreachable = _null_positions(conn, shape, key)
        if unreachable:
            log.warning(
                "extract %s: %d rows have a key Spark cannot hold (years 1-9999, finite numbers): "
                "not extracted",
                name,
                unreachable,
            )
        checksum = table_checksum(conn, shape)  # before the read: a change after it shows next time
    state = read_state(settings, name)
    if state.mode != "snapshot":
        if state.sequence:
            raise ConfigError(
                f"postgres source {name!r}: its state {state_path(settings, name)} is of an {state.mode} "
                "extract: delete it (and bronze) to change the mode"
            )
        state = ExtractState.fresh(name, "snapshot")
    exists = is_delta_table(spark, bronze)
    if exists and state.checksum == checksum:
        log.info("extract %s: unchanged since snapshot %d (checksum %s)", name, state.sequence, checksum)
        return _snapshot_report(spark, source, bronze, state, (), {}, unchanged=True, unreachable=unreachable)
    current = _align(
        _read_query(spark, endpoint, snapshot_query(shape, key)), _bronze_types(spark, bronze, exists)
    )
    if exists:
        history = spark.read.format("delta").load(bronze)
        missing = [c for c in SNAPSHOT_COLUMNS if c not in history.columns]
        if missing:
            raise ConfigError(
                f"postgres source {name!r}: bronze/{source.bronze} was not written by a snapshot extract "
                f"(it lacks {missing}): land the snapshot in a new bronze table, or delete this one"
            )
        previous, last = snapshot_hashes(history, source.key)
    else:
        previous = current.select(*source.key, F.col("_row_hash").alias("_prev_hash")).limit(0)
        last = 0
    sequence = max(state.sequence, last) + 1
    batch_id = f"{name}-{state.app_id[-12:]}-{sequence:06d}"
    # The snapshot number comes from bronze, so it is never one bronze already holds: no replay here.
    changes = (
        snapshot_changes(current, previous, source.key)
        .select(
            "*",
            F.lit(sequence).cast("bigint").alias("_snapshot"),
            F.current_timestamp().alias("_extracted_at"),
            F.lit(batch_id).alias("_batch_id"),
            F.lit(source.table).alias("_source_table"),
        )
        .localCheckpoint(eager=True)  # one read of the table: what lands is what is counted
    )
    counts = {str(r["_op"]): int(r["count"]) for r in changes.groupBy("_op").count().collect()}
    if counts or not exists:
        (
            changes.write.format("delta")
            .mode("append")
            .option("mergeSchema", "true")
            .option("txnAppId", state.app_id)
            .option("txnVersion", str(sequence))
            .save(bronze)
        )
    state = replace(state, sequence=sequence, checksum=checksum)
    write_state(settings, state)
    log.info("extract %s: snapshot %d landed %s", name, sequence, counts or "no change")
    batch_ids = (batch_id,) if counts else ()
    return _snapshot_report(spark, source, bronze, state, batch_ids, counts, unreachable=unreachable)


def _snapshot_report(
    spark: SparkSession,
    source: PostgresTableSource,
    bronze: str,
    state: ExtractState,
    batch_ids: tuple[str, ...],
    counts: dict[str, int],
    *,
    unchanged: bool = False,
    unreachable: int = 0,
) -> ExtractReport:
    return ExtractReport(
        source=state.source,
        table=source.table,
        bronze=bronze,
        rows=sum(counts.values()),
        pages=len(batch_ids),
        batch_ids=batch_ids,
        watermark=None,
        key=None,
        table_version=table_version(spark, bronze),
        mode="snapshot",
        inserted=counts.get("insert", 0),
        updated=counts.get("update", 0),
        deleted=counts.get("delete", 0),
        unchanged=unchanged,
        null_positions=unreachable,
    )


# --- every source, each on its own ------------------------------------------------------------------------


def extract_source(
    spark: SparkSession,
    settings: Settings,
    source: PostgresTableSource,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> ExtractReport:
    """Extract one postgres source by its mode (:func:`extract_incremental` or :func:`extract_snapshot`)."""
    if source.mode == "snapshot":
        return extract_snapshot(spark, settings, source)
    return extract_incremental(spark, settings, source, page_size=page_size)


class ExtractError(LakehouseError):
    """One or more sources failed to extract (the others landed): the message names each and why."""


@dataclass(frozen=True)
class ExtractOutcome:
    """One source's extract: its report, or the error that stopped it (the other sources went on)."""

    source: str
    report: ExtractReport | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _one_line(exc: BaseException, endpoint: Endpoint | None, limit: int = 600) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = endpoint.mask(text) if endpoint is not None else text
    text = text if isinstance(exc, LakehouseError) else f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def extract_sources(
    spark: SparkSession,
    settings: Settings,
    sources: Sequence[PostgresTableSource],
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> list[ExtractOutcome]:
    """Extract every source, each on its own: a failing source (connection, table, column, data) is
    reported in its outcome, named, and the others still land.

    Returns:
        One outcome per source, in order; :func:`raise_for_failures` turns the failed ones into an error.
    """
    outcomes = []
    for source in sources:
        name = source.name or source.bronze
        endpoint = None
        try:
            endpoint = source_endpoint(settings, source)
            report = extract_source(spark, settings, source, page_size=page_size)
            outcomes.append(ExtractOutcome(name, report=report))
        except Exception as exc:  # isolation is the point: any failure of one source is reported, named
            message = _one_line(exc, endpoint)
            if isinstance(exc, LakehouseError):
                log.error("extract %s failed: %s", name, message)
            else:  # not one of ours: the traceback helps
                log.exception("extract %s failed", name)
            if name not in message:
                message = f"postgres source {name!r}: {message}"
            outcomes.append(ExtractOutcome(name, error=message))
    return outcomes


def raise_for_failures(outcomes: Sequence[ExtractOutcome]) -> None:
    """Raise :class:`ExtractError` naming every failed source (after the others were extracted).

    Raises:
        ExtractError: at least one outcome holds an error.
    """
    failed = [o for o in outcomes if not o.ok]
    if failed:
        done = len(outcomes) - len(failed)
        raise ExtractError(
            f"{len(failed)} of {len(outcomes)} postgres sources failed ({done} extracted): "
            + "; ".join(str(o.error) for o in failed)
        )


def check_bronze(spark: SparkSession, settings: Settings, source: PostgresTableSource) -> None:
    """Check an extract's invariants on its bronze table, against its state.

    Incremental: no (watermark, key) position is in bronze twice, and the state's position is bronze's
    greatest. Snapshot: no key is in one snapshot twice, and the last snapshot is the state's.

    Raises:
        DataError: an invariant does not hold (the message names the source).
    """
    name = source.name or source.bronze
    bronze = spark.read.format("delta").load(settings.table_path("bronze", source.bronze))
    state = read_state(settings, name)
    if source.mode == "snapshot":
        repeated = bronze.groupBy("_snapshot", *source.key).count().where("count > 1").limit(1).count()
        if repeated:
            raise DataError(f"{name}: a key is in one snapshot of bronze/{source.bronze} twice")
        _, last = snapshot_hashes(bronze, source.key)
        if last > state.sequence:
            raise DataError(f"{name}: bronze holds snapshot {last}, the state says {state.sequence}")
        return
    versions = [source.watermark, *source.key]
    repeated = bronze.groupBy(*versions).count().where("count > 1").limit(1).count()
    if repeated:
        raise DataError(f"{name}: a row version is in bronze/{source.bronze} twice")
    endpoint = source_endpoint(settings, source)
    with connect_to(endpoint, autocommit=True, what=f"postgres source {name!r}") as conn:
        columns = describe_table(conn, source, endpoint).position(source)
    _, position = bronze_position(bronze, columns)
    state = _typed_position(state, columns)
    stored = None if state.key is None else (state.watermark, *state.key)
    if position != stored:
        raise DataError(f"{name}: the state's position {stored} is not bronze's last row {position}")


# --- what changed, cheaply --------------------------------------------------------------------------------


def source_fingerprint(settings: Settings, source: PostgresTableSource | PostgresCdcSource) -> str:
    """A short text that changes when the data a postgres or postgres_cdc source would land changes.

    For data-aware rebuilds: compare it with the one taken at the last build; equal means an extract now
    would land nothing new. It also changes with the source's declaration (table, mode, database).

    * ``postgres``, ``mode: incremental``: the row count and the greatest ``(watermark, key)`` — an index
      lookup plus a count.
    * ``postgres``, ``mode: snapshot``: :func:`table_checksum` — one scan of the table, exact for any
      UPDATE, INSERT or DELETE (statistics counters lag behind commits, so they are not used).
    * ``postgres_cdc``: the slot's confirmed position and the LSN of the first change it holds for its
      tables (``none`` when it holds none) — changes when changes arrive and when they are published.

    Args:
        settings: the environment (the default database).
        source: a registry source of kind ``postgres`` or ``postgres_cdc``.

    Returns:
        ``<kind>:<mode>:<hex digest>``, e.g. ``postgres:snapshot:3f9a…``.

    Raises:
        ConfigError: the source is of another kind, or its table or columns do not exist.
        ServiceError: the database does not answer.
    """
    from lakehouse.sources.cdc import fingerprint_parts  # Kafka clients only when asked for

    if isinstance(source, PostgresCdcSource):
        endpoint = source_endpoint(settings, source)
        with connect_to(endpoint, autocommit=True, what=f"postgres_cdc source {source.name!r}") as conn:
            parts = fingerprint_parts(conn, source)
        kind, mode = "postgres_cdc", "slot"
    elif isinstance(source, PostgresTableSource):
        endpoint = source_endpoint(settings, source)
        kind, mode = "postgres", source.mode
        with connect_to(endpoint, autocommit=True, what=f"postgres source {source.name!r}") as conn:
            _execute(conn, STABLE_SESSION)
            shape = describe_table(conn, source, endpoint)
            if source.mode == "snapshot":
                parts = [table_checksum(conn, shape)]
            else:
                columns = shape.position(source)
                order = ", ".join(f"{_ordered(c)} DESC" for c in columns)
                texts = ", ".join(f"{quote_identifier(c.name)}::text" for c in columns)
                count = _execute(conn, f"SELECT count(*) FROM {shape.relation}").fetchone()
                where = _after(source, shape, ExtractState("", ""))
                last = _execute(
                    conn, f"SELECT {texts} FROM {shape.relation} WHERE {where} ORDER BY {order} LIMIT 1"
                ).fetchone()
                parts = [str(count[0] if count else 0), json.dumps(list(last) if last else None)]
    else:
        raise ConfigError(f"source {getattr(source, 'name', '?')!r} is not a postgres or postgres_cdc source")
    identity = [kind, mode, endpoint.label, getattr(source, "table", ""), getattr(source, "slot", ""), *parts]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
    return f"{kind}:{mode}:{digest}"


# --- helpers for checks -----------------------------------------------------------------------------------


def drop_timezone(value: datetime) -> datetime:
    """A timestamp as naive UTC (how Spark hands timestamps back in a UTC session)."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
