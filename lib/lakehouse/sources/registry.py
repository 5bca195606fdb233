"""The source registry: which source lands in which bronze table, declared in ``sources.yaml``, not in code.

Each entry names a *kind* the workbench knows how to ingest — a Kafka topic, a PostgreSQL table (incremental
by watermark), PostgreSQL change data capture (wal2json → Kafka), an HTTP API or an MQTT topic (bridged to
Kafka) — plus its connection, contract, target bronze table, key and ordering columns. Adding a source of a
known kind is a new entry; the bronze tasks iterate the registry.

Secrets never sit in the file: ``${NAME}`` is read from the environment when the registry is loaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from lakehouse.config import Settings, expand_variables
from lakehouse.errors import ConfigError

REGISTRY_FILE = "sources.yaml"
REGISTRY_VARIABLE = "LAKEHOUSE_SOURCES"  # another registry file, e.g. a team's own sources
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    description: str = ""
    owner: str = "data-platform"
    bronze: str = Field(description="the bronze table the source lands in (bronze/<name>)")
    key: list[str] = Field(default_factory=list, description="columns that identify a record")
    ordering: str | None = Field(None, description="the column that orders records of one key")
    contract: dict[str, str] = Field(
        default_factory=dict, description="expected fields and their types (checked in silver)"
    )

    @field_validator("bronze")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"bronze table {value!r} must be lower_snake_case")
        return value


class KafkaSource(_Source):
    """Records already on a Kafka topic (web/mobile events, bridged IoT, CDC)."""

    kind: Literal["kafka"]
    topic: str
    partitions: int = Field(3, ge=1)
    retention_ms: int = Field(604_800_000, ge=60_000)


def _pg_identifier(value: str, what: str, *, qualified: bool = False) -> str:
    """Check a PostgreSQL name as written in sources.yaml (quoted later, so its case is kept)."""
    parts = value.split(".") if qualified else [value]
    if not value or len(parts) > 2 or any(not part.strip() or "\x00" in part for part in parts):
        form = "'table' or 'schema.table'" if qualified else "a column name"
        raise ValueError(f"{what} {value!r} must be {form}")
    return value


def _pg_conninfo(value: SecretStr | None) -> SecretStr | None:
    """Check a libpq connection string or ``postgresql://`` URL parses (its secrets are never echoed)."""
    if value is None:
        return None
    import psycopg  # only postgres sources need it
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(value.get_secret_value())
        ports = str(params.get("port") or "").split(",")
        if not all(port.strip().isdigit() for port in ports if port.strip()):
            raise psycopg.ProgrammingError("a port is not a number")
    except psycopg.Error as exc:
        raise ValueError(
            f"connection is not a libpq connection string or postgresql:// URL ({exc}; the value is not "
            "shown: it may hold a password)"
        ) from None
    return value


class PostgresTableSource(_Source):
    """A PostgreSQL table (or view) landed in bronze by an extract over JDBC.

    ``mode: incremental`` (the default) reads the rows after the last ``(watermark, key)`` position in
    keyset pages; ``mode: snapshot`` reads the whole table, for tables without a version column, and lands
    only the rows that are new, changed or deleted since the last snapshot (see
    :mod:`lakehouse.sources.postgres`). ``connection`` names another database (a libpq string or a
    ``postgresql://`` URL, written as ``${VARIABLE}`` since it holds a password); the environment file's
    PostgreSQL is the default. ``table`` is ``table`` (schema ``public``) or ``schema.table``; names are
    used as written (quoted), so their case matters.
    """

    kind: Literal["postgres"]
    table: str
    connection: SecretStr | None = Field(
        None, description="libpq string or postgresql:// URL (default: the environment's PostgreSQL)"
    )
    mode: Literal["incremental", "snapshot"] = "incremental"
    watermark: str = Field("updated_at", description="incremental: the column that grows with each change")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return _pg_identifier(value, "table", qualified=True)

    @field_validator("connection")
    @classmethod
    def _connection(cls, value: SecretStr | None) -> SecretStr | None:
        return _pg_conninfo(value)

    @model_validator(mode="after")
    def _needs_key(self) -> PostgresTableSource:
        if not self.key:
            raise ValueError("a postgres source needs its primary key columns in `key`")
        if len(set(self.key)) != len(self.key):
            raise ValueError(f"key {self.key} names a column twice")
        for column in self.key:
            _pg_identifier(column, "key column")
        if self.mode == "snapshot":
            if "watermark" in self.model_fields_set:
                raise ValueError("watermark is for mode incremental: a snapshot compares whole rows")
        else:
            _pg_identifier(self.watermark, "watermark")
            if self.watermark in self.key:
                raise ValueError(f"watermark {self.watermark!r} is also a key column: name it once")
        return self

    @property
    def schema_table(self) -> tuple[str, str]:
        """``(schema, table)``, with schema ``public`` when the entry names none."""
        schema, _, table = self.table.rpartition(".")
        return schema or "public", table


class PostgresCdcSource(_Source):
    """Log-based change data capture: wal2json logical replication of ``tables`` into a Kafka topic.

    ``tables`` are ``table``, ``schema.table``, ``schema.*`` or ``*.table``; an empty list captures every
    table of the database. ``connection`` as for :class:`PostgresTableSource` (its role needs the
    REPLICATION attribute).
    """

    kind: Literal["postgres_cdc"]
    slot: str
    topic: str
    tables: list[str] = Field(default_factory=list)
    connection: SecretStr | None = Field(
        None, description="libpq string or postgresql:// URL (default: the environment's PostgreSQL)"
    )
    partitions: int = Field(3, ge=1)
    retention_ms: int = Field(604_800_000, ge=60_000)

    @field_validator("connection")
    @classmethod
    def _connection(cls, value: SecretStr | None) -> SecretStr | None:
        return _pg_conninfo(value)

    @field_validator("slot")
    @classmethod
    def _slot(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9_]{1,63}$", value):
            raise ValueError(f"slot {value!r} must be 1-63 of a-z, 0-9 and _ (PostgreSQL's rule for slots)")
        return value


class HttpAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    header: str = "Authorization"
    value: str


class HttpPagination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    style: Literal["none", "page", "cursor"] = "none"
    page_param: str = "page"
    size_param: str = "page_size"
    page_size: int = Field(100, ge=1)
    cursor_param: str = "cursor"
    next_cursor_field: str = "next_cursor"
    records_field: str = "data"


class HttpSource(_Source):
    """A third-party HTTP API pulled incrementally and delivered to bronze through a buffered stream."""

    kind: Literal["http"]
    url: str
    auth: HttpAuth | None = None
    pagination: HttpPagination = HttpPagination()
    incremental_param: str | None = Field(None, description="query parameter that carries the cursor")
    incremental_field: str | None = Field(None, description="record field whose max becomes the next cursor")
    timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(5, ge=0)
    flush_records: int = Field(500, ge=1, description="buffered delivery flushes at this many records…")
    flush_seconds: float = Field(5.0, gt=0, description="…or after this long, whichever comes first")


class MqttSource(_Source):
    """MQTT messages (IoT devices) bridged into a Kafka topic, then ingested like any topic."""

    kind: Literal["mqtt"]
    mqtt_topic: str
    kafka_topic: str
    dead_letter_topic: str
    qos: Literal[0, 1, 2] = 1
    partitions: int = Field(3, ge=1)
    retention_ms: int = Field(604_800_000, ge=60_000)


Source = Annotated[
    KafkaSource | PostgresTableSource | PostgresCdcSource | HttpSource | MqttSource,
    Field(discriminator="kind"),
]


class Registry(BaseModel):
    """All registered sources, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sources: dict[str, Source]

    @field_validator("sources")
    @classmethod
    def _names(cls, sources: dict[str, _Source]) -> dict[str, _Source]:
        bronze: dict[str, str] = {}
        for name, source in sources.items():
            if not _NAME.match(name):
                raise ValueError(f"source name {name!r} must be lower_snake_case")
            if source.bronze in bronze:
                first = bronze[source.bronze]
                raise ValueError(f"sources {first!r} and {name!r} both land in bronze/{source.bronze}")
            bronze[source.bronze] = name
        return {name: source.model_copy(update={"name": name}) for name, source in sources.items()}

    def of_kind(self, kind: str) -> list[_Source]:
        """The sources of one kind, in file order."""
        return [s for s in self.sources.values() if getattr(s, "kind", None) == kind]

    def get(self, name: str) -> _Source:
        if name not in self.sources:
            raise ConfigError(f"no source {name!r} in the registry (known: {sorted(self.sources)})")
        return self.sources[name]

    def kafka_ingest(self) -> dict[str, str]:
        """Topic → bronze table name of every source that reaches bronze through Kafka."""
        plan: dict[str, str] = {}
        for source in self.sources.values():
            if isinstance(source, KafkaSource | PostgresCdcSource):
                plan[source.topic] = source.bronze
            elif isinstance(source, MqttSource):
                plan[source.kafka_topic] = source.bronze
        return plan

    def kafka_topics(self) -> dict[str, tuple[int, int]]:
        """Every Kafka topic the registry needs, with (partitions, retention_ms)."""
        topics: dict[str, tuple[int, int]] = {}
        for source in self.sources.values():
            if isinstance(source, KafkaSource | PostgresCdcSource):
                topics[source.topic] = (source.partitions, source.retention_ms)
            elif isinstance(source, MqttSource):
                topics[source.kafka_topic] = (source.partitions, source.retention_ms)
                topics[source.dead_letter_topic] = (1, source.retention_ms)
        return topics


def settings_variables(settings: Settings) -> dict[str, str]:
    """Variables the registry may use whose values come from the environment file (local services)."""
    return {
        "LAKEHOUSE_FX_PORT": str(settings.fx_api.port),
        "LAKEHOUSE_PG_HOST": settings.postgres.host,
        "LAKEHOUSE_PG_PORT": str(settings.postgres.port),
        "LAKEHOUSE_MQTT_HOST": settings.mqtt.host,
        "LAKEHOUSE_MQTT_PORT": str(settings.mqtt.port),
    }


def load_registry(settings: Settings, path: Path | None = None) -> Registry:
    """Read and validate the registry (``$LAKEHOUSE_SOURCES``, else ``sources.yaml`` in the project root).

    Raises:
        ConfigError: the file is missing, not YAML, or an entry is invalid — the message names the entry
            and the field.
    """
    path = path or Path(os.environ.get(REGISTRY_VARIABLE) or settings.root / REGISTRY_FILE)
    if not path.is_file():
        raise ConfigError(f"no source registry at {path}: create {REGISTRY_FILE} (see the README)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name} is not valid YAML: {exc}") from exc
    try:
        return Registry.model_validate(expand_variables(raw, path, settings_variables(settings)))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"{path.name} is invalid: {problems}") from exc
