"""Log-based change data capture: PostgreSQL logical decoding (wal2json) → Kafka.

One cycle:

1. **peek** the slot (``pg_logical_slot_peek_changes``, wal2json ``format-version`` 2 with LSN, timestamp
   and primary key) — whole transactions, the slot does not move;
2. **produce** every row change as one JSON record, keyed ``<schema>.<table>:<primary key as JSON>``, with an
   idempotent producer (``acks=all``). One key always hashes to one partition, so the changes of a row stay
   in commit order; the record carries the change LSN (``lsn``) and its transaction's commit LSN
   (``commit_lsn``) for silver to order and deduplicate by;
3. **flush**, and only after every record is acknowledged
4. **advance** the slot past the last transaction produced (``pg_replication_slot_advance``).

A crash between 2 and 4 sends the same changes again on the next run — at-least-once; silver keeps the
latest LSN per key, so a re-delivered change changes nothing.

The Kafka value is wal2json's own change record (``action``, ``lsn``, ``timestamp``, ``schema``, ``table``,
``columns``, ``identity``, ``pk``) plus ``commit_lsn`` and ``slot``: bronze keeps what the database said.

Any database and any tables: a source names its ``connection`` (default: the environment's PostgreSQL) and
its ``tables`` as ``table``, ``schema.table``, ``schema.*`` or ``*.table`` (none: every table). Nothing here
knows the demo's tables.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from kafka import KafkaProducer
from kafka.errors import KafkaError

from lakehouse import kafka_clients
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError, ServiceError
from lakehouse.sources.postgres_connection import connect_to, settings_endpoint, source_endpoint
from lakehouse.sources.registry import PostgresCdcSource

log = logging.getLogger(__name__)

PLUGIN: Final = "wal2json"
DEFAULT_MAX_CHANGES: Final = 5_000
_FLUSH_TIMEOUT_S: Final = 60.0


def lsn_to_int(lsn: str) -> int:
    """A PostgreSQL LSN (``X/Y`` in hex) as one 64-bit integer, so LSNs compare as numbers.

    Raises:
        DataError: the text is not an LSN.

    Example:
        >>> lsn_to_int("1/0000000A")
        4294967306
    """
    high, sep, low = lsn.partition("/")
    try:
        if not sep:
            raise ValueError(lsn)
        return (int(high, 16) << 32) + int(low, 16)
    except ValueError as exc:
        raise DataError(f"{lsn!r} is not a PostgreSQL LSN (X/Y in hex)") from exc


_WAL2JSON_SPECIAL: Final = (" ", "'", ",", ".", "*")


def _wal2json_name(part: str) -> str:
    if part == "*":
        return part
    for char in _WAL2JSON_SPECIAL:  # wal2json reads these escaped with a backslash
        part = part.replace(char, "\\" + char)
    return part


def qualified_tables(tables: Iterable[str]) -> list[str]:
    """Table names as ``schema.table`` (``public`` when no schema is given), for wal2json's ``add-tables``.

    ``*`` as a whole part is wal2json's wildcard (``sales.*``: every table of ``sales``); spaces, quotes and
    commas in a name are escaped as wal2json reads them.

    Raises:
        ConfigError: a name is empty, has more than two parts, or holds a backslash or double quote.

    Example:
        >>> qualified_tables(["orders", "sales.*", "crm.Order Lines"])
        ['public.orders', 'sales.*', 'crm.Order\\\\ Lines']
    """
    out = []
    for table in tables:
        parts = table.split(".")
        if len(parts) > 2 or not all(p.strip() for p in parts) or any(c in table for c in '\\"\x00'):
            raise ConfigError(f"CDC table {table!r} must be 'table', 'schema.table', 'schema.*' or '*.table'")
        if len(parts) == 1:
            parts = ["public", *parts]
        out.append(".".join(_wal2json_name(p) for p in parts))
    return out


def wal2json_options(tables: Sequence[str], *, transactions: bool = True) -> list[str]:
    """The wal2json option list (name, value, name, value …) for the peek call (no tables: all of them)."""
    options = [
        "format-version", "2",
        "include-lsn", "1",
        "include-timestamp", "1",
        "include-pk", "1",
        "include-transaction", "1" if transactions else "0",
    ]  # fmt: skip
    if tables:
        options += ["add-tables", ",".join(qualified_tables(tables))]
    return options


@dataclass(frozen=True)
class ChangeRecord:
    """One row change, ready for Kafka."""

    key: bytes
    value: bytes
    table: str
    action: str
    lsn: int


@dataclass(frozen=True)
class Transaction:
    """A decoded transaction: its row changes and the slot position just after its commit."""

    changes: tuple[ChangeRecord, ...]
    commit_lsn: str
    end_lsn: str


def record_key(change: dict[str, Any]) -> str:
    """The Kafka key of a wal2json v2 change: ``schema.table:[pk values]`` (the new row, or the old for D).

    Raises:
        DataError: the change has no primary key information (a table without a primary key).
    """
    pk = [entry["name"] for entry in change.get("pk") or []]
    if not pk:
        raise DataError(
            f"the change of {change.get('schema')}.{change.get('table')} has no primary key: CDC needs a "
            "primary key on every captured table"
        )
    row = change.get("columns") if change.get("action") in ("I", "U") else change.get("identity")
    values = {entry["name"]: entry.get("value") for entry in row or []}
    missing = [name for name in pk if name not in values]
    if missing:
        raise DataError(f"the change of {change.get('table')} lacks its key column(s) {missing}")
    return f"{change['schema']}.{change['table']}:" + json.dumps([values[name] for name in pk])


def decode_transactions(rows: Iterable[tuple[str, str]], slot: str) -> list[Transaction]:
    """Group peeked ``(lsn, data)`` rows into transactions of Kafka-ready change records.

    The slot position after a transaction is the ``lsn`` column of its commit row (the end of the commit
    record), which is what ``pg_replication_slot_advance`` needs to skip it next time. Rows after the last
    commit (there are none: peek returns whole transactions) would be left for the next cycle.
    """
    transactions: list[Transaction] = []
    pending: list[dict[str, Any]] = []
    for position, data in rows:
        change = json.loads(data)
        action = change.get("action")
        if action == "B":
            pending = []
        elif action == "C":
            commit_lsn = str(change["lsn"])
            records = []
            for item in pending:
                item = {**item, "commit_lsn": commit_lsn, "slot": slot}
                records.append(
                    ChangeRecord(
                        key=record_key(item).encode(),
                        value=json.dumps(item, separators=(",", ":")).encode(),
                        table=f"{item['schema']}.{item['table']}",
                        action=str(item["action"]),
                        lsn=lsn_to_int(str(item["lsn"])),
                    )
                )
            transactions.append(Transaction(tuple(records), commit_lsn, position))
            pending = []
        elif action in ("I", "U", "D"):
            pending.append(change)
        else:  # T (truncate) and M (message) are not row changes: logged, not captured
            log.warning("wal2json %s record on slot %s is not captured: %s", action, slot, data[:200])
    return transactions


def _connect(settings: Settings, source: PostgresCdcSource | None) -> psycopg.Connection[Any]:
    endpoint = source_endpoint(settings, source) if source is not None else settings_endpoint(settings)
    what = f"postgres_cdc source {source.name!r}" if source is not None else ""
    return connect_to(endpoint, autocommit=True, what=what)


def fingerprint_parts(conn: psycopg.Connection[Any], source: PostgresCdcSource) -> list[str]:
    """What :func:`lakehouse.sources.postgres.source_fingerprint` hashes for a CDC source: the slot's
    confirmed position and the LSN of the first change it holds for the source's tables (``none``).

    Peeks at most one transaction's changes (the slot does not move); no slot yet: the server's WAL
    position, so the fingerprint changes once the slot exists.
    """
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (source.slot,)
    ).fetchone()
    if row is None:
        wal = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        return ["no-slot", str(wal[0]) if wal else ""]
    options = wal2json_options(source.tables, transactions=False)
    placeholders = ", ".join(["%s"] * len(options))
    first = conn.execute(
        f"SELECT lsn::text FROM pg_logical_slot_peek_changes(%s, NULL, 1, {placeholders}) LIMIT 1",  # type: ignore[arg-type]
        (source.slot, *options),
    ).fetchone()
    return [str(row[0]), str(first[0]) if first else "none"]


def ensure_slot(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Create the logical replication slot (wal2json) unless it exists. Returns True if it created it."""
    row = conn.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is not None:
        if row[0] != PLUGIN:
            raise ConfigError(f"slot {slot!r} exists with plugin {row[0]!r}: drop it or name another slot")
        return False
    conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
    log.info("created logical replication slot %s (%s)", slot, PLUGIN)
    return True


def drop_slot(settings: Settings, slot: str, source: PostgresCdcSource | None = None) -> None:
    """Drop a replication slot if it exists (it holds WAL on the server for as long as it lives).

    ``source`` names the database (its ``connection``); the environment's PostgreSQL by default.
    """
    with _connect(settings, source) as conn:
        if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def peek_changes(
    conn: psycopg.Connection[Any], source: PostgresCdcSource, max_changes: int = DEFAULT_MAX_CHANGES
) -> list[Transaction]:
    """Decode what the slot holds (whole transactions, about ``max_changes`` rows) without consuming it."""
    options = wal2json_options(source.tables)
    placeholders = ", ".join(["%s"] * len(options))
    rows = conn.execute(
        f"SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s, {placeholders})",  # type: ignore[arg-type]
        (source.slot, max_changes, *options),
    ).fetchall()
    return decode_transactions(((str(r[0]), str(r[1])) for r in rows), source.slot)


def advance_slot(conn: psycopg.Connection[Any], slot: str, lsn: str) -> None:
    """Move the slot to ``lsn``: the transactions up to it are consumed (never decoded again)."""
    conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, lsn))


def cdc_producer(bootstrap_servers: str) -> KafkaProducer:
    """An idempotent producer (``acks=all``): retries never duplicate or reorder records of a partition."""
    return kafka_clients.producer(bootstrap_servers, "lakehouse-cdc", linger_ms=10)


def publish(producer: KafkaProducer, topic: str, transactions: Sequence[Transaction]) -> int:
    """Send every change of ``transactions`` to ``topic`` and wait until all are acknowledged.

    Returns:
        The number of records sent.

    Raises:
        ServiceError: a send failed or did not complete (nothing may be advanced then).
    """
    failures: list[BaseException] = []
    sent = 0
    try:
        for transaction in transactions:
            for change in transaction.changes:
                future = producer.send(topic, key=change.key, value=change.value)
                future.add_errback(failures.append)
                sent += 1
        producer.flush(timeout=_FLUSH_TIMEOUT_S)
    except KafkaError as exc:
        failures.append(exc)
    if failures:
        raise ServiceError(
            f"publishing CDC changes to {topic!r} failed ({failures[0]}): the slot was not advanced, so the "
            "next run sends them again; check the broker and the topic"
        ) from failures[0]
    return sent


@dataclass
class CdcReport:
    """What :func:`run_cdc` published."""

    source: str
    topic: str
    cycles: int = 0
    transactions: int = 0
    changes: int = 0
    by_table: dict[str, int] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)
    last_lsn: str | None = None

    def add(self, transactions: Sequence[Transaction], sent: int) -> None:
        tables: Counter[str] = Counter(self.by_table)
        actions: Counter[str] = Counter(self.by_action)
        for transaction in transactions:
            for change in transaction.changes:
                tables[change.table] += 1
                actions[change.action] += 1
        self.by_table, self.by_action = dict(tables), dict(actions)
        self.transactions += len(transactions)
        self.changes += sent
        if transactions:
            self.last_lsn = transactions[-1].end_lsn


def capture_once(
    conn: psycopg.Connection[Any],
    producer: KafkaProducer,
    source: PostgresCdcSource,
    *,
    max_changes: int = DEFAULT_MAX_CHANGES,
    report: CdcReport | None = None,
) -> int:
    """One peek → produce → flush → advance cycle. Returns the number of transactions it consumed."""
    transactions = peek_changes(conn, source, max_changes)
    if not transactions:
        return 0
    sent = publish(producer, source.topic, transactions)
    advance_slot(conn, source.slot, transactions[-1].end_lsn)
    if report is not None:
        report.add(transactions, sent)
        report.cycles += 1
    log.info(
        "cdc %s: %d transactions, %d changes, slot at %s",
        source.name,
        len(transactions),
        sent,
        transactions[-1].end_lsn,
    )
    return len(transactions)


def run_cdc(
    settings: Settings,
    source: PostgresCdcSource,
    once: bool = True,
    *,
    max_changes: int = DEFAULT_MAX_CHANGES,
    poll_seconds: float = 1.0,
    stop: threading.Event | None = None,
) -> CdcReport:
    """Publish the database's changes to Kafka: drain the slot and stop (``once``) or keep following it.

    Args:
        settings: the environment (PostgreSQL, Kafka).
        source: a registry source of kind ``postgres_cdc`` (slot, topic, tables).
        once: True → stop when the slot is drained; False → poll every ``poll_seconds`` until ``stop`` is set
            (or Ctrl-C).
        max_changes: rows decoded per cycle (whole transactions are always kept together).
        poll_seconds: the pause between polls of an empty slot when following.
        stop: an event that ends a following run.

    Returns:
        Counts of what was published and the slot position reached.
    """
    if not isinstance(source, PostgresCdcSource):
        raise ConfigError(f"run_cdc needs a postgres_cdc source, got {type(source).__name__}")
    report = CdcReport(source=source.name or source.slot, topic=source.topic)
    producer = cdc_producer(settings.kafka.bootstrap_servers)
    try:
        with _connect(settings, source) as conn:
            ensure_slot(conn, source.slot)
            while True:
                consumed = capture_once(conn, producer, source, max_changes=max_changes, report=report)
                if consumed:
                    continue
                if once or (stop is not None and stop.is_set()):
                    break
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        log.info("cdc %s stopped; the slot keeps the position", report.source)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"postgres_cdc source {report.source!r}: the connection's role may not use replication slots "
            f"({str(exc).strip()}): grant it REPLICATION (ALTER ROLE … REPLICATION) or connect as another"
        ) from exc
    except psycopg.Error as exc:
        raise ServiceError(
            f"postgres_cdc source {report.source!r}: logical decoding failed ({str(exc).strip()}): the "
            "server needs wal_level=logical and the wal2json plugin"
        ) from exc
    finally:
        producer.close(timeout=5)
    return report
