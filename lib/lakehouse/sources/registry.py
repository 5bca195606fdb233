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
from collections.abc import Iterable
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
from lakehouse.contracts.payload import FieldSpec, PayloadSpec, parse_path
from lakehouse.contracts.processor import ProcessorSpec
from lakehouse.errors import ConfigError

REGISTRY_FILE = "sources.yaml"
REGISTRY_VARIABLE = "LAKEHOUSE_SOURCES"  # another registry file, e.g. a team's own sources
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
KINDS = ("kafka", "postgres", "postgres_cdc", "http", "mqtt")
KAFKA_BACKED_KINDS = ("kafka", "postgres_cdc", "mqtt")


def duration_seconds(text: str) -> float:
    """Seconds in a duration like ``30s``, ``15m``, ``1h``, ``7d``.

    Raises:
        ValueError: the text is not ``<number><s|m|h|d>``.
    """
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_kinds(text: str) -> list[str]:
    """Source kinds from a comma-separated list (a bronze task's ``source_kinds`` parameter).

    Raises:
        ConfigError: a kind the workbench does not know.
    """
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown source kind(s) {unknown} in {text!r}: the kinds are {list(KINDS)}")
    return kinds


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


def _declared(source: _Source, payload: PayloadSpec) -> None:
    """The source's ``key`` and ``ordering`` must be fields of the records it lands."""
    unknown = [name for name in (*source.key, source.ordering) if name and name not in payload.fields]
    if unknown:
        raise ValueError(f"key/ordering {unknown} are not fields of the payload ({sorted(payload.fields)})")


class KafkaSource(_Source):
    """Records already on a Kafka topic (web/mobile events, bridged IoT, CDC)."""

    kind: Literal["kafka"]
    topic: str
    partitions: int = Field(3, ge=1)
    retention_ms: int = Field(604_800_000, ge=60_000)
    payload: PayloadSpec | None = Field(
        None, description="what the records' JSON holds (lakehouse.contracts.payload), for silver to read"
    )
    processor: ProcessorSpec | None = Field(
        None, description="a topic-to-topic processor of the records (lakehouse.contracts.processor)"
    )

    @model_validator(mode="after")
    def _payload_fields(self) -> KafkaSource:
        if self.payload is not None:
            _declared(self, self.payload)
        return self

    def record_payload(self) -> PayloadSpec | None:
        """The declaration of the topic's records (None when the source declares none)."""
        return self.payload


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
    records_path: str | None = Field(
        None, description="dotted path to the record list in nested JSON (e.g. result.items)"
    )
    next_cursor_path: str | None = Field(None, description="dotted path to the next cursor (e.g. meta.next)")

    @model_validator(mode="after")
    def _paths(self) -> HttpPagination:
        for name in ("records_path", "next_cursor_path"):
            value = getattr(self, name)
            if value is not None:
                parse_path(value)
        given = self.model_fields_set
        for path, field_name in (
            ("records_path", "records_field"),
            ("next_cursor_path", "next_cursor_field"),
        ):
            if path in given and field_name in given:
                raise ValueError(
                    f"give {path} or {field_name}, not both ({field_name} is a one-segment path)"
                )
        return self

    @property
    def records_location(self) -> tuple[str, ...]:
        """Where the records are in the body (``records_path``, else the top-level ``records_field``)."""
        return parse_path(self.records_path) if self.records_path else (self.records_field,)

    @property
    def cursor_location(self) -> tuple[str, ...]:
        """Where the next cursor is in the body (``next_cursor_path``, else ``next_cursor_field``)."""
        return parse_path(self.next_cursor_path) if self.next_cursor_path else (self.next_cursor_field,)


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
    refresh: str | None = Field(
        None,
        description="how often `lakehouse build` pulls it (30m, 1h, 1d); unset: every build (an API has no "
        "cheap change signal)",
    )

    @field_validator("refresh")
    @classmethod
    def _refresh(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(value)
        return value

    @property
    def refresh_seconds(self) -> float | None:
        """The declared refresh interval in seconds (None: pull on every build)."""
        return duration_seconds(self.refresh) if self.refresh else None


class DeviceRegistryLink(BaseModel):
    """How the bridge uses the device registry: the record field that gets the device's registered site,
    and the field whose value is checked against the firmware the registry expects."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    site_field: str = "site"
    firmware_field: str | None = None


_TOPIC_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class MqttSource(_Source):
    """MQTT messages (IoT devices) bridged into a Kafka topic, then ingested like any topic.

    The bridge (``lakehouse iot bridge --source NAME``) reads each message by ``payload`` and writes the
    record :meth:`record_payload` declares: identity fields, ``received_at``, the other fields, the registry's
    site (with ``device_registry``), ``mqtt_topic``, then ``extra`` (undeclared values) when there are any.
    """

    kind: Literal["mqtt"]
    mqtt_topic: str
    kafka_topic: str
    dead_letter_topic: str
    qos: Literal[0, 1, 2] = 1
    partitions: int = Field(3, ge=1)
    retention_ms: int = Field(604_800_000, ge=60_000)
    payload: PayloadSpec | None = Field(
        None, description="what the devices send (lakehouse.contracts.payload); the bridge needs it"
    )
    topic_pattern: str | None = Field(
        None,
        description="e.g. devices/{device_id}/telemetry: a message on such a topic must carry that value",
    )
    device_registry: DeviceRegistryLink | None = Field(
        None, description="enrich records with the device registry's site (and check firmware)"
    )

    @model_validator(mode="after")
    def _coherent(self) -> MqttSource:
        if self.payload is None:
            if self.topic_pattern is not None or self.device_registry is not None:
                raise ValueError("topic_pattern and device_registry name payload fields: declare `payload`")
            return self
        for name in self.topic_placeholders().values():
            if name not in self.payload.fields:
                raise ValueError(f"topic_pattern names {name!r}, not a payload field")
        link = self.device_registry
        if link is not None and link.firmware_field and link.firmware_field not in self.payload.fields:
            raise ValueError(f"device_registry.firmware_field {link.firmware_field!r} is not a payload field")
        record = self.record_payload()
        assert record is not None
        _declared(self, record)
        return self

    def topic_placeholders(self) -> dict[int, str]:
        """Topic level → field name of the ``{field}`` levels of ``topic_pattern``."""
        if self.topic_pattern is None:
            return {}
        levels = self.topic_pattern.split("/")
        return {i: m.group(1) for i, level in enumerate(levels) if (m := _TOPIC_PLACEHOLDER.match(level))}

    def record_payload(self) -> PayloadSpec | None:
        """The declaration of the records the bridge writes to ``kafka_topic`` (what silver reads); None when
        the source declares no payload (the bridge refuses such a source)."""
        if self.payload is None:
            return None
        after = {"received_at": FieldSpec(type="timestamp", description="when the bridge received it")}
        at_end: dict[str, FieldSpec] = {}
        if self.device_registry is not None:
            at_end[self.device_registry.site_field] = FieldSpec(description="the device's registered site")
        at_end["mqtt_topic"] = FieldSpec(description="the MQTT topic the message came on")
        return self.payload.normalised(after, at_end)


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

    def of_kinds(self, kinds: str, allowed: Iterable[str] | None = None) -> list[_Source]:
        """The sources of the comma-separated ``kinds`` (e.g. ``"kafka,mqtt"``), in file order.

        Args:
            kinds: a bronze task's ``source_kinds`` parameter.
            allowed: the kinds the caller can ingest (default: any).

        Raises:
            ConfigError: a kind the workbench does not know, or one outside ``allowed``.
        """
        wanted = set(parse_kinds(kinds))
        if allowed is not None and wanted - set(allowed):
            raise ConfigError(
                f"source_kinds {kinds!r}: this task ingests only {sorted(allowed)}, "
                f"not {sorted(wanted - set(allowed))}"
            )
        return [s for s in self.sources.values() if getattr(s, "kind", None) in wanted]

    def get(self, name: str) -> _Source:
        if name not in self.sources:
            raise ConfigError(f"no source {name!r} in the registry (known: {sorted(self.sources)})")
        return self.sources[name]

    def kafka_ingest(self, kinds: str | None = None) -> dict[str, str]:
        """Topic → bronze table name of every source that reaches bronze through Kafka.

        Args:
            kinds: only sources of these comma-separated kinds (default: every Kafka-backed kind).
        """
        wanted = set(parse_kinds(kinds)) if kinds is not None else set(KAFKA_BACKED_KINDS)
        plan: dict[str, str] = {}
        for source in self.sources.values():
            topic = ingest_topic(source)
            if topic is not None and getattr(source, "kind", None) in wanted:
                plan[topic] = source.bronze
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


def ingest_topic(source: _Source) -> str | None:
    """The Kafka topic bronze ingests ``source`` from (None: the source does not reach bronze via Kafka)."""
    if isinstance(source, KafkaSource | PostgresCdcSource):
        return source.topic
    if isinstance(source, MqttSource):
        return source.kafka_topic
    return None


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
