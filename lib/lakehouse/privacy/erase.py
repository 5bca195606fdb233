"""Erase one data subject from every lake layer, driven by the catalog, and leave an audit record.

For each table whose contract declares a subject of the requested kind (``subjects:`` in
``catalog/<layer>/<name>.yaml``), the erasure runs::

    DELETE FROM delta.`…` WHERE <subject predicate>
    REORG TABLE delta.`…` APPLY (PURGE)      -- rewrite files whose rows were only marked deleted (DVs)
    VACUUM delta.`…` RETAIN <h> HOURS         -- settings.privacy.erasure_retention_hours (0: now)

so that time travel to an earlier version no longer returns the subject (the versions whose files are gone
can no longer be read). A subject may be matched by id (``customer_id``, a JSON path into a raw payload) or,
in tokenized tables, by the token of the subject's email, looked up in the restricted layers first.

One row per touched table is appended to ``audit.erasures``; the subject id itself is stored only as its
HMAC token.
"""

from __future__ import annotations

import getpass
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from pyspark.sql import SparkSession
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType, TimestampType

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.governance.catalog import Catalog, SubjectRef, TableContract, load_catalog
from lakehouse.privacy import PrivacyError
from lakehouse.privacy.tokenize import token
from lakehouse.tables import delta_ref

log = logging.getLogger(__name__)

SUBJECT_KINDS: Final = ("customer", "user")
ERASURES: Final = StructType(
    [
        StructField("erasure_id", StringType(), False),
        StructField("subject_kind", StringType(), False),
        StructField("subject_token", StringType(), False),
        StructField("reason", StringType()),
        StructField("table", StringType(), False),
        StructField("rows_deleted", LongType(), False),
        StructField("version_before", LongType()),
        StructField("version_after", LongType()),
        StructField("retention_hours", IntegerType(), False),
        StructField("erased_at", TimestampType(), False),
        StructField("requested_by", StringType()),
    ]
)


@dataclass(frozen=True)
class TableErasure:
    """What the erasure did to one table."""

    table: str
    rows_deleted: int
    version_before: int | None
    version_after: int | None


@dataclass(frozen=True)
class ErasureReport:
    """The outcome of :func:`erase_subject`."""

    erasure_id: str
    kind: str
    subject_token: str
    reason: str
    tables: list[TableErasure] = field(default_factory=list)

    @property
    def rows_deleted(self) -> int:
        return sum(t.rows_deleted for t in self.tables)


def parse_subject(text: str) -> tuple[str, str]:
    """``"customer:123"`` → ``("customer", "123")``.

    Raises:
        ConfigError: not ``<kind>:<id>`` with kind customer or user.
    """
    kind, sep, subject_id = text.partition(":")
    if not sep or kind not in SUBJECT_KINDS or not subject_id.strip():
        raise ConfigError(
            f"subject {text!r}: write <kind>:<id> with kind in {SUBJECT_KINDS}, e.g. customer:123"
        )
    return kind, subject_id.strip()


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def subject_predicate(refs: list[SubjectRef], subject_id: str, email_tokens: list[str]) -> str | None:
    """The SQL predicate selecting the subject's rows in one table (``None``: nothing can match)."""
    terms = []
    for ref in refs:
        if ref.match == "id":
            terms.append(f"{ref.sql()} = {_quote(subject_id)}")
        elif email_tokens:
            terms.append(f"{ref.sql()} IN ({', '.join(_quote(t) for t in email_tokens)})")
    return " OR ".join(f"({t})" for t in terms) if terms else None


def _exists(spark: SparkSession, path: str) -> bool:
    try:
        spark.sql(f"DESCRIBE DETAIL {delta_ref(path)}").collect()
    except Exception:
        return False
    return True


def _version(spark: SparkSession, path: str) -> int | None:
    rows = spark.sql(f"DESCRIBE HISTORY {delta_ref(path)} LIMIT 1").select("version").collect()
    return int(rows[0]["version"]) if rows else None


def _subject_emails(
    spark: SparkSession, settings: Settings, catalog: Catalog, kind: str, subject_id: str
) -> list[str]:
    """The subject's clear emails, from restricted tables that keep an email column beside the subject id."""
    emails: set[str] = set()
    for contract in catalog.tables.values():
        email_columns = [c.name for c in contract.columns if c.pii == "email" and c.treatment == "keep"]
        refs = [
            r
            for r in contract.subjects
            if r.kind == kind and r.match == "id" and r.column is not None and r.json_path is None
        ]
        if not email_columns or not refs:
            continue
        path = settings.table_path(contract.layer, contract.name)
        if not _exists(spark, path):
            continue
        predicate = subject_predicate(refs, subject_id, [])
        for row in spark.sql(
            f"SELECT DISTINCT `{email_columns[0]}` AS email FROM {delta_ref(path)} WHERE {predicate}"
        ).collect():
            if row["email"]:
                emails.add(str(row["email"]))
    return sorted(emails)


def _erase_table(
    spark: SparkSession, contract: TableContract, path: str, predicate: str, retention_hours: int
) -> TableErasure:
    ref = delta_ref(path)
    before = _version(spark, path)
    rows = int(spark.sql(f"SELECT count(*) AS n FROM {ref} WHERE {predicate}").collect()[0]["n"])
    if rows:
        spark.sql(f"DELETE FROM {ref} WHERE {predicate}")
        spark.sql(f"REORG TABLE {ref} APPLY (PURGE)")
    # Vacuum even with nothing deleted now: an earlier, interrupted erasure may have left files behind.
    spark.sql(f"VACUUM {ref} RETAIN {retention_hours} HOURS")
    left = int(spark.sql(f"SELECT count(*) AS n FROM {ref} WHERE {predicate}").collect()[0]["n"])
    if left:
        raise PrivacyError(f"erasure from {contract.table} left {left} rows of the subject: run it again")
    log.info("erased %d rows from %s", rows, contract.table)
    return TableErasure(contract.table, rows, before, _version(spark, path))


class SubjectCopies(Protocol):
    """Copies of lake rows kept outside the lake (an online feature store) that an erasure must reach too.

    :meth:`find` runs before the lake's rows are deleted (it may read them to learn the copies' keys),
    :meth:`erase` after; both are recorded like a table, under :attr:`name`.
    """

    name: str

    def find(self, spark: SparkSession, predicate: Callable[[TableContract], str | None]) -> Any: ...

    def erase(self, found: Any) -> int: ...


def erase_subject(
    spark: SparkSession,
    settings: Settings,
    kind: str,
    subject_id: str,
    reason: str,
    *,
    catalog: Catalog | None = None,
    tables: list[str] | None = None,
    copies: Sequence[SubjectCopies] = (),
) -> ErasureReport:
    """Remove one data subject from every table whose contract declares a subject of ``kind``.

    Args:
        spark: a session from :func:`lakehouse.spark.get_spark`.
        settings: the environment (paths, ``privacy.tokenization_key``, ``privacy.erasure_retention_hours``).
        kind: ``customer`` (retail customer_id) or ``user`` (clickstream user_id).
        subject_id: the id, e.g. ``"123"`` or ``"u-000042"``.
        reason: why (kept in the audit record), e.g. a ticket number.
        catalog: an already loaded catalog (default :func:`load_catalog`).
        tables: restrict to these tables (tests); default every table with a subject of ``kind``.
        copies: stores outside the lake that hold the subject's rows too (the online feature store's
            :class:`lakehouse.ml.features.OnlineCopies`); each is recorded in the report and the audit.

    Returns:
        Rows deleted per table and the table versions before and after.

    Raises:
        ConfigError: unknown kind, or no contract declares the kind.
        PrivacyError: rows of the subject are still there after the erasure.
    """
    if kind not in SUBJECT_KINDS:
        raise ConfigError(f"unknown subject kind {kind!r}: use one of {SUBJECT_KINDS}")
    catalog = catalog or load_catalog(settings)
    key = settings.privacy.tokenization_key
    hours = settings.privacy.erasure_retention_hours
    targets = [
        c
        for name, c in sorted(catalog.tables.items())
        if any(r.kind == kind for r in c.subjects) and (tables is None or name in tables)
    ]
    if not targets:
        raise ConfigError(f"no catalog contract declares a {kind} subject: add subjects: to the contracts")
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    emails = _subject_emails(spark, settings, catalog, kind, subject_id)
    email_tokens = [token(e, key) for e in emails]
    report = ErasureReport(str(uuid.uuid4()), kind, token(f"{kind}:{subject_id}", key), reason)

    def predicate_of(contract: TableContract) -> str | None:
        return subject_predicate([r for r in contract.subjects if r.kind == kind], subject_id, email_tokens)

    found = [(copy, copy.find(spark, predicate_of)) for copy in copies]  # before the lake forgets the keys
    for contract in targets:
        path = settings.table_path(contract.layer, contract.name)
        predicate = predicate_of(contract)
        if predicate is None or not _exists(spark, path):
            continue
        report.tables.append(_erase_table(spark, contract, path, predicate, hours))
    for copy, keys in found:
        report.tables.append(TableErasure(copy.name, copy.erase(keys), None, None))
    _audit(spark, settings, report, hours)
    return report


def _audit(spark: SparkSession, settings: Settings, report: ErasureReport, hours: int) -> None:
    now = datetime.now(UTC)
    try:
        user: str | None = getpass.getuser()
    except (KeyError, OSError):
        user = None
    rows: list[tuple[Any, ...]] = [
        (
            report.erasure_id,
            report.kind,
            report.subject_token,
            report.reason,
            t.table,
            t.rows_deleted,
            t.version_before,
            t.version_after,
            hours,
            now,
            user,
        )
        for t in report.tables
    ] or [
        (
            report.erasure_id,
            report.kind,
            report.subject_token,
            report.reason,
            "-",
            0,
            None,
            None,
            hours,
            now,
            user,
        )
    ]
    spark.createDataFrame(rows, ERASURES).write.format("delta").mode("append").save(
        settings.table_path("audit", "erasures")
    )
