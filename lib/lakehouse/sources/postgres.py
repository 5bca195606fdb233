"""PostgreSQL into bronze: the extract of any table of any database (incremental or snapshot), and the
demo's operational database (a retail schema seeded from real CDNOW purchases, and its change generator).

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

The demo's schema (:data:`RETAIL_TABLES`) is four tables — ``customers``, ``products``, ``orders``,
``order_items`` — each with an ``updated_at`` that a trigger sets to ``clock_timestamp()`` on every UPDATE
(and a default on INSERT). ``clock_timestamp()`` rather than ``now()``: a second writer of a row waits for
the first one's row lock, so the statement time of its update is later — ``updated_at`` grows with every
version of a key, which makes it a version number that the extract and the CDC path share. Every table has
``REPLICA IDENTITY FULL`` so wal2json carries the old row of an UPDATE or DELETE. Nothing of the extract
depends on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Final

import psycopg
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError, LakehouseError, ServiceError
from lakehouse.sources.postgres_connection import (
    STABLE_SESSION,
    Endpoint,
    connect_to,
    settings_endpoint,
    source_endpoint,
)
from lakehouse.sources.registry import PostgresCdcSource, PostgresTableSource
from lakehouse.state import decode_typed, encode_typed, read_json, write_json
from lakehouse.tables import is_delta_table, table_version

log = logging.getLogger(__name__)

# --- the schema -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetailTable:
    """One table of the retail schema: its columns as (name, Spark type), its key and its DDL body."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    ddl: str

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]


RETAIL_TABLES: Final[dict[str, RetailTable]] = {
    "customers": RetailTable(
        "customers",
        (
            ("customer_id", "bigint"),
            ("name", "string"),
            ("email", "string"),
            ("country", "string"),
            ("segment", "string"),
            ("created_at", "timestamp"),
            ("updated_at", "timestamp"),
        ),
        ("customer_id",),
        """customer_id bigint PRIMARY KEY,
           name text NOT NULL,
           email text NOT NULL,
           country text NOT NULL,
           segment text NOT NULL,
           created_at timestamptz NOT NULL,
           updated_at timestamptz NOT NULL DEFAULT clock_timestamp()""",
    ),
    "products": RetailTable(
        "products",
        (
            ("product_id", "bigint"),
            ("name", "string"),
            ("category", "string"),
            ("unit_price", "decimal(10,2)"),
            ("updated_at", "timestamp"),
        ),
        ("product_id",),
        """product_id bigint PRIMARY KEY,
           name text NOT NULL,
           category text NOT NULL,
           unit_price numeric(10,2) NOT NULL CHECK (unit_price >= 0),
           updated_at timestamptz NOT NULL DEFAULT clock_timestamp()""",
    ),
    "orders": RetailTable(
        "orders",
        (
            ("order_id", "bigint"),
            ("customer_id", "bigint"),
            ("order_date", "date"),
            ("status", "string"),
            ("total_amount", "decimal(12,2)"),
            ("currency", "string"),
            ("updated_at", "timestamp"),
        ),
        ("order_id",),
        """order_id bigint PRIMARY KEY,
           customer_id bigint NOT NULL REFERENCES customers (customer_id),
           order_date date NOT NULL,
           status text NOT NULL CHECK (status IN ('placed', 'shipped', 'delivered', 'cancelled')),
           total_amount numeric(12,2) NOT NULL CHECK (total_amount >= 0),
           currency text NOT NULL DEFAULT 'USD',
           updated_at timestamptz NOT NULL DEFAULT clock_timestamp()""",
    ),
    "order_items": RetailTable(
        "order_items",
        (
            ("order_id", "bigint"),
            ("line_no", "int"),
            ("product_id", "bigint"),
            ("quantity", "int"),
            ("unit_price", "decimal(10,2)"),
            ("updated_at", "timestamp"),
        ),
        ("order_id", "line_no"),
        """order_id bigint NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
           line_no integer NOT NULL,
           product_id bigint NOT NULL REFERENCES products (product_id),
           quantity integer NOT NULL CHECK (quantity > 0),
           unit_price numeric(10,2) NOT NULL CHECK (unit_price >= 0),
           updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
           PRIMARY KEY (order_id, line_no)""",
    ),
}

ORDER_STATUSES: Final = ("placed", "shipped", "delivered", "cancelled")
SEGMENTS: Final = ("standard", "silver", "gold", "platinum")
CDNOW_FILE: Final = "datasets/CDNOW_master.txt"

_TOUCH_FUNCTION = """
CREATE OR REPLACE FUNCTION lakehouse_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$
"""


def connect(settings: Settings, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A psycopg connection to the environment's PostgreSQL (the demo's operational database).

    Raises:
        ServiceError: the server does not answer or refuses the login.
    """
    try:
        return psycopg.connect(settings_endpoint(settings).conninfo, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        pg = settings.postgres
        raise ServiceError(
            f"cannot connect to PostgreSQL at {pg.host}:{pg.port}/{pg.database} ({exc}): start it with "
            "`lakehouse up --only postgres` or fix the postgres section of the environment file"
        ) from exc


def create_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the retail tables, their ``updated_at`` triggers and keyset indexes (safe to run again)."""
    with conn.transaction():
        conn.execute(_TOUCH_FUNCTION)
        for table in RETAIL_TABLES.values():
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table.name} ({table.ddl})")  # type: ignore[arg-type]
            keys = ", ".join(table.key)
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {table.name}_keyset ON {table.name} (updated_at, {keys})"  # type: ignore[arg-type]
            )
            conn.execute(
                f"CREATE OR REPLACE TRIGGER {table.name}_touch BEFORE UPDATE ON {table.name} "  # type: ignore[arg-type]
                "FOR EACH ROW EXECUTE FUNCTION lakehouse_touch_updated_at()"
            )
            conn.execute(f"ALTER TABLE {table.name} REPLICA IDENTITY FULL")  # type: ignore[arg-type]


# --- the CDNOW seed ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purchase:
    """One line of CDNOW_master.txt: a customer's purchase of ``quantity`` CDs for ``amount`` dollars."""

    customer_id: int
    day: date
    quantity: int
    amount: Decimal


def cdnow_path() -> Path:
    """Where the CDNOW purchases file of the ``lifetimes`` package is (read by path, never imported).

    Raises:
        ConfigError: the package is not installed.
    """
    spec = find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the CDNOW data comes with the lifetimes package: pip install --no-deps lifetimes")
    path = Path(next(iter(spec.submodule_search_locations))) / CDNOW_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing: reinstall lifetimes (pip install --no-deps lifetimes)")
    return path


def parse_cdnow(lines: Iterable[str]) -> Iterator[Purchase]:
    """Parse CDNOW lines (whitespace-separated customer id, YYYYMMDD, quantity, dollars; header skipped).

    Raises:
        DataError: a line does not have the four fields or one does not parse.

    Example:
        >>> next(parse_cdnow([" 00001 19970101  1   11.77"]))
        Purchase(customer_id=1, day=datetime.date(1997, 1, 1), quantity=1, amount=Decimal('11.77'))
    """
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0] == "customer_id":
            continue
        try:
            customer, day, quantity, amount = fields
            yield Purchase(
                int(customer),
                datetime.strptime(day, "%Y%m%d").date(),
                int(quantity),
                Decimal(amount).quantize(Decimal("0.01")),
            )
        except (ValueError, ArithmeticError) as exc:
            raise DataError(f"CDNOW line {number} is not 'customer date quantity amount': {line!r}") from exc


def read_cdnow(limit: int | None = None) -> list[Purchase]:
    """The first ``limit`` CDNOW purchases (all 69,659 when None)."""
    with cdnow_path().open(encoding="ascii") as handle:
        purchases = parse_cdnow(handle)
        return [p for _, p in zip(range(limit), purchases, strict=False)] if limit else list(purchases)


_FIRST = tuple("Ada Ben Chloe David Emma Felix Grace Hugo Iris Jack Kate Liam Maya Noah Olivia Paul".split())
_LAST = tuple("Adams Baker Clark Diaz Evans Fischer Garcia Hughes Ito Jones Khan Lopez Miller Patel".split())
_COUNTRIES = {"US": 0.78, "CA": 0.08, "GB": 0.05, "DE": 0.03, "JP": 0.03, "AU": 0.03}
_SEGMENT_WEIGHT = (0.55, 0.25, 0.15, 0.05)
_GENRES = ("rock", "pop", "jazz", "classical", "country", "hip-hop", "electronic", "soundtrack")
_WORDS_A = tuple("Midnight Electric Silver Golden Broken Quiet Wild Blue Neon Lost".split())
_WORDS_B = tuple("Echoes Highway Dreams Rivers Hearts Skies Streets Letters Fires Tides".split())
_CATALOG_SIZE = 120
_SEED = 19970101  # dimensions are the same on every machine


@dataclass(frozen=True)
class Product:
    product_id: int
    name: str
    category: str
    unit_price: Decimal


def product_catalog() -> list[Product]:
    """The CD catalog (deterministic): 120 albums over 8 genres, $7.99-$24.99."""
    rng = random.Random(_SEED)
    catalog = []
    for number in range(1, _CATALOG_SIZE + 1):
        name = f"{rng.choice(_WORDS_A)} {rng.choice(_WORDS_B)} Vol. {number}"
        price = Decimal(rng.choice(range(8, 26))) - Decimal("0.01")
        catalog.append(Product(number, name, _GENRES[(number - 1) % len(_GENRES)], price))
    return catalog


def _customer(customer_id: int, since: date) -> tuple[Any, ...]:
    rng = random.Random(_SEED * 31 + customer_id)
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    country = rng.choices(list(_COUNTRIES), weights=list(_COUNTRIES.values()))[0]
    segment = rng.choices(SEGMENTS, weights=_SEGMENT_WEIGHT)[0]
    email = f"{first}.{last}.{customer_id}@example.com".lower()
    created = datetime.combine(since, time(), tzinfo=UTC)
    return customer_id, f"{first} {last}", email, country, segment, created


def split_order(
    order_id: int, quantity: int, amount: Decimal, catalog: Sequence[Product], rng: random.Random
) -> list[tuple[int, int, int, Decimal]]:
    """Split one CDNOW purchase over 1-3 distinct products: ``(line_no, product_id, quantity, unit_price)``.

    Quantities add up to ``quantity``; line amounts are shared in proportion to list price, so
    ``sum(quantity * unit_price)`` equals ``amount`` to within a cent per line.
    """
    lines = min(quantity, rng.choices((1, 2, 3), weights=(0.6, 0.3, 0.1))[0])
    cuts = sorted(rng.sample(range(1, quantity), lines - 1)) if lines > 1 else []
    quantities = [b - a for a, b in zip([0, *cuts], [*cuts, quantity], strict=True)]
    products = rng.sample(list(catalog), lines)
    weights = [q * p.unit_price for q, p in zip(quantities, products, strict=True)]
    total = sum(weights) or Decimal(1)
    cent = Decimal("0.01")
    return [
        (line, p.product_id, q, (amount * w / total / q).quantize(cent, ROUND_HALF_UP))
        for line, (q, p, w) in enumerate(zip(quantities, products, weights, strict=True), start=1)
    ]


@dataclass(frozen=True)
class SeedReport:
    """What :func:`seed` loaded."""

    customers: int
    products: int
    orders: int
    order_items: int
    seeded_at: datetime


def seed(settings: Settings, limit: int | None = None, *, replace: bool = False) -> SeedReport:
    """Create the schema and load the CDNOW purchases (first ``limit`` lines) with generated dimensions.

    Each CDNOW line becomes an order (``order_id`` = its line number, status ``delivered``, the real date and
    amount); each customer gets a seeded name, email, country and segment; order items split the quantity
    and amount over products of a generated CD catalog. Everything is loaded with COPY in one transaction
    and shares one ``updated_at`` (the ties the keyset extract must survive).

    Args:
        settings: the environment (PostgreSQL connection).
        limit: load only the first ``limit`` purchases (tests); all 69,659 when None.
        replace: empty the tables first; without it, seeding a database that has orders is refused.

    Raises:
        DataError: the tables already hold data and ``replace`` is False.
        ServiceError: PostgreSQL is not reachable.
    """
    purchases = read_cdnow(limit)
    catalog = product_catalog()
    seeded_at = datetime.now(UTC)
    rng = random.Random(_SEED)
    with connect(settings) as conn:
        create_schema(conn)
        with conn.transaction():
            row = conn.execute("SELECT count(*) FROM orders").fetchone()
            if row and row[0] and not replace:
                raise DataError(
                    f"the retail tables already hold {row[0]} orders: seed with replace=True "
                    "(`lakehouse retail seed --replace`) to load them again"
                )
            conn.execute("TRUNCATE order_items, orders, products, customers")
            first_seen: dict[int, date] = {}
            for purchase in purchases:
                first_seen.setdefault(purchase.customer_id, purchase.day)
            with conn.cursor().copy(
                "COPY customers (customer_id, name, email, country, segment, created_at, updated_at) "
                "FROM STDIN"
            ) as copy:
                for customer_id, since in first_seen.items():
                    copy.write_row((*_customer(customer_id, since), seeded_at))
            with conn.cursor().copy(
                "COPY products (product_id, name, category, unit_price, updated_at) FROM STDIN"
            ) as copy:
                for product in catalog:
                    copy.write_row(
                        (product.product_id, product.name, product.category, product.unit_price, seeded_at)
                    )
            items = 0
            with conn.cursor().copy(
                "COPY orders (order_id, customer_id, order_date, status, total_amount, currency, updated_at) "
                "FROM STDIN"
            ) as copy:
                for order_id, p in enumerate(purchases, start=1):
                    copy.write_row((order_id, p.customer_id, p.day, "delivered", p.amount, "USD", seeded_at))
            with conn.cursor().copy(
                "COPY order_items (order_id, line_no, product_id, quantity, unit_price, updated_at) "
                "FROM STDIN"
            ) as copy:
                for order_id, p in enumerate(purchases, start=1):
                    for line in split_order(order_id, p.quantity, p.amount, catalog, rng):
                        copy.write_row((order_id, *line, seeded_at))
                        items += 1
        conn.execute("ANALYZE")
    report = SeedReport(len(first_seen), len(catalog), len(purchases), items, seeded_at)
    log.info("seeded %s", report)
    return report


def ensure_seeded(settings: Settings, limit: int | None = None) -> SeedReport | None:
    """Seed the retail tables unless they hold orders already (a first run). Returns what it seeded."""
    with connect(settings) as conn:
        create_schema(conn)
        row = conn.execute("SELECT count(*) FROM orders").fetchone()
    if row and row[0]:
        return None
    return seed(settings, limit)


# --- the change generator ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewOrder:
    order_id: int
    customer_id: int
    order_date: date
    items: tuple[tuple[int, int, int, Decimal], ...]

    @property
    def total(self) -> Decimal:
        return sum((q * price for _, _, q, price in self.items), Decimal("0.00"))


@dataclass(frozen=True)
class StatusChange:
    order_id: int
    status: str


@dataclass(frozen=True)
class CustomerUpdate:
    customer_id: int
    email: str | None
    segment: str | None


@dataclass(frozen=True)
class DeleteOrder:
    order_id: int


Change = NewOrder | StatusChange | CustomerUpdate | DeleteOrder


@dataclass
class RetailState:
    """What the change generator needs to know about the database (mutated as changes are planned)."""

    customers: dict[int, tuple[str, str]]  # id -> (email, segment)
    products: dict[int, Decimal]
    next_order_id: int
    open_orders: dict[int, str] = field(default_factory=dict)  # placed / shipped
    cancelled: list[int] = field(default_factory=list)


def load_state(conn: psycopg.Connection[Any]) -> RetailState:
    """Read the state the change generator plans from (in key order, so a plan is reproducible)."""
    customers = {
        int(r[0]): (str(r[1]), str(r[2]))
        for r in conn.execute("SELECT customer_id, email, segment FROM customers ORDER BY customer_id")
    }
    products = {int(r[0]): Decimal(r[1]) for r in conn.execute("SELECT product_id, unit_price FROM products")}
    row = conn.execute("SELECT coalesce(max(order_id), 0) + 1 FROM orders").fetchone()
    open_orders = {
        int(r[0]): str(r[1])
        for r in conn.execute(
            "SELECT order_id, status FROM orders WHERE status IN ('placed', 'shipped') ORDER BY order_id"
        )
    }
    cancelled = [
        int(r[0]) for r in conn.execute("SELECT order_id FROM orders WHERE status = 'cancelled' ORDER BY 1")
    ]
    return RetailState(customers, products, int(row[0]) if row else 1, open_orders, cancelled)


_CHANGE_WEIGHT = {"new_order": 0.35, "status": 0.35, "customer": 0.2, "delete": 0.1}


def plan_changes(state: RetailState, count: int, seed: int, order_date: date) -> list[Change]:
    """Plan ``count`` changes on ``state`` (pure and deterministic: same state and seed, same plan).

    Mix: new orders with 1-3 items (status ``placed``), status moves (placed → shipped or cancelled,
    shipped → delivered), customer updates (new email and/or segment: what SCD2 tracks) and deletes of
    cancelled orders. A kind with nothing to act on falls back to a new order.

    Raises:
        DataError: the state has no customers or products (seed first).
    """
    if not state.customers or not state.products:
        raise DataError("the retail tables have no customers or products: run `lakehouse retail seed` first")
    rng = random.Random(seed)
    customer_ids = sorted(state.customers)
    product_ids = sorted(state.products)
    plan: list[Change] = []
    for _ in range(count):
        kind = rng.choices(list(_CHANGE_WEIGHT), weights=list(_CHANGE_WEIGHT.values()))[0]
        if kind == "status" and state.open_orders:
            order_id = rng.choice(sorted(state.open_orders))
            if state.open_orders[order_id] == "placed":
                status = "cancelled" if rng.random() < 0.2 else "shipped"
            else:
                status = "delivered"
            if status in ("shipped",):
                state.open_orders[order_id] = status
            else:
                del state.open_orders[order_id]
                if status == "cancelled":
                    state.cancelled.append(order_id)
            plan.append(StatusChange(order_id, status))
        elif kind == "customer":
            customer_id = rng.choice(customer_ids)
            email, segment = state.customers[customer_id]
            new_email = new_segment = None
            if rng.random() < 0.6:
                local, _, _ = email.partition("@")
                new_email = f"{local.split('+')[0]}+{rng.randrange(1000, 9999)}@example.net"
            if new_email is None or rng.random() < 0.5:
                choices = [s for s in SEGMENTS if s != segment]
                new_segment = rng.choice(choices)
            state.customers[customer_id] = (new_email or email, new_segment or segment)
            plan.append(CustomerUpdate(customer_id, new_email, new_segment))
        elif kind == "delete" and state.cancelled:
            order_id = state.cancelled.pop(rng.randrange(len(state.cancelled)))
            plan.append(DeleteOrder(order_id))
        else:
            order_id = state.next_order_id
            state.next_order_id += 1
            lines = rng.choices((1, 2, 3), weights=(0.6, 0.3, 0.1))[0]
            items = tuple(
                (line, product_id, rng.choice((1, 1, 1, 2, 3)), state.products[product_id])
                for line, product_id in enumerate(rng.sample(product_ids, lines), start=1)
            )
            state.open_orders[order_id] = "placed"
            plan.append(NewOrder(order_id, rng.choice(customer_ids), order_date, items))
    return plan


def apply_change(conn: psycopg.Connection[Any], change: Change) -> None:
    """Apply one planned change in its own transaction."""
    with conn.transaction():
        if isinstance(change, NewOrder):
            conn.execute(
                "INSERT INTO orders (order_id, customer_id, order_date, status, total_amount, currency) "
                "VALUES (%s, %s, %s, 'placed', %s, 'USD')",
                (change.order_id, change.customer_id, change.order_date, change.total),
            )
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [(change.order_id, *item) for item in change.items],
                )
        elif isinstance(change, StatusChange):
            conn.execute(
                "UPDATE orders SET status = %s WHERE order_id = %s", (change.status, change.order_id)
            )
        elif isinstance(change, CustomerUpdate):
            conn.execute(
                "UPDATE customers SET email = coalesce(%s, email), segment = coalesce(%s, segment) "
                "WHERE customer_id = %s",
                (change.email, change.segment, change.customer_id),
            )
        else:
            conn.execute("DELETE FROM orders WHERE order_id = %s", (change.order_id,))


@dataclass(frozen=True)
class ChangeReport:
    """What :func:`generate_changes` applied: counts by kind, and the keys it touched."""

    by_kind: dict[str, int]
    changes: tuple[Change, ...]

    @property
    def total(self) -> int:
        return len(self.changes)


def generate_changes(
    settings: Settings, count: int, seed: int, *, order_date: date | None = None
) -> ChangeReport:
    """Apply ``count`` realistic changes to the retail tables, one transaction each.

    Args:
        settings: the environment (PostgreSQL connection).
        count: how many changes.
        seed: the random seed; the same seed on the same database state gives the same changes.
        order_date: the date of new orders (default: today, UTC).

    Returns:
        The changes applied, and their counts by kind.
    """
    if count < 0:
        raise ConfigError(f"count must be 0 or more (got {count})")
    # Autocommit: each change is then its own transaction (not a savepoint of one long transaction).
    with connect(settings, autocommit=True) as conn:
        try:
            state = load_state(conn)
        except psycopg.errors.UndefinedTable as exc:
            raise DataError("the retail tables do not exist: run `lakehouse retail seed` first") from exc
        plan = plan_changes(state, count, seed, order_date or datetime.now(UTC).date())
        for change in plan:
            apply_change(conn, change)
    kinds: dict[str, int] = {}
    for change in plan:
        kinds[type(change).__name__] = kinds.get(type(change).__name__, 0) + 1
    return ChangeReport(kinds, tuple(plan))


def _execute(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] | None = None) -> Any:
    # Queries here are built from quoted identifiers and typed literals (see quote_identifier/sql_literal).
    return conn.execute(query, params)


# --- the table a source reads -----------------------------------------------------------------------------

EXTRACT_COLUMNS: Final = ("_extracted_at", "_batch_id", "_source_table")
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

    Every position value is a literal of its column's type; rows whose watermark or key is NULL are left
    out (a NULL never compares, so no position could pass them; :func:`extract_incremental` counts them).

    Example:
        >>> src = PostgresTableSource(kind="postgres", table="sales.orders", key=["order_id"], bronze="o")
        >>> shape = TableShape('"sales"."orders"', {
        ...     "updated_at": PgColumn("updated_at", "timestamp with time zone", "timestamptz"),
        ...     "order_id": PgColumn("order_id", "bigint", "int")})
        >>> state = ExtractState("o", "app", 1, datetime(2024, 1, 1, tzinfo=UTC), (7,))
        >>> print(keyset_query(src, shape, state, 10))  # doctest: +NORMALIZE_WHITESPACE
        SELECT * FROM "sales"."orders" WHERE ("updated_at", "order_id") >
        ('2024-01-01T00:00:00+00:00'::timestamp with time zone, '7'::bigint)
        ORDER BY "updated_at", "order_id" LIMIT 10
    """
    if page_size < 1:
        raise ConfigError(f"page_size must be at least 1 (got {page_size})")
    columns = shape.position(source)
    order = ", ".join(_ordered(c) for c in columns)
    where = _after(source, shape, state)
    return f"SELECT * FROM {shape.relation} WHERE {where} ORDER BY {order} LIMIT {page_size}"


def _after(source: PostgresTableSource, shape: TableShape, state: ExtractState) -> str:
    """The predicate of rows after the state's position (all rows with a complete position when none)."""
    columns = shape.position(source)
    nullable = [f"{quote_identifier(c.name)} IS NOT NULL" for c in columns if not c.not_null]
    if state.watermark is None or state.key is None:
        return " AND ".join(nullable) or "TRUE"
    if len(state.key) != len(source.key):
        raise ConfigError(
            f"the stored position of {source.name} has {len(state.key)} key values but the source has "
            f"{len(source.key)} key columns: reset the state (delete {source.name}.json) to extract again"
        )
    values = (state.watermark, *state.key)
    position = ", ".join(sql_literal(v, c.type) for v, c in zip(values, columns, strict=True))
    # A row comparison is NULL when a column is: such rows are never "after" a position.
    return f"({', '.join(_ordered(c) for c in columns)}) > ({position})"


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
    incremental extract cannot reach (a NULL watermark or key).
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
    nullable = [f"{quote_identifier(c.name)} IS NULL" for c in columns if not c.not_null]
    if not nullable:
        return 0
    row = _execute(conn, f"SELECT count(*) FROM {shape.relation} WHERE {' OR '.join(nullable)}").fetchone()
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
            log.warning("extract %s: %d rows have a NULL watermark or key: not extracted", name, nulls)
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


def snapshot_query(shape: TableShape) -> str:
    """The SQL that reads the whole table with each row's hash (``_row_hash``: md5 of the row's text).

    Example:
        >>> snapshot_query(TableShape('"public"."parcels"', {}))
        'SELECT t.*, md5(ROW(t.*)::text) AS "_row_hash" FROM "public"."parcels" AS t'
    """
    return f'SELECT t.*, md5({_row_text()}) AS "_row_hash" FROM {shape.relation} AS t'


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
        return _snapshot_report(spark, source, bronze, state, (), {}, unchanged=True)
    current = _align(
        _read_query(spark, endpoint, snapshot_query(shape)), _bronze_types(spark, bronze, exists)
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
    return _snapshot_report(spark, source, bronze, state, (batch_id,) if counts else (), counts)


def _snapshot_report(
    spark: SparkSession,
    source: PostgresTableSource,
    bronze: str,
    state: ExtractState,
    batch_ids: tuple[str, ...],
    counts: dict[str, int],
    *,
    unchanged: bool = False,
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


# --- the demo's sources (tests build them) ----------------------------------------------------------


def retail_sources(prefix: str = "retail_", bronze_prefix: str = "retail_") -> list[PostgresTableSource]:
    """Registry-shaped sources for the four retail tables (what sources.yaml declares; tests build them)."""
    return [
        PostgresTableSource(
            name=f"{prefix}{table.name}",
            kind="postgres",
            table=table.name,
            key=list(table.key),
            watermark="updated_at",
            bronze=f"{bronze_prefix}{table.name}",
        )
        for table in RETAIL_TABLES.values()
    ]


def table_rows(settings: Settings, table: str) -> list[tuple[Any, ...]]:
    """All rows of a retail table in key order (for checks and tests)."""
    spec = RETAIL_TABLES.get(table)
    if spec is None:
        raise ConfigError(f"unknown retail table {table!r} (known: {sorted(RETAIL_TABLES)})")
    columns = ", ".join(spec.column_names)
    with connect(settings) as conn:
        return list(conn.execute(f"SELECT {columns} FROM {spec.name} ORDER BY {', '.join(spec.key)}"))  # type: ignore[arg-type]


def drop_timezone(value: datetime) -> datetime:
    """A timestamp as naive UTC (how Spark hands timestamps back in a UTC session)."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
