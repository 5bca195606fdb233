"""The governance catalog: one YAML contract per lake table, checked against the real Delta schema.

A contract lives in ``catalog/<layer>/<name>.yaml``::

    table: silver.retail_customers
    owner: retail-data
    description: Current state of the shop's customers (one row per customer_id).
    classification: pii            # the most sensitive column decides
    retention_days: 730
    freshness_sla: 24h             # 30m, 6h, 7d … or omit for no SLA
    subjects:                      # where data subjects live (drives `lakehouse privacy erase`)
      - {kind: customer, column: customer_id}
    columns:
      - {name: customer_id, type: long, description: Shop customer id, classification: internal}
      - {name: email, type: string, description: Contact address, classification: pii, pii: email,
         treatment: tokenize}

Types are Delta type names (``string``, ``long``, ``integer``, ``double``, ``timestamp``, ``date``,
``boolean``, ``decimal(10,2)`` …). ``treatment: keep`` is allowed only in bronze, which is restricted.

Example:
    >>> from lakehouse.config import load_settings
    >>> catalog = load_catalog(load_settings("dev1"))  # doctest: +SKIP
    >>> catalog.tables["silver.events"].owner  # doctest: +SKIP
    'web-analytics'
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lakehouse.config import Settings
from lakehouse.contracts.build import BuildSpec, ModelSpec, RollupSpec
from lakehouse.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LAYERS = ("bronze", "silver", "gold", "audit")
Classification = Literal["public", "internal", "confidential", "pii"]
Treatment = Literal["tokenize", "drop", "keep"]
SubjectKind = Literal["customer", "user"]
_RANK = {"public": 0, "internal": 1, "confidential": 2, "pii": 3}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TYPE = re.compile(
    r"^(string|long|integer|short|byte|float|double|boolean|binary|date|timestamp|timestamp_ntz|"
    r"decimal\(\d+,\d+\)|array<.+>|map<.+>|struct<.+>)$"
)


class SchemaDriftError(DataError):
    """A table's Delta schema no longer matches its catalog contract."""


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``30m``, ``6h``, ``7d``.

    Raises:
        ValueError: the text is not ``<number><s|m|h|d>``.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 6h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnContract(_Model):
    """One column: Delta type, meaning, classification and, for PII, its kind and treatment."""

    name: str = Field(min_length=1)
    type: str
    description: str = ""
    classification: Classification = "internal"
    pii: str | None = None  # email | phone | ip | name | address | credit_card | iban | birth_date …
    treatment: Treatment | None = None
    nullable: bool = True
    # How a built (silver) table computes the column: Spark SQL over the parsed input (default: the input's
    # field or column of the same name). See lakehouse.contracts.build.
    expr: str | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if not _TYPE.match(value):
            raise ValueError(
                f"unknown Delta type {value!r} (e.g. string, long, integer, timestamp, decimal(10,2))"
            )
        return value

    @model_validator(mode="after")
    def _pii_needs_treatment(self) -> ColumnContract:
        if self.pii is not None and self.treatment is None:
            raise ValueError(
                f"column {self.name!r} is pii: {self.pii} but has no treatment (tokenize|drop|keep)"
            )
        if self.pii is not None and self.classification != "pii":
            raise ValueError(f"column {self.name!r} is pii: {self.pii}; its classification must be pii")
        if self.pii is None and self.treatment is not None:
            raise ValueError(f"column {self.name!r} has a treatment but no pii kind")
        return self


class SubjectRef(_Model):
    """Where a data subject (a retail customer, a clickstream user) is identified in a table.

    Exactly one of ``column`` (optionally with ``json_path`` into a JSON text column) or ``expression`` (a
    Spark SQL expression giving the subject id as a string) says where. ``match`` says what it holds: the
    subject's ``id`` or the ``email_token`` of the subject's email (tokenized columns).
    """

    kind: SubjectKind
    column: str | None = None
    json_path: str | None = None
    expression: str | None = None
    match: Literal["id", "email_token"] = "id"

    @model_validator(mode="after")
    def _one_locator(self) -> SubjectRef:
        if (self.column is None) == (self.expression is None):
            raise ValueError("a subject needs exactly one of column or expression")
        if self.json_path is not None and self.column is None:
            raise ValueError("json_path needs column (the JSON text column)")
        return self

    def sql(self) -> str:
        """The Spark SQL expression of the subject value in this table."""
        if self.expression is not None:
            return f"({self.expression})"
        column = f"`{self.column}`"
        if self.json_path is not None:
            return f"get_json_object({column}, '{self.json_path}')"
        return f"CAST({column} AS STRING)"


# The columns every rollup table has besides its declared ones: the window and the micro-batch that wrote it.
ROLLUP_STAMPS: Final = ("window_start", "window_end", "batch_id", "emitted_at")


class TableContract(_Model):
    """The contract of one lake table."""

    table: str = Field(pattern=r"^(bronze|silver|gold|audit)\.[a-z0-9_]+$")
    owner: str = Field(min_length=1)
    description: str = Field(min_length=1)
    classification: Classification
    retention_days: int | None = Field(None, ge=1)
    freshness_sla: str | None = None
    optional: bool = False  # built only in some modes (continuous): a missing table is not an error
    subjects: tuple[SubjectRef, ...] = ()
    columns: tuple[ColumnContract, ...] = Field(min_length=1)
    build: BuildSpec | None = None
    model: ModelSpec | None = None
    rollup: RollupSpec | None = None

    @field_validator("freshness_sla")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TableContract:
        names = [c.name for c in self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate columns {duplicates}")
        worst = max(self.columns, key=lambda c: _RANK[c.classification]).classification
        if _RANK[worst] > _RANK[self.classification]:
            raise ValueError(
                f"classification {self.classification} is below its most sensitive column ({worst})"
            )
        if self.restricted is False:
            kept = [c.name for c in self.columns if c.treatment == "keep"]
            if kept:
                raise ValueError(
                    f"treatment keep is allowed only in bronze and quarantine tables; found {kept}"
                )
        for subject in self.subjects:
            if subject.column is not None and subject.column not in names:
                raise ValueError(f"subject column {subject.column!r} is not a column of the table")
        if self.build is not None:
            self._check_build(self.build, names)
        if self.model is not None:
            if self.layer != "gold":
                raise ValueError(f"model is declared for gold tables; {self.table} is {self.layer}")
            unknown = [c for c in [*self.model.unique_key, *self.model.partition_by] if c not in names]
            if unknown:
                raise ValueError(f"model names {unknown}, which are not columns of the table")
        if self.rollup is not None:
            self._check_rollup(self.rollup, names)
        return self

    def _check_rollup(self, rollup: RollupSpec, names: list[str]) -> None:
        if self.layer != "gold":
            raise ValueError(f"rollup is declared for gold tables; {self.table} is {self.layer}")
        if self.model is not None:
            raise ValueError("a gold table is either a model (the DAG) or a rollup (continuous mode)")
        produced = {*ROLLUP_STAMPS, *rollup.group_by, *rollup.aggregate, *rollup.columns}
        missing = [n for n in names if n not in produced]
        if missing:
            raise ValueError(
                f"rollup gives no value for columns {missing}: name them in group_by, aggregate or columns"
            )
        unknown = [n for n in rollup.columns if n not in names]
        if rollup.influx is not None:
            unknown += [n for n in [*rollup.influx.tags, *rollup.influx.fields] if n not in names]
        if unknown:
            raise ValueError(f"rollup names {unknown}, which are not columns of the table")

    def _check_build(self, build: BuildSpec, names: list[str]) -> None:
        if self.layer != "silver":
            raise ValueError(f"build is declared for silver tables; {self.table} is {self.layer}")
        declared = {
            "key": build.key,
            "sequence": build.sequence,
            "partition_by": build.partition_by,
            **({"scd2.track": build.scd2.track} if build.scd2 else {}),
            **({"references.columns": [c for r in build.references for c in r.columns]}),
            **({"conflicts.compare": build.conflicts.compare} if build.conflicts else {}),
        }
        extra = set(build.sequence) & {"_lsn", "_commit_lsn"}  # CDC positions may order without a column
        for field_name, columns in declared.items():
            unknown = [c for c in columns if c not in names and c not in extra]
            if unknown:
                raise ValueError(f"build.{field_name} names {unknown}, which are not columns of the table")
        if build.event_time and build.event_time.column not in names:
            raise ValueError(f"build.event_time.column {build.event_time.column!r} is not a column")
        if build.event_time:
            kind = self.column(build.event_time.column).type
            if kind not in ("timestamp", "timestamp_ntz", "date"):
                raise ValueError(
                    f"build.event_time.column {build.event_time.column!r} is {kind}: an event time is a "
                    "timestamp or date column (declare its type, or derive one with expr)"
                )
            relative = build.event_time.relative_to
            kept = [c for spec in build.inputs for c in spec.keep]
            if relative is not None and relative not in names and relative not in kept:
                raise ValueError(
                    f"build.event_time.relative_to {relative!r} is neither a column nor kept from an input "
                    "(the time the bound is judged against: e.g. ingested_at, or a Kafka timestamp in keep)"
                )
        if build.scd2:
            for role in ("valid_from", "valid_to", "is_current"):
                column = getattr(build.scd2, role)
                if column not in names:
                    raise ValueError(f"build.scd2.{role} {column!r} is not a column of the table")
        for index, spec in enumerate(build.inputs):
            unknown = sorted(set(spec.columns) - set(names))
            if unknown:
                raise ValueError(f"build.inputs[{index}].columns names {unknown}: not columns of the table")

    @property
    def layer(self) -> str:
        """``bronze``, ``silver``, ``gold`` or ``audit``."""
        return self.table.split(".", 1)[0]

    @property
    def name(self) -> str:
        """The table name within its layer."""
        return self.table.split(".", 1)[1]

    @property
    def restricted(self) -> bool:
        """Bronze and quarantine tables hold payloads verbatim: restricted access, PII may be kept there."""
        return self.layer == "bronze" or self.name.endswith("_quarantine")

    @property
    def sla_seconds(self) -> float | None:
        """The freshness SLA in seconds (``None``: no SLA)."""
        return parse_duration(self.freshness_sla) if self.freshness_sla else None

    def column(self, name: str) -> ColumnContract:
        """The contract of one column (``KeyError`` if the table has none)."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.table} has no column {name!r}")

    def pii_columns(self) -> list[ColumnContract]:
        """The columns tagged with a ``pii`` kind."""
        return [c for c in self.columns if c.pii is not None]


class Catalog(_Model):
    """All contracts, keyed by ``"<layer>.<name>"``."""

    root: Path
    tables: dict[str, TableContract]

    def contract(self, table: str) -> TableContract:
        """The contract of ``table`` (``ConfigError`` naming the catalog folder when there is none)."""
        try:
            return self.tables[table]
        except KeyError:
            raise ConfigError(
                f"no contract for {table} in {self.root}: add {self.root}/{table.replace('.', '/')}.yaml "
                f"(draft one with `lakehouse catalog scaffold {table}`)"
            ) from None


def catalog_root(settings: Settings) -> Path:
    """The catalog folder of the repository (``catalog/``)."""
    return Path(settings.root) / "catalog"


def _location(loc: tuple[Any, ...], document: dict[str, Any]) -> str:
    parts: list[str] = []
    node: Any = document
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            node = node[item]
            name = node.get("name") if isinstance(node, dict) else None
            parts.append(f"[{name}]" if name else f"[{item}]")
        else:
            node = node.get(item) if isinstance(node, dict) else None
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts)


_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_contract(path: Path) -> TableContract:
    """Read and validate one contract file.

    Raises:
        ConfigError: naming the file and the field that is wrong.
    """
    try:
        # libyaml's loader: a build reads every contract, and the pure-Python one took seconds for them.
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read catalog contract {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"catalog contract {path} must be a YAML mapping (table, owner, columns …)")
    try:
        contract = TableContract.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_location(tuple(e['loc']), document) or '(top level)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid catalog contract {path}: {problems}") from exc
    expected = f"{path.parent.name}.{path.stem}"
    if contract.table != expected:
        raise ConfigError(
            f"catalog contract {path}: field table is {contract.table!r}, the file says {expected!r}"
        )
    return contract


def load_catalog(settings: Settings, root: Path | None = None) -> Catalog:
    """Load every ``catalog/<layer>/<name>.yaml`` contract.

    Args:
        settings: the environment (the catalog lives in the repository: ``settings.root / "catalog"``).
        root: another catalog folder (tests).

    Raises:
        ConfigError: the folder is missing or a contract is invalid (the message names file and field).
    """
    return load_catalog_dir(root or catalog_root(settings))


def load_catalog_dir(folder: Path) -> Catalog:
    """Load every ``<layer>/<name>.yaml`` contract under ``folder`` (see :func:`load_catalog`).

    Raises:
        ConfigError: the folder is missing or a contract is invalid.
    """
    if not folder.is_dir():
        raise ConfigError(f"no catalog folder at {folder}: contracts live in catalog/<layer>/<name>.yaml")
    tables: dict[str, TableContract] = {}
    for path in sorted(folder.glob("*/*.yaml")):
        contract = load_contract(path)
        tables[contract.table] = contract
    for contract in tables.values():
        _check_references(contract, tables)
    for contract in list(tables.values()):
        if contract.build is not None:
            name = contract.build.quarantine or f"{contract.table}_quarantine"
            if name not in tables:
                tables[name] = quarantine_contract(contract, tables, name)
    return Catalog(root=folder, tables=tables)


_TYPE_FAMILIES: Final = {
    **dict.fromkeys(("byte", "short", "integer", "long", "float", "double"), "number"),
    **dict.fromkeys(("timestamp", "timestamp_ntz"), "timestamp"),
}


def _type_family(kind: str) -> str:
    return "number" if kind.startswith("decimal") else _TYPE_FAMILIES.get(kind, kind)


def _check_references(contract: TableContract, tables: dict[str, TableContract]) -> None:
    """A declared reference names columns of the referenced table, of comparable types.

    (A referenced table without a contract is the DAG's and the engine's to report: they say who should
    write it.)

    Raises:
        ConfigError: naming the contract file, the reference and the columns.
    """
    if contract.build is None:
        return
    for index, reference in enumerate(contract.build.references):
        target = tables.get(reference.table)
        if target is None:
            continue
        where = f"catalog/{contract.table.replace('.', '/')}.yaml: build.references[{index}]"
        names = [c.name for c in target.columns]
        unknown = [c for c in reference.target_columns if c not in names]
        if unknown:
            raise ConfigError(f"{where} names {unknown}, which are not columns of {target.table} ({names})")
        for mine, theirs in zip(reference.columns, reference.target_columns, strict=True):
            own, other = contract.column(mine).type, target.column(theirs).type
            if _type_family(own) != _type_family(other):
                raise ConfigError(
                    f"{where}: {mine} is {own} but {target.table}.{theirs} is {other}: the types differ, so "
                    f"no row would match; give {mine} the type of {theirs} (or cast it in its expr)"
                )


def quarantine_contract(
    contract: TableContract, tables: dict[str, TableContract], name: str | None = None
) -> TableContract:
    """The contract of a declared table's quarantine, as the silver engine writes it.

    The raw record is kept whole (restricted, like bronze), with the reason, every rule broken, the input,
    the key as far as it parsed and the input columns the declaration keeps (typed as the input's contract
    says). Subjects are found by the key column when it is one, else by the same-named field of the record.
    """
    assert contract.build is not None
    build = contract.build
    pii = contract.classification == "pii"
    columns: list[ColumnContract] = [
        ColumnContract(
            name="record",
            type="string",
            description="The input record as it arrived (restricted: PII in clear).",
            classification=contract.classification,
            **({"pii": "raw_record", "treatment": "keep"} if pii else {}),
        ),
        ColumnContract(name="reason", type="string", description="The first rule the record broke."),
        ColumnContract(name="failed_rules", type="array<string>", description="Every rule the record broke."),
        ColumnContract(name="input", type="string", description="The declared input the record came from."),
    ]
    for key in build.key:
        source = contract.column(key)
        columns.append(
            source.model_copy(update={"description": f"Key column {key}, when it parsed.", "expr": None})
        )
    for spec in build.inputs:
        upstream = tables.get(spec.table)
        for kept in spec.keep:
            if kept in {c.name for c in columns}:
                continue
            kind = (
                next((c.type for c in upstream.columns if c.name == kept), "string") if upstream else "string"
            )
            columns.append(ColumnContract(name=kept, type=kind, description=f"{kept} of the input row."))
    columns += [
        ColumnContract(name="batch_id", type="long", description="The micro-batch that set the row aside."),
        ColumnContract(name="run_id", type="string", description="The run that set the row aside."),
        ColumnContract(name="quarantined_at", type="timestamp", description="When (UTC)."),
    ]
    subjects = tuple(
        subject
        if subject.column in build.key or subject.column is None
        else subject.model_copy(update={"column": "record", "json_path": f"$.{subject.column}"})
        for subject in contract.subjects
    )
    return TableContract(
        table=name or f"{contract.table}_quarantine",
        owner=contract.owner,
        description=f"Rows of {contract.table} set aside by the silver engine, kept whole with the reason.",
        classification=contract.classification,
        retention_days=30,
        subjects=subjects,
        columns=tuple(columns),
    )


def _table_path(settings: Settings, table: str) -> str:
    layer, name = table.split(".", 1)
    return settings.table_path(layer, name)


def delta_schema(path: str) -> list[tuple[str, str, bool]] | None:
    """``(name, Delta type, nullable)`` per column of the Delta table at ``path`` (``None``: no table)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(path)
    except TableNotFoundError:
        return None
    return [(field.name, _type_name(field.type), field.nullable) for field in table.schema().fields]


def _complex_type(kind: Any) -> str:
    name = type(kind).__name__
    if name == "ArrayType":
        return f"array<{_type_name(kind.element_type)}>"
    if name == "MapType":
        return f"map<{_type_name(kind.key_type)},{_type_name(kind.value_type)}>"
    if name == "StructType":
        return "struct<" + ",".join(f"{f.name}:{_type_name(f.type)}" for f in kind.fields) + ">"
    return str(kind)


def _type_name(kind: Any) -> str:
    # Complex types also carry a ``type`` attribute ("array", "map", "struct"): spell out their parts.
    primitive = getattr(kind, "type", None) if type(kind).__name__ == "PrimitiveType" else None
    return str(primitive) if isinstance(primitive, str) else _complex_type(kind)


def check_schema(contract: TableContract, path: str) -> list[str]:
    """Drift between a contract and the Delta table at ``path``: one message per problem (empty: in line).

    Each message names the table and column and says what the contract expects and what the table has.
    """
    found = delta_schema(path)
    if found is None:
        return [f"{contract.table}: no Delta table at {path}"]
    actual = {name: kind for name, kind, _ in found}
    problems = []
    for column in contract.columns:
        if column.name not in actual:
            problems.append(f"{contract.table}.{column.name}: expected {column.type}, found no such column")
        elif actual[column.name] != column.type:
            problems.append(
                f"{contract.table}.{column.name}: expected {column.type}, found {actual[column.name]}"
            )
    declared = {c.name for c in contract.columns}
    for name, kind, _ in found:
        if name not in declared:
            problems.append(
                f"{contract.table}.{name}: expected no such column, found {kind} (not in the contract)"
            )
    return problems


def check_catalog(
    settings: Settings, tables: list[str] | None = None, *, catalog: Catalog | None = None
) -> list[str]:
    """Check contracts against the lake; raise on drift.

    Args:
        settings: the environment (table paths).
        tables: only these (``"silver.events"``…); default every contract.
        catalog: an already loaded catalog (default :func:`load_catalog`).

    Returns:
        The tables that were checked and match (missing optional or not-yet-built tables are skipped).

    Raises:
        SchemaDriftError: listing every drifted column (table, column, expected vs found).
        ConfigError: a named table has no contract.
    """
    catalog = catalog or load_catalog(settings)
    names = tables or sorted(catalog.tables)
    problems: list[str] = []
    checked: list[str] = []
    for name in names:
        contract = catalog.contract(name)
        path = _table_path(settings, name)
        if delta_schema(path) is None and tables is None:
            log.info("catalog check: %s not built yet (%s), skipped", name, path)
            continue
        found = check_schema(contract, path)
        problems.extend(found)
        if not found:
            checked.append(name)
    if problems:
        raise SchemaDriftError("schema drift against the catalog:\n  " + "\n  ".join(problems))
    return checked


def freshness_report(
    settings: Settings, *, catalog: Catalog | None = None, now: datetime | None = None
) -> pd.DataFrame:
    """The last commit of every table with a freshness SLA, and whether it is within the SLA.

    Returns:
        Columns table, last_commit (UTC; NaT if the table does not exist), age_seconds, sla_seconds, ok.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    catalog = catalog or load_catalog(settings)
    moment = now or datetime.now(UTC)
    rows = []
    for name, contract in sorted(catalog.tables.items()):
        sla = contract.sla_seconds
        if sla is None:
            continue
        last: pd.Timestamp | None
        try:
            history = DeltaTable(_table_path(settings, name)).history(1)
            last = pd.Timestamp(history[0]["timestamp"], unit="ms", tz="UTC")
        except (TableNotFoundError, IndexError, KeyError):
            last = None  # never built: stale by definition
        age = (pd.Timestamp(moment) - last).total_seconds() if last is not None else float("nan")
        rows.append(
            {
                "table": name,
                "last_commit": last,
                "age_seconds": age,
                "sla_seconds": sla,
                "ok": bool(age <= sla),
            }
        )
    frame = pd.DataFrame(rows, columns=["table", "last_commit", "age_seconds", "sla_seconds", "ok"])
    frame["last_commit"] = pd.to_datetime(frame["last_commit"], utc=True)
    return frame


_COMMON_MEANINGS = {
    "ingested_at": "When the lake ingested the record (UTC).",
    "ingest_date": "Partition: the UTC date of ingestion.",
    "key": "Kafka record key.",
    "value": "Kafka record value: the raw payload text.",
    "topic": "Kafka topic.",
    "partition": "Kafka partition.",
    "offset": "Kafka offset within the partition.",
    "kafka_timestamp": "Kafka record timestamp (producer send time).",
    "key_bytes": "The key's bytes as they arrived when not valid UTF-8 (else null: key is exact).",
    "value_bytes": "The payload's bytes as they arrived when not valid UTF-8 (else null: value is exact).",
    "source_partition": "Kafka partition of the bronze record.",
    "source_offset": "Kafka offset of the bronze record.",
    "batch_id": "Micro-batch or extract batch that wrote the row.",
    "run_id": "Run that wrote the row (UUID).",
    "reason": "First rule the record broke.",
    "quarantined_at": "When the record was set aside (UTC).",
    "processed_at": "When the batch was processed (UTC).",
    "_deleted": "Tombstone: the source row was deleted.",
    "_lsn": "CDC change LSN (null for extracted rows).",
    "_source": "Feed that last wrote the row (cdc or extract).",
    "_merged_at": "When the row was last merged (UTC).",
    "_extracted_at": "When the extract read the row (UTC).",
    "_batch_id": "Extract batch id.",
    "_source_table": "Source table of the extract.",
    "_unrepresentable": (
        "Values Spark cannot hold (years outside 1-9999, NaN, too many digits) as their source text, by "
        "column; null when none."
    ),
}


def sample_frame(table: Any, rows: int) -> pd.DataFrame:
    """The first ``rows`` rows of a delta-rs table as pandas, text that is not UTF-8 decoded with U+FFFD.

    Bronze keeps payloads as they arrived: a hostile record's bytes must not stop a sample of the table.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from lakehouse import arrow_lake

    head = arrow_lake.head(table, rows)
    columns = []
    for index, field in enumerate(head.schema):
        column = head.column(index)
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            raw = pc.cast(column, pa.large_binary())
            column = pa.array(
                [None if v is None else v.decode("utf-8", errors="replace") for v in raw.to_pylist()],
                type=pa.large_string(),
            )
        columns.append(column)
    frame: pd.DataFrame = pa.table(columns, names=head.schema.names).to_pandas()
    return frame


def scaffold_contract(settings: Settings, table: str, *, owner: str = "data-platform") -> str:
    """A draft YAML contract for ``table`` from its Delta schema (review before committing).

    PII is proposed from column names and a 1000-row sample by :mod:`lakehouse.privacy.scanner`.

    Raises:
        ConfigError: the table does not exist.
    """
    from deltalake import DeltaTable

    from lakehouse.privacy.detectors import scan_frame

    path = _table_path(settings, table)
    fields = delta_schema(path)
    if fields is None:
        raise ConfigError(f"no Delta table at {path}: build {table} first, then scaffold its contract")
    sample = sample_frame(DeltaTable(path), 1000)
    names = {name for name, _, _ in fields}
    findings: dict[str, Any] = {}
    for found in scan_frame(sample):  # a JSON payload's field (``value.email``) makes its column hold PII
        name = found.column if found.column in names else found.column.split(".", 1)[0]
        held = findings.get(name)
        stronger = held is None or (
            found.proposed_classification == "pii" and held.proposed_classification != "pii"
        )
        if name in names and stronger:
            findings[name] = found
    layer = table.split(".", 1)[0]
    columns = []
    for name, kind, nullable in fields:
        column: dict[str, Any] = {
            "name": name,
            "type": kind,
            "description": _COMMON_MEANINGS.get(name, "TODO: what this column means"),
            "classification": "internal",
        }
        finding = findings.get(name)
        if finding is not None and finding.proposed_classification == "pii":
            column.update(
                classification="pii", pii=finding.kind, treatment="keep" if layer == "bronze" else "tokenize"
            )
        if not nullable:
            column["nullable"] = False
        columns.append(column)
    by_name = {c["name"]: c for c in columns}
    for column in columns:  # bytes kept beside a text (sources.kafka) hold what the text holds
        text = (
            by_name.get(column["name"].removesuffix("_bytes")) if column["name"].endswith("_bytes") else None
        )
        if text is not None:
            column.update({k: text[k] for k in ("classification", "pii", "treatment") if k in text})
    worst = max((c["classification"] for c in columns), key=lambda c: _RANK[c])
    document = {
        "table": table,
        "owner": owner,
        "description": "TODO: what one row is",
        "classification": "confidential" if layer == "bronze" and worst != "pii" else worst,
        "retention_days": 365,
        "freshness_sla": "24h",
        "columns": columns,
    }
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)
