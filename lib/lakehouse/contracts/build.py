"""How a silver table is built, declared in its contract (``catalog/silver/<name>.yaml``, section ``build``).

The contract already says what the table *is* — its columns, types, PII treatment. The ``build`` section says
where its rows come from and how they are applied; a column's ``expr`` (Spark SQL) says how it is computed
from the parsed input. One engine (:mod:`lakehouse.silver.engine`) runs any declaration, in the DAG and in
continuous mode. Example (smart meters' readings, deduplicated by meter and sequence number)::

    build:
      inputs:
        - table: bronze.meter_readings
          format: json                 # the payload is JSON text in column `value`
          fields:                      # payload fields (Spark types; nested objects as struct<...>)
            meter: string
            seq: bigint
            usage: struct<kwh:double, at:string>
      key: [meter_id, seq]
      sequence: [ingested_at]
      apply: append                    # append | upsert | scd2
      event_time: {column: measured_at, watermark: 1 hour, partition_by: [meter_id]}
      reject:                          # first match is the quarantine reason
        - {reason: negative_usage, when: "kwh < 0"}
      references:
        - {columns: [meter_id], table: silver.meters, action: warn}
    columns:
      - {name: meter_id, type: string, expr: payload.meter}
      - {name: kwh, type: double, expr: payload.usage.kwh}
      - {name: measured_at, type: timestamp, expr: try_to_timestamp(payload.usage.at)}

Nothing here imports Spark: configuration is checked (and errors name the file and field) without a session.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_TABLE = r"^(bronze|silver|gold)\.[a-z0-9_]+$"
_INTERVAL = re.compile(r"^\d+\s+(second|minute|hour|day)s?$")
_REASON = re.compile(r"^[a-z][a-z0-9_:.-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Model):
    """One table whose new rows feed the silver table (read as a Delta stream, remembered by a checkpoint).

    ``format`` says how its rows become columns:

    * ``columns`` — the input rows are already columns (an extract, a typed upstream table);
    * ``json`` — column ``column`` holds JSON text, parsed with ``fields`` (field → Spark type; a contract
      column without ``fields`` is read as text and cast, so a bad value is quarantined, not nulled) or as
      the payload declared by source ``payload`` in ``sources.yaml`` (its fields, paths, types, units and
      times; a ``required`` field that is missing is rejected as ``missing_<field>``); the parsed payload is
      ``payload`` in expressions, the input's own columns keep their names;
    * ``wal2json`` — change records (format 2) of ``cdc_table`` (``schema.table``): each change becomes the
      contract's columns (cast from wal2json's text), plus ``_op`` (``I``/``U``/``D``), ``_lsn`` and
      ``_commit_lsn`` (comparable numbers) and ``_committed_at``; records that name no table (not JSON,
      not a change) are quarantined by every table reading the feed (``malformed_json``, ``unknown_table``).

    ``columns`` overrides a contract column's ``expr`` for this input only (CDC and an extract may feed one
    table from different shapes). ``deletes`` overrides the build's delete predicate for this input only
    (``"false"``: a watermark extract carries no deletes, and has no column to say so). ``where`` filters the
    input's rows (Spark SQL). ``keep`` names input columns stored with a quarantined row (besides the raw
    record).
    """

    table: str = Field(pattern=_TABLE)
    format: Literal["columns", "json", "wal2json"] = "columns"
    column: str = "value"
    fields: dict[str, str] = Field(default_factory=dict)
    payload: str | None = Field(
        None, description="json: read the payload as this source's declared payload (sources.yaml)"
    )
    cdc_table: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    deletes: str | None = None
    where: str | None = None
    keep: list[str] = Field(default_factory=list)
    name: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]*$")

    @model_validator(mode="after")
    def _cdc_needs_table(self) -> InputSpec:
        if self.format == "wal2json" and not self.cdc_table:
            raise ValueError("a wal2json input needs cdc_table: the schema.table whose changes it carries")
        if self.format != "wal2json" and self.cdc_table:
            raise ValueError("cdc_table is only for format: wal2json")
        if (self.fields or self.payload) and self.format != "json":
            raise ValueError("fields and payload are only for format: json")
        if self.fields and self.payload:
            raise ValueError(
                "declare the payload's fields here or name the source whose payload it is, not both"
            )
        return self

    @property
    def label(self) -> str:
        """The input's name in checkpoints and audit rows (default: its table's name)."""
        if self.name:
            return self.name
        suffix = f"_{self.cdc_table.rsplit('.', 1)[-1]}" if self.cdc_table else ""
        return self.table.split(".", 1)[1] + suffix


class EventTimeSpec(_Model):
    """Bounded lateness: a row older than the newest event seen before it, minus ``watermark``, is late.

    "Seen before it" is per ``partition_by`` group (e.g. a Kafka partition or a device) in ``order_by`` order
    within a batch, and across batches the newest ``column`` already in silver — of the row's group when the
    ``partition_by`` columns are columns of the table (devices with skewed clocks are judged each on its
    own), else of the whole table. Late rows are quarantined with reason ``late_beyond_watermark``.

    An event time is bounded before it can move the watermark: one dated later than ``max_future`` past
    ``relative_to`` (a column of the row, e.g. the ingest or Kafka time; default the time the batch is
    processed) is quarantined as ``event_time_in_future``, one before ``not_before`` as
    ``event_time_before_floor`` — so one device with a wrong clock cannot make every later event late.
    ``max_future: null`` turns the future bound off.
    """

    column: str
    watermark: str
    partition_by: list[str] = Field(default_factory=list)
    order_by: list[str] = Field(default_factory=list)
    max_future: str | None = "1 day"
    relative_to: str | None = None
    not_before: str | None = None

    @field_validator("watermark", "max_future")
    @classmethod
    def _interval(cls, value: str | None) -> str | None:
        if value is not None and not _INTERVAL.match(value.strip()):
            raise ValueError(f"{value!r} is not an interval like '15 minutes' or '1 hour'")
        return None if value is None else value.strip()

    @field_validator("not_before")
    @classmethod
    def _instant(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not_before {value!r} is not an ISO date or time like '2000-01-01'") from None
        return value.strip()


class RejectRule(_Model):
    """A parse-time rule: rows where ``when`` (Spark SQL over the typed columns) is true are quarantined."""

    reason: str
    when: str

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        if not _REASON.match(value):
            raise ValueError(f"reason {value!r} must be lower_snake_case")
        return value


class Reference(_Model):
    """A foreign key: ``columns`` must match ``to`` (default the same names) of a row of ``table``."""

    columns: list[str] = Field(min_length=1)
    table: str = Field(pattern=_TABLE)
    to: list[str] = Field(default_factory=list)
    action: Literal["warn", "quarantine"] = "warn"
    name: str | None = None

    @model_validator(mode="after")
    def _same_arity(self) -> Reference:
        if self.to and len(self.to) != len(self.columns):
            raise ValueError(f"references {self.columns} -> {self.to}: the column lists differ in length")
        return self

    @property
    def target_columns(self) -> list[str]:
        return self.to or self.columns

    @property
    def rule(self) -> str:
        """The quarantine reason / result rule: ``orphan_<table name>`` unless named."""
        return self.name or f"orphan_{self.table.split('.', 1)[1]}"


class Scd2Spec(_Model):
    """SCD Type 2 history: a new version opens when a ``track`` column changes.

    Output columns (declared in the contract): the key, the tracked columns, ``valid_from`` (the version's
    sequence value), ``valid_to`` (null while current), ``is_current`` and, optionally, ``surrogate_key``
    (a stable hash of key and ``valid_from``).

    ``on_delete`` says what a delete (the build's ``deletes``) does to the history: ``close`` ends the key's
    current version at the delete's sequence value; ``keep`` leaves the last version current (a dimension that
    facts still join to) and counts the delete as changing nothing.
    """

    track: list[str] = Field(min_length=1)
    on_delete: Literal["close", "keep"] = "close"
    valid_from: str = "valid_from"
    valid_to: str = "valid_to"
    is_current: str = "is_current"
    surrogate_key: str | None = None


class ConflictSpec(_Model):
    """Duplicates that disagree (append mode): a row whose key was seen before — earlier in the batch or in
    the table — but whose ``compare`` columns differ is not a re-delivery, and is not resolved by arrival
    order: it is quarantined with reason ``conflicting_duplicate`` (the row kept first stays), or only
    counted with ``action: warn``. ``compare`` names the columns a re-delivery repeats exactly (not the
    ingest time or the Kafka offset, which differ each time).
    """

    compare: list[str] = Field(min_length=1)
    action: Literal["quarantine", "warn"] = "quarantine"


class BuildSpec(_Model):
    """The ``build`` section of a silver contract: inputs, keys and how rows are applied."""

    inputs: list[InputSpec] = Field(min_length=1)
    key: list[str] = Field(default_factory=list)
    sequence: list[str] = Field(default_factory=list)
    apply: Literal["append", "upsert", "scd2"] = "append"
    dedupe: bool = True
    conflicts: ConflictSpec | None = None
    deletes: str | None = None
    event_time: EventTimeSpec | None = None
    reject: list[RejectRule] = Field(default_factory=list)
    references: list[Reference] = Field(default_factory=list)
    scd2: Scd2Spec | None = None
    partition_by: list[str] = Field(default_factory=list)
    quality: bool = True
    quarantine: str | None = Field(None, pattern=_TABLE)

    @model_validator(mode="after")
    def _consistent(self) -> BuildSpec:
        if self.apply in ("upsert", "scd2") and not self.key:
            raise ValueError(f"apply: {self.apply} needs key (the columns that identify a row)")
        if self.apply in ("upsert", "scd2") and not self.sequence:
            raise ValueError(f"apply: {self.apply} needs sequence (the columns whose latest value wins)")
        if self.apply == "scd2" and self.scd2 is None:
            raise ValueError("apply: scd2 needs an scd2 section (track, valid_from …)")
        if self.apply != "scd2" and self.scd2 is not None:
            raise ValueError("an scd2 section needs apply: scd2")
        if (self.deletes or any(i.deletes for i in self.inputs)) and self.apply == "append":
            raise ValueError("deletes needs apply: upsert or scd2 (an append-only table keeps every row)")
        labels = [i.label for i in self.inputs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"inputs must have distinct names; give them `name:` ({labels})")
        if self.conflicts is not None and (self.apply != "append" or not self.key or not self.dedupe):
            raise ValueError("conflicts needs apply: append with a key and dedupe (upserts expect changes)")
        reasons = [r.reason for r in self.reject]
        if len(set(reasons)) != len(reasons):
            raise ValueError(f"duplicate reject reasons {reasons}")
        return self

    def upstream_tables(self) -> list[str]:
        """Every table this one reads: inputs and references (``layer.name``), in order, once each."""
        seen: list[str] = []
        for table in [*(i.table for i in self.inputs), *(r.table for r in self.references)]:
            if table not in seen:
                seen.append(table)
        return seen


class ModelSpec(_Model):
    """The ``model`` section of a gold contract: a SQL model or a registered Python transform.

    ``sql`` names a file (relative to the project, e.g. ``models/gold/fx_monthly.sql``) holding one Spark SQL
    query that reads other tables as ``{{ ref('silver.fx_rates') }}``; ``python`` names a transform
    registered in :mod:`lakehouse.gold.models` for what SQL cannot say, with its ``inputs`` and ``params``.
    ``params`` (scalars, lists, or mappings of text — e.g. a transform's aggregates, a lookup) reach a
    transform as they are and a SQL model as ``{{ param('name') }}``, a SQL literal.
    ``materialize: full`` replaces the table on each run; ``incremental`` merges the query's rows by
    ``unique_key`` (new keys inserted, existing ones replaced).
    """

    sql: str | None = None
    python: str | None = None
    inputs: list[str] = Field(default_factory=list)
    params: dict[str, str | int | float | bool | list[str] | dict[str, str]] = Field(default_factory=dict)
    materialize: Literal["full", "incremental"] = "full"
    unique_key: list[str] = Field(default_factory=list)
    partition_by: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_kind(self) -> ModelSpec:
        if (self.sql is None) == (self.python is None):
            raise ValueError("a model is either sql (a file) or python (a registered transform)")
        if self.materialize == "incremental" and not self.unique_key:
            raise ValueError("materialize: incremental needs unique_key (the columns a row is replaced by)")
        if self.sql is not None and self.inputs:
            raise ValueError("a SQL model's inputs are its ref() calls; inputs is for python transforms")
        for table in self.inputs:
            if not re.match(_TABLE, table):
                raise ValueError(f"input {table!r} is not <bronze|silver|gold>.<name>")
        return self


class InfluxSpec(_Model):
    """Where a rollup's rows also go in InfluxDB: one point per row, at ``window_start``.

    ``fields`` default to every column of the table besides the window, the ``tags`` and the stamps
    (``batch_id``, ``emitted_at``); a field keeps the contract column's type (InfluxDB rejects a change).
    """

    measurement: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    fields: list[str] = Field(default_factory=list)


class RollupSpec(_Model):
    """The ``rollup`` section of a gold contract: tumbling windows over a topic, kept by continuous mode.

    The rows are a silver table's (``rows``), read live from the Kafka topic its input's bronze table is
    ingested from, through that table's own declared parse, columns and reject rules (a row silver would
    quarantine never counts, and cannot move the watermark). ``event_time`` (default the silver table's
    ``build.event_time.column``) is cut into ``window``-long windows; a window is written once, final, when
    the watermark (the newest event time seen minus ``lateness``) passes its end (append mode). ``dedupe``
    drops re-deliveries (same values of these columns) within the watermark.

    ``aggregate`` is the stateful part, per window and ``group_by`` (Spark SQL aggregate expressions, e.g.
    ``count(1)``, ``avg(temperature_c)``, ``collect_set(session_id)``); ``columns`` computes the table's
    columns from it in each micro-batch (default: the aggregate or group column of the same name), e.g.
    ``size(session_ids)`` for an exact distinct count. ``group_by`` maps an output column to its expression
    (a list: columns by name).

    A rollup ``of`` another regroups that one's windows in the same micro-batch (``group_by``, ``aggregate``
    over its aggregate columns), e.g. sessions per minute over all event types from the per-type sets.
    Example::

        rollup:
          rows: silver.telemetry
          dedupe: [device_id, seq]
          group_by: {device_id: device_id, site: "coalesce(site, 'unknown')"}
          aggregate: {max_co2_ppm: max(co2_ppm), messages: count(1)}
          influx: {measurement: device_minute, tags: [device_id, site]}
    """

    rows: str | None = Field(None, pattern=r"^silver\.[a-z0-9_]+$")
    input: str | None = None
    of: str | None = Field(None, pattern=r"^gold\.[a-z0-9_]+$")
    event_time: str | None = None
    window: str = "1 minute"
    lateness: str = "1 minute"
    dedupe: list[str] = Field(default_factory=list)
    group_by: dict[str, str] = Field(default_factory=dict)
    aggregate: dict[str, str] = Field(min_length=1)
    columns: dict[str, str] = Field(default_factory=dict)
    influx: InfluxSpec | None = None

    @field_validator("group_by", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        return {name: name for name in value} if isinstance(value, list) else value

    @field_validator("window", "lateness")
    @classmethod
    def _interval(cls, value: str) -> str:
        if not _INTERVAL.match(value.strip()):
            raise ValueError(f"{value!r} is not an interval like '1 minute' or '10 seconds'")
        return value.strip()

    @model_validator(mode="after")
    def _one_origin(self) -> RollupSpec:
        if (self.rows is None) == (self.of is None):
            raise ValueError("a rollup reads either rows (a silver table) or of (another rollup)")
        if self.of is not None and (self.input or self.event_time or self.dedupe):
            raise ValueError("a rollup of another takes its rows, event time and dedupe from that one")
        clash = sorted(set(self.group_by) & set(self.aggregate))
        if clash:
            raise ValueError(f"group_by and aggregate both name {clash}")
        reserved = sorted({"window_start", "window_end"} & {*self.group_by, *self.aggregate})
        if reserved:
            raise ValueError(f"{reserved} are the window's own columns")
        return self


def task_name(table: str) -> str:
    """The DAG task that builds a declared table: ``silver.fx_rates`` → ``silver-fx-rates``."""
    return table.replace(".", "-").replace("_", "-")
