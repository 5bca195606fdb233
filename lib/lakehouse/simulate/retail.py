"""The demo's retail database: its schema, the seed from real CDNOW purchases and the change generator.

It produces what the demo's ``postgres`` sources (the watermark extract, :mod:`lakehouse.sources.postgres`)
and its ``postgres_cdc`` source (:mod:`lakehouse.sources.cdc`) land in bronze; ``lakehouse retail seed`` and
``lakehouse retail changes`` run it, and :mod:`lakehouse.simulate.demo` fills the database on a first run.

The demo's schema (:data:`RETAIL_TABLES`) is four tables — ``customers``, ``products``, ``orders``,
``order_items`` — each with an ``updated_at`` that a trigger sets to ``clock_timestamp()`` on every UPDATE
(and a default on INSERT). ``clock_timestamp()`` rather than ``now()``: a second writer of a row waits for
the first one's row lock, so the statement time of its update is later — ``updated_at`` grows with every
version of a key, which makes it a version number that the extract and the CDC path share. Every table has
``REPLICA IDENTITY FULL`` so wal2json carries the old row of an UPDATE or DELETE. The extract depends on
none of this: it reads any table of any database the same way.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Final

import psycopg

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError, ServiceError
from lakehouse.sources.postgres_connection import settings_endpoint
from lakehouse.sources.registry import PostgresTableSource

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


# --- the demo's sources (tests build them) ----------------------------------------------------------------


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
