"""The silver engine: any table declared in its contract (``build``), built from its inputs by one code path.

For each input the engine streams the input Delta table (``availableNow`` in the DAG, a processing-time
trigger in continuous mode — the same declaration) and handles each micro-batch:

1. **parse** the rows by the input's format (columns, JSON text, wal2json changes) and compute every contract
   column from its ``expr`` (Spark SQL), cast to the contract's type;
2. **reject** rows with the first reason that applies: the payload does not parse, a declared ``reject``
   rule, a value that does not cast (``invalid_value:<column>``), a null key (``missing_key``) or sequence
   (``missing_sequence``);
3. **dedupe**: ``append`` keeps the first row of a key (in sequence order) and drops keys already in the
   table; ``upsert``/``scd2`` keep the latest version of each key in the batch (others are superseded);
   with ``event_time`` a row older than the newest seen before it minus the watermark is late;
4. **protect** PII by the contract's treatments (``tokenize``);
5. **validate** the accepted rows with the table's suite compiled into Spark predicates
   (:mod:`lakehouse.quality.compiled`) — quarantine, drop, fail or warn per rule — plus declared
   ``references`` (orphans warned about or quarantined);
6. **apply** (:mod:`lakehouse.silver.apply`) and write the rejected rows to ``<table>_quarantine`` with
   their reason, every rule they broke, the raw record and the run; one audit row per batch and input goes
   to ``audit.silver_batches``, so every input row is accounted for::

       input rows = applied + quarantined + duplicates + dropped

Nothing here knows a demo table: a user's new source is a contract with a ``build`` section.
"""

from __future__ import annotations

import logging
import operator
import re
import uuid
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import Any, Final, Literal

import tenacity
from great_expectations import ExpectationSuite
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.streaming.query import StreamingQuery
from pyspark.sql.types import (
    ArrayType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.config import Settings
from lakehouse.contracts.build import BuildSpec, EventTimeSpec, InputSpec
from lakehouse.contracts.build import task_name as task_name  # the notebooks' name for it
from lakehouse.contracts.payload import PayloadSpec
from lakehouse.errors import ConfigError, DataError
from lakehouse.governance.catalog import TableContract, load_catalog
from lakehouse.privacy.tokenize import token_column
from lakehouse.quality import compiled as cq
from lakehouse.quality.compiled import Evaluation
from lakehouse.silver import apply
from lakehouse.silver.apply import DELETED, IS_DELETE, MERGED_AT, SOURCE, q
from lakehouse.silver.batches import await_stream, first_row, txn_app_id
from lakehouse.sources.postgres import UNREPRESENTABLE
from lakehouse.tables import delta_ref, ensure_table, is_delta_table

log = logging.getLogger(__name__)

RAW: Final = "_raw"
REASON: Final = "_reason"
OUTCOME: Final = "_outcome"
RULES: Final = "_failed_rules"
PAYLOAD: Final = "payload"
LATE: Final = "late_beyond_watermark"
WRONG_TYPE: Final = "_wrong_type"
FUTURE: Final = "event_time_in_future"
BEFORE_FLOOR: Final = "event_time_before_floor"
CONFLICT: Final = "conflicting_duplicate"
KEY_RANK: Final = "_key_rank"  # a valid row's place among its key's rows in the batch (1 = the one kept)
CONFLICTING: Final = "_conflicting"  # a duplicate whose declared content differs from the row kept
ENGINE_COLUMNS: Final = frozenset({DELETED, SOURCE, MERGED_AT})
# CDC positions of a wal2json input: usable in a declaration's sequence without being table columns.
CDC_COLUMNS: Final = ("_op", "_lsn", "_commit_lsn", "_committed_at")

AUDIT: Final = StructType(
    [
        StructField("table", StringType(), False),
        StructField("input", StringType(), False),
        StructField("run_id", StringType(), False),
        StructField("batch_id", LongType(), False),
        StructField("input_rows", LongType(), False),
        StructField("applied", LongType(), False),
        StructField("quarantined", LongType(), False),
        StructField("duplicates", LongType(), False),
        StructField("late", LongType(), False),
        StructField("dropped", LongType(), False),
        StructField("orphans", LongType(), False),
        StructField("processed_at", TimestampType(), False),
    ]
)
_COUNTS: Final = ("input_rows", "applied", "quarantined", "duplicates", "late", "dropped", "orphans")


def quarantine_schema(key_fields: Sequence[StructField], keep_fields: Sequence[StructField]) -> StructType:
    """A quarantine table: the raw record, why, which input and batch, the key (as far as it parsed)."""
    return StructType(
        [
            StructField("record", StringType()),
            StructField("reason", StringType(), False),
            StructField("failed_rules", ArrayType(StringType(), True)),
            StructField("input", StringType()),
            *key_fields,
            *keep_fields,
            StructField("batch_id", LongType()),
            StructField("run_id", StringType()),
            StructField("quarantined_at", TimestampType()),
        ]
    )


# --- the declaration, resolved against the contract -------------------------------------------------------


@dataclass(frozen=True)
class SilverTable:
    """A declared silver table with its paths: what the engine needs to build it."""

    contract: TableContract
    build: BuildSpec
    path: str
    quarantine: str
    audit: str
    checkpoints: str
    tokenization_key: str
    input_paths: dict[str, str]
    reference_paths: dict[str, str]
    # The quarantine's schema from its contract (generated from the declaration unless a file overrides it);
    # None: the record, reason, rules, input, key and run columns only.
    quarantine_columns: tuple[tuple[str, str], ...] | None = None
    # Inputs that read a source's declared payload (sources.yaml), by input name.
    payloads: dict[str, PayloadSpec] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.contract.table

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.contract.columns]

    @property
    def schema(self) -> StructType:
        return _struct(", ".join(f"{q(c.name)} {c.type}" for c in self.contract.columns))

    def computed_columns(self) -> list[str]:
        """The contract columns the engine computes from inputs (not its own bookkeeping or SCD2 columns)."""
        managed = set(ENGINE_COLUMNS)
        if self.build.scd2 is not None:
            spec = self.build.scd2
            managed |= {spec.valid_to, spec.is_current, spec.valid_from}
            if spec.surrogate_key:
                managed.add(spec.surrogate_key)
        return [c for c in self.columns if c not in managed]

    @property
    def quarantine_table(self) -> str:
        """The quarantine's catalog name, e.g. ``silver.readings_quarantine``."""
        return self.build.quarantine or f"{self.name}_quarantine"

    def contract_type(self, column: str) -> str:
        return self.contract.column(column).type

    def pii_tokenized(self) -> list[str]:
        return [c.name for c in self.contract.columns if c.treatment == "tokenize"]


def _struct(ddl: str) -> StructType:
    schema = StructType.fromDDL(ddl)
    if not isinstance(schema, StructType):  # a column list always parses to a struct
        raise ConfigError(f"not a column list: {ddl}")
    return schema


def declared_tables(settings: Settings) -> list[str]:
    """Every table whose contract has a ``build`` section, sorted (``silver.<name>``)."""
    catalog = load_catalog(settings)
    return sorted(name for name, contract in catalog.tables.items() if contract.build is not None)


def _path(settings: Settings, table: str) -> str:
    layer, _, name = table.partition(".")
    return settings.table_path(layer, name)


def silver_table(settings: Settings, table: str) -> SilverTable:
    """The declared table ``table`` (e.g. ``"silver.readings"``).

    Raises:
        ConfigError: no contract, no build section, or a declared input/reference that no contract or
            source knows.
    """
    catalog = load_catalog(settings)
    contract = catalog.contract(table)
    if contract.build is None:
        raise ConfigError(
            f"{table} has no build section in catalog/{table.replace('.', '/')}.yaml: "
            "declare its inputs, key and apply mode (see lakehouse.contracts.build)"
        )
    build = contract.build
    for upstream in build.upstream_tables():
        if upstream not in catalog.tables:
            raise ConfigError(
                f"catalog/{table.replace('.', '/')}.yaml: build names {upstream}, which has no contract "
                f"(add catalog/{upstream.replace('.', '/')}.yaml)"
            )
    payloads: dict[str, PayloadSpec] = {}
    for spec in build.inputs:
        if spec.payload is not None:
            payloads[spec.label] = _declared_payload(settings, table, spec.payload)
            _check_payload_read(contract, spec, payloads[spec.label])
    layer, _, name = table.partition(".")
    quarantine = build.quarantine or f"{table}_quarantine"
    return SilverTable(
        contract=contract,
        build=build,
        path=settings.table_path(layer, name),
        quarantine=_path(settings, quarantine),
        audit=settings.table_path("audit", "silver_batches"),
        checkpoints=settings.checkpoint_path(f"silver/{name}"),
        tokenization_key=settings.privacy.tokenization_key,
        input_paths={spec.label: _path(settings, spec.table) for spec in build.inputs},
        reference_paths={ref.table: _path(settings, ref.table) for ref in build.references},
        quarantine_columns=tuple((c.name, c.type) for c in catalog.contract(quarantine).columns),
        payloads=payloads,
    )


def _check_payload_read(contract: TableContract, spec: InputSpec, payload: PayloadSpec) -> None:
    """Every field the source declares reaches the table: as a column of its name or read by an ``expr``.

    A field declared in ``sources.yaml`` but in no column would be parsed and then lost without a word.
    """
    expressions = " ".join([*(c.expr or "" for c in contract.columns), *spec.columns.values()])
    read = {c.name for c in contract.columns}
    read |= set(re.findall(rf"\b{PAYLOAD}\s*\.\s*`?([A-Za-z_][A-Za-z0-9_]*)", expressions))
    lost = [name for name in payload.fields if name not in read]
    if lost:
        raise ConfigError(
            f"catalog/{contract.table.replace('.', '/')}.yaml: input {spec.label} reads the payload of "
            f"source {spec.payload!r}, whose fields {lost} reach no column: add them to columns (or read "
            f"them in an expr as payload.<field>)"
        )


def _declared_payload(settings: Settings, table: str, source: str) -> PayloadSpec:
    from lakehouse.sources.registry import KafkaSource, MqttSource, load_registry

    registry = load_registry(settings)
    entry = registry.sources.get(source)
    payload = entry.record_payload() if isinstance(entry, KafkaSource | MqttSource) else None
    if payload is None:
        known = sorted(n for n, s in registry.sources.items() if getattr(s, "payload", None) is not None)
        raise ConfigError(
            f"catalog/{table.replace('.', '/')}.yaml: an input reads the payload of source {source!r}, "
            f"which declares none (sources with a payload: {known})"
        )
    return payload


# --- parsing ----------------------------------------------------------------------------------------------

_CDC_COLUMN = StructType(
    [StructField("name", StringType()), StructField("type", StringType()), StructField("value", StringType())]
)
_WAL2JSON = StructType(
    [
        StructField("action", StringType()),
        StructField("lsn", StringType()),
        StructField("commit_lsn", StringType()),
        StructField("timestamp", StringType()),
        StructField("schema", StringType()),
        StructField("table", StringType()),
        StructField("columns", ArrayType(_CDC_COLUMN)),
        StructField("identity", ArrayType(_CDC_COLUMN)),
    ]
)
_LSN_PATTERN: Final = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"


def lsn_number(lsn: Column) -> Column:
    """A PostgreSQL LSN ``X/Y`` (hex) as a comparable 64-bit number; null when the text is not an LSN."""
    parts = F.split(lsn, "/")
    high = F.conv(F.try_element_at(parts, F.lit(1)), 16, 10).try_cast("bigint")
    low = F.conv(F.try_element_at(parts, F.lit(2)), 16, 10).try_cast("bigint")
    return F.when(lsn.rlike(_LSN_PATTERN), high * F.lit(4294967296) + low)


def cdc_value(row: Column, name: str) -> Column:
    """The JSON text of one column of a wal2json row array (null when absent or JSON null)."""
    return F.try_element_at(F.filter(row, lambda c: c["name"] == F.lit(name)), F.lit(1))["value"]


def _payload_schema(spec: InputSpec, table: SilverTable, input_columns: Sequence[str]) -> StructType:
    if spec.fields:
        ddl = ", ".join(f"{q(name)} {kind}" for name, kind in spec.fields.items())
    else:  # every contract column the input lacks, read as text: a value that does not cast reaches the rules
        names = [c for c in table.computed_columns() if c not in input_columns or c == spec.column]
        ddl = ", ".join(f"{q(name)} string" for name in names) or "`_none` string"
    try:
        return _struct(ddl)
    except Exception as exc:
        raise ConfigError(
            f"{table.name}: input {spec.label} fields do not parse as Spark types: {exc}"
        ) from exc


def _typed_leaves(schema: StructType, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of the fields, through structs, whose type is a scalar other than text."""
    leaves: list[tuple[str, ...]] = []
    for item in schema.fields:
        path = (*prefix, item.name)
        if isinstance(item.dataType, StructType):
            leaves += _typed_leaves(item.dataType, path)
        elif not isinstance(item.dataType, StringType | ArrayType | MapType):
            leaves.append(path)
    return leaves


def _as_text(schema: StructType) -> StructType:
    """The schema with every scalar read as text (a JSON value of any type parses to its text)."""
    fields = []
    for item in schema.fields:
        kind = item.dataType
        if isinstance(kind, StructType):
            kind = _as_text(kind)
        elif not isinstance(kind, StringType | ArrayType | MapType):
            kind = StringType()
        fields.append(StructField(item.name, kind, True))
    return StructType(fields)


def _wrong_type(text: Column, typed: Column, schema: StructType) -> Column:
    """The first declared field (dotted path) whose JSON value is there but not of its declared type: such
    a value would read as null and vanish; the row is quarantined as ``invalid_value:<field>`` instead."""
    leaves = _typed_leaves(schema)
    if not leaves:
        return F.lit(None).cast("string")
    raw = F.from_json(text, _as_text(schema))

    def at(root: Column, path: tuple[str, ...]) -> Column:
        return reduce(lambda node, name: node.getField(name), path, root)

    return F.coalesce(
        *[F.when(at(raw, p).isNotNull() & at(typed, p).isNull(), F.lit(".".join(p))) for p in leaves]
    )


def parse(batch: DataFrame, spec: InputSpec, table: SilverTable) -> DataFrame:
    """The input rows as ``_raw`` (the record as text), ``_parse_error`` and the expression scope.

    The scope is the input's columns, plus ``payload`` (the parsed record) for JSON and wal2json inputs and
    ``_op``/``_lsn``/``_commit_lsn``/``_committed_at`` for wal2json.
    """
    if spec.where:
        batch = batch.where(spec.where)
    if spec.format == "columns":
        raw = F.to_json(F.struct(*[F.col(q(c)) for c in batch.columns]))
        error = F.lit(None).cast("string")
        if UNREPRESENTABLE in batch.columns:
            # A value the source could not type for Spark landed as NULL, its text kept beside it (and in
            # _raw): the row is quarantined, named by its first such column, not read as a real NULL.
            first_column = F.json_object_keys(F.col(UNREPRESENTABLE))[0]
            error = F.when(
                F.col(UNREPRESENTABLE).isNotNull(),
                F.concat(F.lit("unrepresentable:"), F.coalesce(first_column, F.lit("value"))),
            )
        return batch.select("*", raw.alias(RAW), error.alias("_parse_error"))
    if spec.column not in batch.columns:
        raise DataError(f"{table.name}: input {spec.label} has no column {spec.column!r} to parse")
    text = F.col(q(spec.column)).cast("string")
    # Bronze keeps bytes that are not UTF-8 beside a safe text (sources.kafka.to_bronze): such a record
    # is quarantined before anything reads its text.
    sidecar = f"{spec.column}_bytes"
    first = (
        F.when(F.col(q(sidecar)).isNotNull(), F.lit("invalid_utf8"))
        if sidecar in batch.columns
        else F.when(F.lit(False), F.lit(None).cast("string"))
    )
    if spec.format == "json" and spec.label in table.payloads:
        declared = table.payloads[spec.label]
        raw = F.from_json(text, _struct(declared.payload_ddl())).alias("_payload_raw")
        record = F.struct(*[F.expr(e) for e in declared.select_expressions("_payload_raw")])
        error = first.when(F.json_object_keys(text).isNull(), F.lit("malformed_json"))
        for name, field_spec in declared.fields.items():
            if field_spec.required or name in declared.key:
                error = error.when(F.col(PAYLOAD)[name].isNull(), F.lit(f"missing_{name}"))
        staged = batch.select("*", text.alias(RAW), raw).withColumn(PAYLOAD, record)
        return staged.drop("_payload_raw").withColumn("_parse_error", error)
    if spec.format == "json":
        fields_schema = _payload_schema(spec, table, batch.columns)
        parsed = F.from_json(text, fields_schema)
        error = first.when(F.json_object_keys(text).isNull(), F.lit("malformed_json"))
        staged = batch.select("*", text.alias(RAW), parsed.alias(PAYLOAD), error.alias("_parse_error"))
        return staged.withColumn(WRONG_TYPE, _wrong_type(F.col(RAW), F.col(PAYLOAD), fields_schema))
    # wal2json format 2: one change per record
    change = F.from_json(text, _WAL2JSON)
    schema, _, name = (spec.cdc_table or "").rpartition(".")
    staged = batch.select("*", text.alias(RAW), change.alias("_change"))
    c = F.col("_change")
    # The input's table's changes, and records that name no table (not JSON, not a change): every table
    # reading the feed quarantines those, so a bad record is seen, never silently left behind.
    own = (c["table"] == name) & (F.coalesce(c["schema"], F.lit("public")) == (schema or "public"))
    staged = staged.where(F.coalesce(own, F.lit(True)))
    row = F.when(c["action"] == "D", c["identity"]).otherwise(c["columns"])
    names = table.computed_columns() + [n for n in spec.columns if n not in table.columns]
    payload = F.struct(*[cdc_value(row, n).alias(n) for n in names])
    lsn, commit = lsn_number(c["lsn"]), lsn_number(c["commit_lsn"])
    error = (
        first.when(F.json_object_keys(text).isNull() | c.isNull(), F.lit("malformed_json"))
        .when(c["table"].isNull(), F.lit("unknown_table"))
        .when(~c["action"].isin("I", "U", "D") | c["action"].isNull(), F.lit("unknown_action"))
        .when(lsn.isNull() | commit.isNull(), F.lit("invalid_lsn"))
        .when(F.coalesce(F.size(row), F.lit(-1)) <= 0, F.lit("missing_row"))
    )
    return staged.select(
        *[F.col(q(col)) for col in batch.columns],
        F.col(RAW),
        payload.alias(PAYLOAD),
        c["action"].alias("_op"),
        lsn.alias("_lsn"),
        commit.alias("_commit_lsn"),
        F.try_to_timestamp(c["timestamp"]).alias("_committed_at"),
        error.alias("_parse_error"),
    )


def _expression(spec: InputSpec, table: SilverTable, column: str, scope: Sequence[str]) -> Column | None:
    """The column's expression for this input.

    In order: the input's override, the contract's ``expr``, a CDC position of that name, then by name —
    for wal2json the changed row's column; for JSON a declared payload field, else the input's column,
    else the payload's field; for columns the input's column. None when nothing provides it.
    """
    text = spec.columns.get(column) or table.contract.column(column).expr
    if text:
        return F.expr(text)
    if column in CDC_COLUMNS and column in scope:
        return F.col(column)
    if spec.format == "wal2json":
        return F.col(PAYLOAD)[column]
    if spec.format == "json":
        declared = table.payloads.get(spec.label)
        if declared is not None:
            return (
                F.col(PAYLOAD)[column]
                if column in declared.fields
                else (F.col(q(column)) if column in scope else None)
            )
        if column in spec.fields:
            return F.col(PAYLOAD)[column]
        if column in scope and column != spec.column:
            return F.col(q(column))
        return None if spec.fields else F.col(PAYLOAD)[column]
    return F.col(q(column)) if column in scope else None


def typed(parsed: DataFrame, spec: InputSpec, table: SilverTable) -> DataFrame:
    """Every computed contract column, cast to its type, plus the reason a row is rejected (null: valid).

    Also carries ``_raw``, ``_is_delete``, the CDC positions and the input's ``keep`` columns.
    """
    build = table.build
    scope = parsed.columns
    values: dict[str, Column] = {}
    invalid: list[tuple[str, Column]] = []
    for column in table.computed_columns():
        kind = table.contract_type(column)
        source = _expression(spec, table, column, scope)
        if source is None:
            values[column] = F.lit(None).cast(kind)
            continue
        value = source.try_cast(kind)
        values[column] = value
        invalid.append((column, source.isNotNull() & value.isNull()))
    cdc = [c for c in CDC_COLUMNS if c in scope]
    deletes = spec.deletes if spec.deletes is not None else build.deletes
    is_delete = F.expr(deletes) if deletes else F.lit(False)
    staged = parsed.select(
        F.col(RAW),
        F.col("_parse_error"),
        *([F.col(PAYLOAD)] if PAYLOAD in scope else []),
        *[F.col(q(c)) for c in spec.keep if c in scope and c not in values],
        *[F.col(c) for c in cdc if c not in values],
        *[v.alias(c) for c, v in values.items()],
        F.coalesce(is_delete, F.lit(False)).alias(IS_DELETE),
        # judged on the input's values, before the typed columns shadow them
        *[bad.alias(f"_invalid_{i}") for i, (_, bad) in enumerate(invalid)],
        *([F.col(WRONG_TYPE)] if WRONG_TYPE in scope else []),
    )
    live = ~F.col(IS_DELETE)
    reason = F.when(F.col("_parse_error").isNotNull(), F.col("_parse_error"))
    for rule in build.reject:
        reason = reason.when(live & F.coalesce(F.expr(rule.when), F.lit(False)), F.lit(rule.reason))
    if WRONG_TYPE in scope:  # after the declared rules: a rule that names the problem says it better
        reason = reason.when(
            live & F.col(WRONG_TYPE).isNotNull(), F.concat(F.lit("invalid_value:"), F.col(WRONG_TYPE))
        )
    for i, (column, _) in enumerate(invalid):
        # A delete carries only its key: its other columns are not judged.
        bad = F.col(f"_invalid_{i}")
        judged = bad if column in build.key else live & bad
        reason = reason.when(judged, F.lit(f"invalid_value:{column}"))
    if build.event_time is not None:
        reason = _bound_event_time(reason, build.event_time, live)
    if build.key:
        reason = reason.when(
            reduce(operator.or_, [F.col(q(k)).isNull() for k in build.key]), F.lit("missing_key")
        )
    if build.apply != "append" and build.sequence:
        first = build.sequence[0]
        reason = reason.when(live & F.col(q(first)).isNull(), F.lit("missing_sequence"))
    helpers = [
        "_parse_error",
        *([WRONG_TYPE] if WRONG_TYPE in scope else []),
        *([PAYLOAD] if PAYLOAD in scope else []),
        *(f"_invalid_{i}" for i in range(len(invalid))),
    ]
    return staged.withColumn(REASON, reason).drop(*helpers)


def _bound_event_time(reason: Column, spec: EventTimeSpec, live: Column) -> Column:
    """Add the event-time bounds to ``reason``: a row past them is quarantined before a watermark sees it."""
    when = F.col(q(spec.column))
    if spec.max_future is not None:
        now = F.col(q(spec.relative_to)).cast("timestamp") if spec.relative_to else F.current_timestamp()
        reason = reason.when(live & (when > now + F.expr(f"INTERVAL {spec.max_future}")), F.lit(FUTURE))
    if spec.not_before is not None:
        reason = reason.when(live & (when < F.lit(spec.not_before).cast("timestamp")), F.lit(BEFORE_FLOOR))
    return reason


# --- one micro-batch --------------------------------------------------------------------------------------


@dataclass
class BatchCounts:
    """What one micro-batch of one input did."""

    input_rows: int = 0
    applied: int = 0
    quarantined: int = 0
    duplicates: int = 0
    late: int = 0
    dropped: int = 0
    orphans: int = 0

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in _COUNTS)


def _mark_append(frame: DataFrame, table: SilverTable, existing: DataFrame) -> DataFrame:
    """``_outcome``: insert, duplicate (a key seen in ``existing``, the table, or earlier in the batch) or
    quarantine (invalid or late)."""
    build = table.build
    valid = F.col(REASON).isNull()
    marked = frame
    duplicate = F.lit(False)
    conflicting = F.lit(False)
    ordering = [F.col(q(c)) for c in build.sequence] or [F.monotonically_increasing_id()]
    if build.key and build.dedupe:
        first_seen = Window.partitionBy(*[F.col(q(k)) for k in build.key]).orderBy(*ordering)
        known_columns = [F.col(q(k)).alias(f"_known_{k}") for k in build.key]
        if build.conflicts is not None:
            content = F.xxhash64(*[F.col(q(c)) for c in build.conflicts.compare])
            known_columns.append(content.alias("_known_content"))
            so_far = first_seen.rowsBetween(Window.unboundedPreceding, Window.currentRow)
            marked = marked.withColumn(
                "_first_content", F.first(F.when(valid, content), ignorenulls=True).over(so_far)
            )
        known = existing.select(*known_columns).distinct()
        marked = marked.withColumn("_rank", F.when(valid, F.row_number().over(first_seen)))
        on = reduce(operator.and_, [F.col(q(k)).eqNullSafe(F.col(f"_known_{k}")) for k in build.key])
        marked = marked.join(known, on, "left")
        seen_here, seen_before = F.col("_rank") > 1, F.col(f"_known_{build.key[0]}").isNotNull()
        duplicate = valid & (seen_here | seen_before)
        if build.conflicts is not None:
            # Against the table's row when the key is there already, else the batch's first row of the key.
            kept = F.when(seen_before, F.col("_known_content")).otherwise(F.col("_first_content"))
            conflicting = duplicate & ~content.eqNullSafe(kept)
    late = F.lit(False)
    if build.event_time is not None:
        spec = build.event_time
        column = F.col(q(spec.column))
        groups = spec.partition_by
        if groups and all(c in existing.columns for c in groups):
            # Per group across batches too: one table-wide maximum would make a device whose clock runs
            # behind the others late for ever.
            newest_of = existing.groupBy(*[F.col(q(c)).alias(f"_carried_{c}") for c in groups]).agg(
                F.max(q(spec.column)).alias("_carried_max")
            )
            on = reduce(operator.and_, [F.col(q(c)).eqNullSafe(F.col(f"_carried_{c}")) for c in groups])
            marked = marked.join(newest_of, on, "left")
            carried = F.col("_carried_max")
        else:
            carried = F.lit(first_row(existing.agg(F.max(q(spec.column))))[0]).cast("timestamp")
        before = (
            Window.partitionBy(*[F.col(q(c)) for c in groups])
            .orderBy(*([F.col(q(c)) for c in spec.order_by] or ordering))
            .rowsBetween(Window.unboundedPreceding, -1)
        )
        marked = marked.withColumn("_seen_max", F.max(F.when(valid, column)).over(before))
        newest = F.greatest(F.col("_seen_max"), carried)
        late = (
            valid
            & ~duplicate
            & F.coalesce(column < newest - F.expr(f"INTERVAL {spec.watermark}"), F.lit(False))
        )
    helper = [
        c
        for c in marked.columns
        if c.startswith(("_known_", "_carried_")) or c in ("_rank", "_seen_max", "_first_content")
    ]
    held = (
        conflicting
        if build.conflicts is not None and build.conflicts.action == "quarantine"
        else F.lit(False)
    )
    return marked.select(
        *[F.col(q(c)) for c in frame.columns if c != REASON],
        F.when(late, F.lit(LATE)).when(held, F.lit(CONFLICT)).otherwise(F.col(REASON)).alias(REASON),
        F.when(held, F.lit("quarantine"))
        .when(duplicate, F.lit("duplicate"))
        .when(valid & ~late, F.lit("insert"))
        .otherwise(F.lit("quarantine"))
        .alias(OUTCOME),
        *([F.coalesce(conflicting, F.lit(False)).alias(CONFLICTING)] if build.conflicts is not None else []),
        *([F.col("_rank").alias(KEY_RANK)] if build.key and build.dedupe else []),
    ).drop(*helper)


def _mark_versions(frame: DataFrame, table: SilverTable) -> DataFrame:
    """``_outcome`` for upsert/scd2: a key's latest version in the batch is applied, others superseded."""
    build = table.build
    valid = frame.where(F.col(REASON).isNull())
    ranked = apply.latest_per_key(valid, build.key, build.sequence, RAW)
    rejected = frame.where(F.col(REASON).isNotNull()).withColumn("_rank", F.lit(None).cast("int"))
    both = ranked.unionByName(rejected)
    outcome = F.when(F.col(REASON).isNotNull(), F.lit("quarantine"))
    if build.apply == "scd2":  # every version can open a history row
        outcome = outcome.otherwise(F.lit("insert"))
    else:
        outcome = outcome.when(F.col("_rank") == 1, F.lit("insert")).otherwise(F.lit("duplicate"))
    marked = both.withColumn(OUTCOME, outcome)
    # Upsert keeps one version per key (rank 1); SCD2 keeps them all, so its rank says nothing of uniqueness.
    return marked.withColumnRenamed("_rank", KEY_RANK) if build.apply == "upsert" else marked.drop("_rank")


def _protect(frame: DataFrame, table: SilverTable) -> DataFrame:
    tokenized = set(table.pii_tokenized())
    if not tokenized:
        return frame
    return frame.select(
        *[
            token_column(F.col(q(c)), table.tokenization_key).alias(c) if c in tokenized else F.col(q(c))
            for c in frame.columns
        ]
    )


def _references(frame: DataFrame, table: SilverTable, spark: SparkSession) -> tuple[DataFrame, list[str]]:
    """Flag rows whose declared references find no row: ``_orphan_<i>`` per reference."""
    flags = []
    for index, ref in enumerate(table.build.references):
        path = table.reference_paths[ref.table]
        flag = f"_orphan_{index}"
        if not is_delta_table(spark, path):
            log.warning(
                "%s: reference %s has no table yet; every row counts as an orphan", table.name, ref.table
            )
            frame = frame.withColumn(
                flag, reduce(operator.and_, [F.col(q(c)).isNotNull() for c in ref.columns])
            )
        else:
            target = spark.read.format("delta").load(path)
            if DELETED in target.columns:
                target = target.where(~F.col(DELETED))
            aliases = [f"_ref{index}_{i}" for i in range(len(ref.columns))]
            keys = target.select(
                *[F.col(q(c)).alias(a) for c, a in zip(ref.target_columns, aliases, strict=True)]
            )
            keys = keys.distinct().withColumn(f"_ref{index}_hit", F.lit(True))
            on = reduce(
                operator.and_, [F.col(q(c)) == F.col(a) for c, a in zip(ref.columns, aliases, strict=True)]
            )
            joined = frame.join(keys, on, "left")
            present = reduce(operator.and_, [F.col(q(c)).isNotNull() for c in ref.columns])
            joined = joined.withColumn(flag, present & F.col(f"_ref{index}_hit").isNull())
            frame = joined.drop(*aliases, f"_ref{index}_hit")
        flags.append(flag)
    return frame, flags


@dataclass
class RunContext:
    """What a handler needs besides the batch."""

    table: SilverTable
    spec: InputSpec
    settings: Settings
    run_id: str
    app_id: str
    quality: bool = True
    drift: set[str] = field(default_factory=set)
    checkpoint: str | None = None  # the input stream's: where a batch notes the table version it judged by


def _first_seen_version(ctx: RunContext, batch_id: int) -> tuple[int | None, bool]:
    """The silver table's version when this batch first ran, and whether this run is a replay of it.

    A batch killed after its table write but before the stream recorded it as done is replayed whole. The
    first run notes the version it read beside the stream's checkpoint (``lakehouse_batches/<id>.version``);
    a replay finds the note. None without a checkpoint (a batch run by hand is never a replay).
    """
    if ctx.checkpoint is None:
        return None, False
    from deltalake import DeltaTable

    notes = Path(ctx.checkpoint) / "lakehouse_batches"
    note = notes / f"{batch_id}.version"
    if note.is_file():
        return int(note.read_text()), True
    version = DeltaTable(ctx.table.path).version()
    notes.mkdir(parents=True, exist_ok=True)
    note.write_text(str(version))
    for done in notes.glob("*.version"):  # the stream starts a batch only once the one before is done
        if done.stem.isdigit() and int(done.stem) < batch_id:
            done.unlink(missing_ok=True)
    return version, False


def _table_as_first_seen(spark: SparkSession, ctx: RunContext, batch_id: int) -> DataFrame:
    """The silver table as this batch first saw it (for its dedupe and watermark).

    Judged against the table as it is when replayed, a replayed batch's own rows would be duplicates of
    themselves: the table right, its audit wrong (0 applied). So a replay reads the version its first run
    read (:func:`_first_seen_version`); its appends are then skipped by their txn ids where they committed.
    """
    version, _ = _first_seen_version(ctx, batch_id)
    reader = spark.read.format("delta")
    return (
        reader.load(ctx.table.path)
        if version is None
        else reader.option("versionAsOf", version).load(ctx.table.path)
    )


def _added_by_batch(spark: SparkSession, ctx: RunContext, accepted: DataFrame, before: int) -> int:
    """The rows a replayed batch's versions added to an upsert or SCD2 table since version ``before``.

    A MERGE that committed before the kill changes nothing when replayed (the same versions are no longer
    newer), so its own count would say 0 applied while the table holds its rows. What the batch added is its
    rows' identities — the key, and ``valid_from`` for SCD2 — that the table holds now and did not hold at the
    version the batch first saw. Exact while no other input writes the same keys between the two runs.
    """
    table, build = ctx.table, ctx.table.build
    key = [q(k) for k in build.key]
    if build.scd2 is not None:
        start = F.col(q(build.sequence[0])).cast("timestamp").alias(build.scd2.valid_from)
        identity, versions = [*key, q(build.scd2.valid_from)], accepted.select(*key, start)
    else:
        identity, versions = key, accepted.select(*key)
    reader = spark.read.format("delta")
    now = reader.load(table.path).select(*identity)
    then = reader.option("versionAsOf", before).load(table.path).select(*identity)
    names = [c.strip("`") for c in identity]
    return versions.distinct().join(now, names, "left_semi").join(then, names, "left_anti").count()


def process_batch(batch: DataFrame, batch_id: int, ctx: RunContext) -> BatchCounts:
    """Parse, reject, dedupe, protect, validate, apply and audit one input's micro-batch (replay-safe)."""
    table, spec, build = ctx.table, ctx.spec, ctx.table.build
    spark = batch.sparkSession
    _note_drift(batch, spec, table, ctx)
    staged = typed(parse(batch, spec, table), spec, table)
    replay_of: int | None = None  # an upsert/SCD2 batch replayed: the table's version its first run saw
    if build.apply == "append":
        marked = _mark_append(staged, table, _table_as_first_seen(spark, ctx, batch_id))
    else:
        marked = _mark_versions(staged, table)
        first_seen, replayed = _first_seen_version(ctx, batch_id)
        replay_of = first_seen if replayed else None
    marked = _protect(marked, table)
    suite = _compiled_suite(ctx, marked.columns)
    # The suite's counts join the batch's own aggregate when nothing stands between them (a reference
    # check adds columns first; a uniqueness rule's window must not see the rows that are not inserted,
    # unless the rule is over the key the dedupe already ranked: then the rank judges it). Its rules' flags
    # are then computed in the pass that materialises the batch, and read from there by the aggregate, the
    # table's write and the quarantine's.
    pending: cq.Pending | None = None
    if suite is not None and not build.references and not suite.windowed:
        pending = cq.prepare(marked, suite, within=F.col(OUTCOME) == "insert").materialised()
        flagged, marked = pending.flagged, pending.flagged.select(*[q(c) for c in marked.columns])
    else:
        flagged = marked = marked.localCheckpoint(eager=True)
    columns = marked.columns
    stats = first_row(
        flagged.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.when(F.col(OUTCOME) == "insert", 1)).alias("insert"),
            F.count(F.when(F.col(OUTCOME) == "duplicate", 1)).alias("duplicate"),
            F.count(F.when(F.col(OUTCOME) == "quarantine", 1)).alias("quarantine"),
            F.count(F.when(F.col(REASON) == LATE, 1)).alias("late"),
            *(
                [F.count(F.when(F.col(CONFLICTING), 1)).alias("conflicts")]
                if build.conflicts is not None
                else []
            ),
            *(pending.aggregates if pending is not None else []),
        )
    )
    if build.conflicts is not None and int(stats["conflicts"]):
        action = "quarantined" if build.conflicts.action == "quarantine" else "counted as duplicates"
        log.warning(
            "%s <- %s batch %d: %d rows repeat a key with other content (%s): %s",
            table.name,
            spec.label,
            batch_id,
            int(stats["conflicts"]),
            ", ".join(build.conflicts.compare),
            action,
        )
    counts = BatchCounts(
        input_rows=int(stats["rows"]),
        duplicates=int(stats["duplicate"]),
        quarantined=int(stats["quarantine"]),
        late=int(stats["late"]),
    )
    accepted = marked.where(F.col(OUTCOME) == "insert")
    rejected = marked.where(F.col(OUTCOME) == "quarantine").withColumn(RULES, F.array(F.col(REASON)))
    inserts = int(stats["insert"])
    # Appends to other tables than the silver table itself (the quarantine, the validation results) run
    # beside its write: each is a Delta commit of its own, mostly waiting on the file system, and in turn they
    # were most of a small micro-batch's time. Each is idempotent like the table's (txnAppId/txnVersion),
    # so a batch that fails in any of them is replayed whole; the audit row, written last, says it is done.
    beside: list[Callable[[], Any]] = []
    if inserts and (build.references or suite is not None):
        evaluation = cq.conclude(pending, stats, columns=table.columns) if pending is not None else None
        accepted, extra_rejected, rejected_now, dropped, orphans = _check(
            accepted, inserts, batch_id, ctx, beside, suite, evaluation
        )
        counts.dropped, counts.orphans = dropped, orphans
        if evaluation is not None and not build.references:
            rejected = _rejected_in_one_pass(flagged, columns, evaluation)
        else:
            rejected = rejected.unionByName(extra_rejected)
        counts.quarantined += rejected_now
        inserts -= rejected_now + dropped
    txn = {"txnAppId": ctx.app_id, "txnVersion": str(batch_id)}
    if counts.quarantined:  # an empty append still costs a Delta commit (seconds per micro-batch)
        beside.append(lambda: _quarantine(rejected, batch_id, ctx, txn))
    with ThreadPoolExecutor(max_workers=max(1, len(beside)), thread_name_prefix="silver-write") as pool:
        writing = [pool.submit(write) for write in beside]
        inserted = _apply(accepted, inserts, spark, ctx, txn)
        for done in writing:
            done.result()  # a failed write fails the batch, after every other write finished
    if replay_of is not None and inserts:
        inserted = _added_by_batch(spark, ctx, accepted, replay_of)
    # A version that changed no row or replaced an older one counts as a duplicate of its key, so that
    # input rows = applied + quarantined + duplicates + dropped, and the table holds the sum of applied.
    counts.applied = inserted
    counts.duplicates += inserts - inserted
    audit = spark.createDataFrame(
        [(table.name, spec.label, ctx.run_id, batch_id, *counts.as_tuple(), datetime.now(UTC))], AUDIT
    )
    audit.write.format("delta").mode("append").options(**txn).save(table.audit)
    log.info("%s <- %s batch %d: %s", table.name, spec.label, batch_id, counts)
    return counts


def _rejected_in_one_pass(flagged: DataFrame, columns: Sequence[str], evaluation: Evaluation) -> DataFrame:
    """The batch's quarantine, rejected by the engine or by the suite, read in one pass over the batch.

    (A union of the two would read the materialised batch twice, a second full scan beside the table's write
    for the few rows the suite holds.)
    """
    assert evaluation.route is not None and evaluation.failed is not None
    outcome, inserted = F.col(OUTCOME), F.col(OUTCOME) == "insert"
    routed = flagged.select(
        *[q(c) for c in columns],
        F.when(inserted, evaluation.route).alias(cq.ROUTE),
        F.when(inserted, evaluation.failed).alias(cq.FAILED),
    )
    return routed.where((outcome == "quarantine") | (F.col(cq.ROUTE) == "quarantine")).select(
        *[q(c) for c in columns if c != REASON],
        F.coalesce(F.col(REASON), F.try_element_at(F.col(cq.FAILED), F.lit(1))).alias(REASON),
        F.when(outcome == "quarantine", F.array(F.col(REASON))).otherwise(F.col(cq.FAILED)).alias(RULES),
    )


def _compiled_suite(ctx: RunContext, columns: Sequence[str]) -> cq.CompiledSuite | None:
    """The table's suite for a batch with these columns, compiled (None without quality or a suite)."""
    from lakehouse.quality.suites import load_suite, suite_path

    table = ctx.table
    if not (ctx.quality and table.build.quality) or not suite_path(ctx.settings, table.name).is_file():
        return None
    ranked = cq.KeyRank(tuple(table.build.key), KEY_RANK) if KEY_RANK in columns else None
    return cq.CompiledSuite.of(_batch_suite(load_suite(ctx.settings, table.name), table, columns), ranked)


def _check(
    accepted: DataFrame,
    rows: int,
    batch_id: int,
    ctx: RunContext,
    beside: list[Callable[[], Any]],
    compiled_suite: cq.CompiledSuite | None,
    evaluation: Evaluation | None = None,
) -> tuple[DataFrame, DataFrame, int, int, int]:
    """Compiled suite and references on the accepted rows.

    ``evaluation`` is the suite already evaluated on these rows (by the batch's own aggregate), if it was.
    The validation results' write is added to ``beside`` (run beside the table's own write).

    Returns:
        The rows still accepted, the newly rejected ones, and how many were quarantined, dropped and orphans
        (counted by the suite's one aggregate, not by reading the rows again).
    """
    table, build = ctx.table, ctx.table.build
    spark = accepted.sparkSession
    frame, flags = _references(accepted, table, spark) if build.references else (accepted, [])
    reason = F.lit(None).cast("string")
    rules_column = F.array().cast("array<string>")
    orphans = 0
    quarantine_flags = []
    for ref, flag in zip(build.references, flags, strict=True):
        if ref.action == "quarantine":
            quarantine_flags.append((ref.rule, flag))
    if flags:
        frame = frame.localCheckpoint(eager=True)
        orphan_counts = first_row(frame.agg(*[F.count(F.when(F.col(f), 1)).alias(f) for f in flags]))
        orphans = sum(int(orphan_counts[f]) for f in flags)
        for ref, flag in zip(build.references, flags, strict=True):
            if int(orphan_counts[flag]):
                log.warning(
                    "%s: %d rows reference no row of %s (%s)",
                    table.name,
                    int(orphan_counts[flag]),
                    ref.table,
                    ref.action,
                )
    dropped = quality_quarantined = 0
    route = F.lit(None).cast("string")
    if compiled_suite is not None:
        suite = compiled_suite.suite
        if evaluation is None:
            evaluation = cq.evaluate(frame, compiled_suite, columns=table.columns)
        keep_results = _record(evaluation, suite, batch_id, ctx)
        failures = evaluation.failures()
        rest = compiled_suite.rest_suite()
        if rest is not None:  # what the compiler does not know runs through GX (warn/fail only)
            from lakehouse.quality.validate import QualityError, check_batch

            try:
                check_batch(
                    frame.select(*[q(c) for c in table.columns if c in frame.columns]),
                    table.name,
                    settings=ctx.settings,
                    run_id=ctx.run_id,
                    batch_id=batch_id,
                    suite=rest,
                    materialised=True,
                    rows=rows,
                )
            except QualityError as exc:
                failures.append(str(exc))
        if failures:
            from lakehouse.quality.validate import QualityError

            keep_results()  # a batch a fail rule stops still leaves its results, written now
            raise QualityError(
                f"{table.name} batch {batch_id} failed its quality suite: " + "; ".join(failures)
            )
        beside.append(keep_results)
        frame = evaluation.marked
        route = F.col(cq.ROUTE)
        reason = F.col(cq.REASON)
        rules_column = F.col(cq.FAILED)
        dropped, quality_quarantined = evaluation.dropped, evaluation.quarantined
    for rule, flag in quarantine_flags:
        hit = F.col(flag)
        reason = F.when(reason.isNull() & hit, F.lit(rule)).otherwise(reason)
        rules_column = F.when(hit, F.concat(rules_column, F.array(F.lit(rule)))).otherwise(rules_column)
        route = F.when(hit, F.lit("quarantine")).otherwise(route)
    frame = (
        frame.withColumn("_route", route)
        .withColumn("_route_reason", reason)
        .withColumn("_route_rules", rules_column)
    )
    quarantined = quality_quarantined
    if quarantine_flags:  # orphans join the quarantine; a row both dropped and orphaned counts once, there
        frame = frame.localCheckpoint(eager=True)
        routed = first_row(
            frame.agg(
                F.count(F.when(F.col("_route") == "quarantine", 1)).alias("q"),
                F.count(F.when(F.col("_route") == "drop", 1)).alias("d"),
            )
        )
        quarantined, dropped = int(routed["q"]), int(routed["d"])
    keep = [c for c in accepted.columns]
    valid = frame.where(F.col("_route").isNull()).select(*keep)
    rejected = frame.where(F.col("_route") == "quarantine").select(
        *[c for c in keep if c not in (REASON,)],
        F.col("_route_reason").alias(REASON),
        F.col("_route_rules").alias(RULES),
    )
    return valid, rejected, quarantined, dropped, orphans


def _batch_suite(
    suite: ExpectationSuite, table: SilverTable, batch_columns: Sequence[str]
) -> ExpectationSuite:
    """The suite without the rules on columns the apply step sets (bookkeeping, SCD2 validity): a batch
    does not have them yet; :func:`check_table` holds their invariants on the table."""
    from lakehouse.quality.suites import expectation_columns, rule_name

    later = set(table.columns) - set(table.computed_columns()) - set(batch_columns)
    kept = [e for e in suite.expectations if not set(expectation_columns(e)) & later]
    if len(kept) == len(suite.expectations):
        return suite
    skipped = [rule_name(e) for e in suite.expectations if set(expectation_columns(e)) & later]
    log.debug(
        "%s: rules on columns set at apply are judged on the table, not the batch: %s", table.name, skipped
    )
    return ExpectationSuite(name=suite.name, expectations=[e.configuration for e in kept])


def _record(
    evaluation: Evaluation, suite: ExpectationSuite, batch_id: int, ctx: RunContext
) -> Callable[[], int]:
    """Keep the compiled rules' results for Data Docs; the write of them to ``audit.validation_results``,
    to run (:func:`process_batch` runs it beside the table's write)."""
    from lakehouse.privacy.mask import table_pii
    from lakehouse.quality.compiled import result_rows, validation_result
    from lakehouse.quality.docs import save_validation
    from lakehouse.quality.results import write_results

    table = ctx.table.name
    results = result_rows(
        evaluation.outcomes, table=table, suite=suite.name, run_id=ctx.run_id, batch_id=batch_id
    )
    if ctx.settings.quality.data_docs:
        outcome = validation_result(evaluation.outcomes, suite)
        save_validation(ctx.settings, table, ctx.run_id, batch_id, outcome, table_pii(ctx.settings, table))
    return lambda: write_results(ctx.settings, results)


# Delta's optimistic concurrency: two inputs of one table streamed at once (continuous mode beside a DAG run
# of another input) can both MERGE into it; the loser sees a conflict and may simply run again.
_CONFLICT = re.compile(
    r"Concurrent(Append|DeleteRead|DeleteDelete|Transaction|Write)Exception|DELTA_CONCURRENT"
)


def is_write_conflict(error: BaseException) -> bool:
    """Whether ``error`` is Delta's conflict between concurrent writers (retrying the write is safe)."""
    return bool(_CONFLICT.search(f"{type(error).__name__}: {error}"))


def _apply(accepted: DataFrame, rows: int, spark: SparkSession, ctx: RunContext, txn: dict[str, str]) -> int:
    """Write the accepted rows by the table's apply mode; return how many rows it added to the table."""
    table, build = ctx.table, ctx.table.build
    if build.apply == "append":
        apply.append(accepted, table.path, table.columns, txn)
        return rows
    if rows == 0:
        return 0
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_write_conflict),
        stop=tenacity.stop_after_attempt(6),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=8),
        before_sleep=lambda state: log.warning(
            "%s <- %s: concurrent write, merging again (attempt %d)",
            table.name,
            ctx.spec.label,
            state.attempt_number,
        ),
        reraise=True,
    )
    return retrying(_merge, accepted, spark, ctx)


def _merge(accepted: DataFrame, spark: SparkSession, ctx: RunContext) -> int:
    table, build = ctx.table, ctx.table.build
    if build.apply == "upsert":
        return apply.upsert(
            spark,
            accepted,
            table.path,
            columns=table.columns,
            key=build.key,
            sequence=build.sequence,
            source=ctx.spec.label,
        )
    assert build.scd2 is not None
    return apply.scd2(
        spark,
        accepted,
        table.path,
        columns=table.columns,
        key=build.key,
        sequence=build.sequence,
        spec=build.scd2,
    )


def _quarantine(rejected: DataFrame, batch_id: int, ctx: RunContext, txn: dict[str, str]) -> None:
    table = ctx.table
    key = [k for k in table.build.key if k in rejected.columns]
    keep = [c for c in ctx.spec.keep if c in rejected.columns and c not in key]
    rows = rejected.select(
        F.col(RAW).alias("record"),
        F.col(REASON).alias("reason"),
        F.col(RULES).alias("failed_rules"),
        F.lit(ctx.spec.label).alias("input"),
        *[F.col(q(c)) for c in key],
        *[F.col(q(c)) for c in keep],
        F.lit(batch_id).cast("long").alias("batch_id"),
        F.lit(ctx.run_id).alias("run_id"),
        F.current_timestamp().alias("quarantined_at"),
    )
    rows.write.format("delta").mode("append").options(**txn).option("mergeSchema", "true").save(
        table.quarantine
    )


def _note_drift(batch: DataFrame, spec: InputSpec, table: SilverTable, ctx: RunContext) -> None:
    """Log input columns no declaration reads (a column added upstream is kept in bronze, never lost)."""
    if spec.format != "columns":
        return
    read = set(table.columns) | set(spec.keep) | set(spec.columns)
    expressions = " ".join(
        [
            spec.where or "",
            table.build.deletes or "",
            spec.deletes or "",
            *(r.when for r in table.build.reject),
            *spec.columns.values(),
        ]
        + [c.expr or "" for c in table.contract.columns]
    )
    read |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expressions))
    new = {c for c in batch.columns if c not in read and not c.startswith("_")} - ctx.drift
    if new:
        ctx.drift |= new
        log.warning(
            "%s: input %s has columns the declaration does not read: %s", table.name, spec.label, sorted(new)
        )


# --- running a table --------------------------------------------------------------------------------------


def ensure_tables(spark: SparkSession, table: SilverTable) -> None:
    """Create the silver table (partitioned as declared), its quarantine and the audit table when missing."""
    ensure_table(spark, table.path, table.schema, partition_by=table.build.partition_by)
    if table.quarantine_columns is not None:
        schema = _struct(", ".join(f"{q(name)} {kind}" for name, kind in table.quarantine_columns))
    else:
        schema = quarantine_schema([f for f in table.schema.fields if f.name in table.build.key], [])
    ensure_table(spark, table.quarantine, schema)
    ensure_table(spark, table.audit, AUDIT)


def check_declaration(spark: SparkSession, table: SilverTable) -> None:
    """Analyse every input's plan on its (empty) schema: a bad expression is a ConfigError naming it."""
    for spec in table.build.inputs:
        path = table.input_paths[spec.label]
        if not is_delta_table(spark, path):
            continue
        empty = spark.read.format("delta").load(path).limit(0)
        try:
            typed(parse(empty, spec, table), spec, table).schema  # noqa: B018 - analysis happens here
        except AnalysisException as exc:
            raise ConfigError(
                f"catalog/{table.name.replace('.', '/')}.yaml: input {spec.label}: {str(exc).splitlines()[0]}"
            ) from exc


@dataclass(frozen=True)
class BuildReport:
    """One run of a silver table: summed per-batch counts by input, and the drifted columns seen."""

    table: str
    run_id: str
    counts: dict[str, BatchCounts]
    drift: tuple[str, ...] = ()

    def as_frame(self) -> Any:
        """The counts as a pandas frame, one row per input (for a notebook)."""
        import pandas as pd

        return pd.DataFrame(
            [
                {"input": name, **{c: getattr(counts, c) for c in _COUNTS}}
                for name, counts in self.counts.items()
            ]
        )

    @property
    def total(self) -> BatchCounts:
        total = BatchCounts()
        for counts in self.counts.values():
            for name in _COUNTS:
                setattr(total, name, getattr(total, name) + getattr(counts, name))
        return total


Trigger = Literal["availableNow"] | str


def start_input(
    spark: SparkSession,
    settings: Settings,
    table: SilverTable,
    spec: InputSpec,
    *,
    run_id: str,
    trigger: Trigger = "availableNow",
    quality: bool = True,
    drift: set[str] | None = None,
) -> StreamingQuery | None:
    """Start the stream of one input (None while the input has no table yet); it is not awaited.

    ``trigger`` is ``availableNow`` (the DAG) or a processing-time interval like ``"30 seconds"``
    (continuous mode): the same declaration, checkpoint and audit either way.
    """
    path = table.input_paths[spec.label]
    if not is_delta_table(spark, path):
        log.info("%s: input %s has no table yet; nothing to read", table.name, spec.table)
        return None
    checkpoint = input_checkpoint(table, spec)
    ctx = RunContext(
        table=table,
        spec=spec,
        settings=settings,
        run_id=run_id,
        app_id=txn_app_id(checkpoint, f"{table.name}-{spec.label}"),
        quality=quality,
        drift=drift if drift is not None else set(),
        checkpoint=checkpoint,
    )

    def handle(batch: DataFrame, batch_id: int, ctx: RunContext = ctx) -> None:
        process_batch(batch, batch_id, ctx)

    writer = spark.readStream.format("delta").load(path).writeStream.foreachBatch(handle)
    writer = writer.option("checkpointLocation", checkpoint).queryName(
        f"silver_{table.contract.name}_{spec.label}_{settings.env_name}"
    )
    writer = (
        writer.trigger(availableNow=True)
        if trigger == "availableNow"
        else writer.trigger(processingTime=trigger)
    )
    return writer.start()


def input_checkpoint(table: SilverTable, spec: InputSpec) -> str:
    """The checkpoint of one input's stream (shared by the DAG's runs and continuous mode)."""
    return f"{table.checkpoints}/{spec.label}"


def start(
    spark: SparkSession,
    settings: Settings,
    table: SilverTable,
    *,
    run_id: str,
    trigger: Trigger = "availableNow",
    quality: bool = True,
    skip: Collection[str] = (),
) -> list[StreamingQuery]:
    """Start one stream per input (``availableNow``: one after the other, each awaited).

    ``skip`` names inputs (labels) left alone: continuous mode streams them right now, on the same
    checkpoint, so a DAG run must not.
    """
    ensure_tables(spark, table)
    check_declaration(spark, table)
    queries = []
    drift: set[str] = set()
    for spec in table.build.inputs:
        if spec.label in skip:
            log.info("%s: input %s is streamed by continuous mode; left to it", table.name, spec.label)
            continue
        query = start_input(
            spark, settings, table, spec, run_id=run_id, trigger=trigger, quality=quality, drift=drift
        )
        if query is None:
            continue
        if trigger == "availableNow":  # inputs one after the other: the table's MERGEs never race
            await_stream(query, f"{table.name} <- {spec.label}")
        queries.append(query)
    return queries


def build_table(
    spark: SparkSession,
    settings: Settings,
    name: str,
    *,
    run_id: str | None = None,
    quality: bool = True,
    table: SilverTable | None = None,
    skip: Collection[str] = (),
) -> BuildReport:
    """Bring a declared silver table up to date with its inputs (``availableNow``) and say what happened.

    Raises:
        ConfigError: the declaration is wrong (names the file and field).
        QualityError: a ``fail`` rule failed (results persisted, the batch not written).
        DataError: a stream failed otherwise.
    """
    table = table or silver_table(settings, name)
    run = run_id or str(uuid.uuid4())
    start(spark, settings, table, run_id=run, quality=quality, skip=skip)
    return report(spark, table, run)


def report(spark: SparkSession, table: SilverTable, run_id: str) -> BuildReport:
    """The run's counts per input, summed from the audit table."""
    if not is_delta_table(spark, table.audit):
        return BuildReport(table=table.name, run_id=run_id, counts={})
    rows = (
        spark.read.format("delta")
        .load(table.audit)
        .where((F.col("table") == table.name) & (F.col("run_id") == run_id))
        .groupBy("input")
        .agg(*[F.sum(c).alias(c) for c in _COUNTS])
        .collect()
    )
    counts = {row["input"]: BatchCounts(**{c: int(row[c] or 0) for c in _COUNTS}) for row in rows}
    return BuildReport(table=table.name, run_id=run_id, counts=counts)


def reconcile(spark: SparkSession, table: SilverTable) -> dict[str, int]:
    """All-time totals of the table's audit: input rows and where they went (they must add up)."""
    row = first_row(
        spark.sql(
            f"SELECT {', '.join(f'coalesce(sum({c}), 0) AS {c}' for c in _COUNTS)} "
            f"FROM {delta_ref(table.audit)} WHERE `table` = '{table.name}'"
        )
    )
    return {c: int(row[c]) for c in _COUNTS}


def check_table(spark: SparkSession, table: SilverTable) -> dict[str, int]:
    """The table's invariants; returns the all-time audit totals.

    Raises:
        DataError: the audit does not balance (input rows != applied + quarantined + duplicates + dropped),
            the table holds another row count than its audit applied, a key is there twice where the apply
            mode promises one row per key, an SCD2 history breaks its invariants (see
            :func:`_check_history`), or a quarantined row has no reason.
    """
    totals = reconcile(spark, table)
    accounted = totals["applied"] + totals["quarantined"] + totals["duplicates"] + totals["dropped"]
    if totals["input_rows"] != accounted:
        raise DataError(
            f"{table.name}: input rows {totals['input_rows']} != applied + quarantined + duplicates "
            f"+ dropped {accounted} ({totals})"
        )
    frame = spark.read.format("delta").load(table.path)
    rows = frame.count()
    if rows != totals["applied"]:
        raise DataError(f"{table.name} holds {rows} rows but its audit applied {totals['applied']}")
    build = table.build
    if build.key and (build.apply == "upsert" or build.dedupe):
        unique = frame.where(F.col(q(build.scd2.is_current))) if build.scd2 else frame
        twice = unique.groupBy(*[F.col(q(k)) for k in build.key]).count().where("count > 1").count()
        if twice:
            raise DataError(f"{table.name}: {twice} keys {build.key} are there more than once")
    if build.scd2 is not None:
        _check_history(frame, table)
    quarantine = spark.read.format("delta").load(table.quarantine)
    if quarantine.where(F.col("reason").isNull()).count():
        raise DataError(f"{table.quarantine_table}: a quarantined row has no reason")
    return totals


def _check_history(frame: DataFrame, table: SilverTable) -> None:
    """SCD2 invariants: every version has its start; a key's versions do not overlap (each closed one ends
    where the next begins, only the last is open and current); every key has a current version unless a
    delete may close it."""
    build = table.build
    assert build.scd2 is not None
    spec = build.scd2
    start, end, current = F.col(q(spec.valid_from)), F.col(q(spec.valid_to)), F.col(q(spec.is_current))
    by_start = Window.partitionBy(*[F.col(q(k)) for k in build.key]).orderBy(start)
    following = F.lead(start).over(by_start)
    versions = frame.select(
        *[F.col(q(k)) for k in build.key],
        start.alias("_start"),
        end.alias("_end"),
        current.alias("_current"),
        following.alias("_next"),
    )
    broken = versions.where(
        F.col("_start").isNull()
        | F.col("_current").isNull()
        | (F.col("_end").isNotNull() & (F.col("_end") <= F.col("_start")))
        | (F.col("_next").isNull() & F.col("_end").isNull() & ~F.col("_current"))
        | (F.col("_next").isNotNull() & (F.col("_end").isNull() | (F.col("_end") > F.col("_next"))))
        | (F.col("_next").isNotNull() & F.col("_current"))
    )
    bad = broken.count()
    if bad:
        raise DataError(
            f"{table.name}: {bad} versions break the SCD2 history (no {spec.valid_from}, open or current "
            f"before a later version, or overlapping the next one)"
        )
    closes = spec.on_delete == "close" and (build.deletes is not None or any(i.deletes for i in build.inputs))
    if not closes:
        keys = frame.groupBy(*[F.col(q(k)) for k in build.key]).agg(
            F.count(F.when(current, 1)).alias("_current_rows")
        )
        without = keys.where(F.col("_current_rows") == 0).count()
        if without:
            raise DataError(f"{table.name}: {without} keys {build.key} have no current version")
