"""Settings: one switch (``LAKEHOUSE_ENV``) selects ``env.yaml`` / ``env.<name>.yaml``.

The same file feeds Ploomber's placeholders in ``pipeline.yaml`` and every lakehouse setting, so the DAG,
the notebooks, the CLI and the tests agree on where the lake is and which services to reach.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lakehouse.errors import ConfigError

ENV_VARIABLE = "LAKEHOUSE_ENV"
ROOT_VARIABLE = "LAKEHOUSE_ROOT"
# Shifts every port of the services the project starts, so a second stack (a fresh-machine check, a second
# developer) runs beside the first without editing an env file.
PORT_OFFSET_VARIABLE = "LAKEHOUSE_PORT_OFFSET"
DEFAULT_ENV = "local"
_MARKER = "pipeline.yaml"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicSettings(_Section):
    partitions: int = Field(3, ge=1)
    retention_ms: int = Field(604_800_000, ge=60_000)


class KafkaSettings(_Section):
    managed: bool = True
    bootstrap_servers: str = "127.0.0.1:9092"
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    heap: str = "512m"
    # Per-environment overrides of the topics the source registry declares (partitions, retention)
    topics: dict[str, TopicSettings] = Field(default_factory=dict)


class SparkSettings(_Section):
    managed: bool = True
    connect_url: str | None = "sc://127.0.0.1:15002"
    connect_port: int = Field(15002, ge=1, le=65535)
    master: str = "local[*]"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(4, ge=1)

    @field_validator("connect_url")
    @classmethod
    def _connect_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith("sc://"):
            raise ValueError(f"a Spark Connect URL starts with sc:// (got {value!r})")
        return value or None


class MlflowSettings(_Section):
    port: int = Field(5000, ge=1, le=65535)
    experiment: str = "conversion-propensity"
    tracking_uri: str | None = None


class ModelServingSettings(_Section):
    """``mlflow models serve`` of each declared model's champion: the first on ``port``, then +1 each."""

    port: int = Field(5010, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=16)


class DashboardSettings(_Section):
    port: int = Field(5006, ge=1, le=65535)


class PostgresSettings(_Section):
    """The operational database (a local PostgreSQL 15 with logical decoding, or an existing server)."""

    managed: bool = True
    host: str = "127.0.0.1"
    port: int = Field(15432, ge=1, le=65535)
    database: str = "retail"
    user: str = "lakehouse"
    password: str = "lakehouse"
    seed_limit: int = Field(0, ge=0, description="CDNOW orders to seed a fresh database with (0: all)")

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://{self.host}:{self.port}/{self.database}"

    def connect_kwargs(self, database: str | None = None) -> dict[str, str | int]:
        """Keyword arguments for ``psycopg.connect``."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": database or self.database,
            "user": self.user,
            "password": self.password,
        }


class MqttSettings(_Section):
    """The MQTT broker IoT devices publish to (a local Mosquitto, or an existing broker)."""

    managed: bool = True
    host: str = "127.0.0.1"
    port: int = Field(11883, ge=1, le=65535)


class InfluxSettings(_Section):
    """InfluxDB 1.x, the time-series sink of the real-time rollups."""

    managed: bool = True
    host: str = "127.0.0.1"
    port: int = Field(18086, ge=1, le=65535)
    rpc_port: int = Field(18088, ge=1, le=65535)
    database: str = "lakehouse"


class RedisSettings(_Section):
    """Redis, the online store of the feature store (a local redis-server, or an existing one)."""

    managed: bool = True
    host: str = "127.0.0.1"
    port: int = Field(16379, ge=1, le=65535)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"


class FxApiSettings(_Section):
    """The local FX rates API (ECB reference rates) that stands in for a third-party API."""

    managed: bool = True
    port: int = Field(18780, ge=1, le=65535)


class SimulatorSettings(_Section):
    events: int = Field(20_000, ge=0)
    seed: int = 7
    days: int = Field(14, ge=1)
    rate: float = Field(0, ge=0)


class StreamingSettings(_Section):
    trigger_interval: str = "10 seconds"
    max_offsets_per_trigger: int = Field(200_000, ge=1)
    watermark: str = "1 hour"


class QualitySettings(_Section):
    """Great Expectations: where suites live, which engine validates a batch."""

    suites_dir: str = "quality/suites"
    # Batches up to this many rows are validated with GX's pandas engine (Arrow copy); larger ones with
    # GX's Spark engine, so a cluster-sized batch never comes to the driver.
    pandas_max_rows: int = Field(500_000, ge=0)
    data_docs: bool = True


class LineageSettings(_Section):
    """OpenLineage: a file transport by default, HTTP (Marquez-compatible) by configuration."""

    namespace: str = "lakehouse"
    transport: str = Field("file", pattern="^(file|http|console|none)$")
    url: str | None = None  # HTTP transport: e.g. http://127.0.0.1:5000 (Marquez)
    endpoint: str = "api/v1/lineage"
    api_key: str | None = None
    spark_listener: bool = True


class PrivacySettings(_Section):
    """PII handling: the tokenization key comes only from the environment."""

    # HMAC key for tokenizing PII in silver. Local/test envs give a default through ${VAR:-...}; a real
    # deployment sets LAKEHOUSE_PII_KEY and keeps it out of the repo.
    tokenization_key: str = ""
    # VACUUM retention used by `lakehouse privacy erase` (hours); 0 removes erased rows from time travel now.
    erasure_retention_hours: int = Field(0, ge=0)


class Settings(_Section):
    """Everything a run needs to know, read from one environment file.

    Example:
        >>> settings = load_settings("test")          # doctest: +SKIP
        >>> settings.table_path("silver", "events")   # doctest: +SKIP
    """

    env_name: str
    root: Path
    workspace: Path
    kafka: KafkaSettings = KafkaSettings()
    spark: SparkSettings = SparkSettings()
    mlflow: MlflowSettings = MlflowSettings()
    dashboard: DashboardSettings = DashboardSettings()
    model_serving: ModelServingSettings = ModelServingSettings()
    postgres: PostgresSettings = PostgresSettings()
    mqtt: MqttSettings = MqttSettings()
    influxdb: InfluxSettings = InfluxSettings()
    redis: RedisSettings = RedisSettings()
    fx_api: FxApiSettings = FxApiSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    streaming: StreamingSettings = StreamingSettings()
    quality: QualitySettings = QualitySettings()
    lineage: LineageSettings = LineageSettings()
    privacy: PrivacySettings = PrivacySettings()

    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def lake(self) -> Path:
        return self.workspace / "lake"

    @property
    def checkpoints(self) -> Path:
        return self.workspace / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.workspace / "logs"

    @property
    def run_dir(self) -> Path:
        return self.workspace / "run"

    @property
    def jars_dir(self) -> Path:
        """Where `make jars` copies the Maven artifacts (shared by every environment)."""
        return self.root / "jvm" / "target"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.workspace / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.workspace / "mlflow" / "artifacts"

    @property
    def reports(self) -> Path:
        """Pipeline products that are documents: GX Data Docs, profiles, lineage events."""
        return self.workspace / "reports"

    def table_path(self, layer: str, name: str) -> str:
        """The storage path of a lake table, e.g. ``table_path("bronze", "events")``.

        Layers: bronze, silver, gold, and ``audit`` (validation results, erasure records).
        """
        if layer not in {"bronze", "silver", "gold", "audit"}:
            raise ConfigError(f"unknown lake layer {layer!r}: use bronze, silver, gold or audit")
        return str(self.lake / layer / name)

    def checkpoint_path(self, query: str) -> str:
        """The checkpoint folder of a streaming query (its exactly-once state)."""
        return str(self.checkpoints / query)


def find_root(start: Path | None = None) -> Path:
    """The project root: ``$LAKEHOUSE_ROOT`` or the nearest folder upwards that holds pipeline.yaml."""
    if os.environ.get(ROOT_VARIABLE):
        return Path(os.environ[ROOT_VARIABLE]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / _MARKER).is_file():
            return folder
    raise ConfigError(
        f"no {_MARKER} found in {here} or above: run from inside the project or set {ROOT_VARIABLE}"
    )


def env_file(name: str, root: Path) -> Path:
    """The environment file for ``name``: env.yaml for local, env.<name>.yaml otherwise."""
    return root / ("env.yaml" if name == DEFAULT_ENV else f"env.{name}.yaml")


def expand_variables(value: Any, source: Path, defaults: dict[str, str] | None = None) -> Any:
    """Replace ${NAME} and ${NAME:-default} in every string of a parsed YAML document.

    The environment wins, then ``defaults`` (values the settings provide), then the inline default.
    """
    defaults = defaults or {}
    if isinstance(value, dict):
        return {key: expand_variables(item, source, defaults) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_variables(item, source, defaults) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if name in defaults:
            return defaults[name]
        if default is not None:
            return default
        raise ConfigError(f"{source.name} needs the environment variable {name}: export it and run again")

    return _VARIABLE.sub(substitute, value)


def load_settings(name: str | None = None, root: Path | None = None) -> Settings:
    """Read the settings of environment ``name`` (default: ``$LAKEHOUSE_ENV`` or ``local``).

    Args:
        name: ``local``, ``test``, ``cluster`` or any ``env.<name>.yaml`` in the project root.
        root: the project root; found from the working directory when omitted.

    Returns:
        Validated, frozen settings with absolute paths.

    Raises:
        ConfigError: the file is missing, is not YAML, has unknown keys or ill-typed values.
    """
    name = name or os.environ.get(ENV_VARIABLE) or DEFAULT_ENV
    root = (root or find_root()).resolve()
    path = env_file(name, root)
    if not path.is_file():
        known = sorted(p.name for p in root.glob("env*.yaml"))
        raise ConfigError(f"environment {name!r} has no file {path.name} in {root} (found: {known})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name} must be a mapping of settings, not {type(raw).__name__}")
    raw = expand_variables(raw, path)
    if "workspace" not in raw:
        raise ConfigError(f"{path.name} must set 'workspace' (the folder where the run writes)")
    workspace = Path(raw["workspace"])
    raw["workspace"] = (workspace if workspace.is_absolute() else root / workspace).resolve()
    raw.setdefault("env_name", name)
    try:
        settings = Settings(root=root, **raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"{path.name} is invalid: {problems}") from exc
    return shift_ports(settings, port_offset())


def port_offset() -> int:
    """The port offset from ``$LAKEHOUSE_PORT_OFFSET`` (0 when unset).

    Raises:
        ConfigError: the value is not a whole number between 0 and 20000.
    """
    text = os.environ.get(PORT_OFFSET_VARIABLE, "").strip()
    if not text:
        return 0
    try:
        offset = int(text)
    except ValueError:
        raise ConfigError(f"{PORT_OFFSET_VARIABLE} must be a whole number, not {text!r}") from None
    if not 0 <= offset <= 20_000:
        raise ConfigError(f"{PORT_OFFSET_VARIABLE} must be between 0 and 20000, not {offset}")
    return offset


def _shift_address(address: str, old: int, new: int) -> str:
    # Only the loopback address of a service the project starts moves; a remote cluster's does not.
    for host in ("127.0.0.1", "localhost"):
        address = re.sub(rf"\b{re.escape(host)}:{old}\b", f"{host}:{new}", address)
    return address


def shift_ports(settings: Settings, offset: int) -> Settings:
    """The settings with every port of a managed (project-started) service moved by ``offset``.

    Services the project does not start (``managed: false``) keep their addresses: they are someone else's.
    """
    if offset == 0:
        return settings
    s = settings
    update: dict[str, Any] = {}
    if s.kafka.managed:
        update["kafka"] = s.kafka.model_copy(
            update={
                "port": s.kafka.port + offset,
                "controller_port": s.kafka.controller_port + offset,
                "bootstrap_servers": _shift_address(
                    s.kafka.bootstrap_servers, s.kafka.port, s.kafka.port + offset
                ),
            }
        )
    if s.spark.managed:
        url = s.spark.connect_url
        update["spark"] = s.spark.model_copy(
            update={
                "connect_port": s.spark.connect_port + offset,
                "connect_url": _shift_address(url, s.spark.connect_port, s.spark.connect_port + offset)
                if url
                else url,
            }
        )
    update["mlflow"] = s.mlflow.model_copy(update={"port": s.mlflow.port + offset})
    update["dashboard"] = s.dashboard.model_copy(update={"port": s.dashboard.port + offset})
    update["model_serving"] = s.model_serving.model_copy(update={"port": s.model_serving.port + offset})
    for section in ("postgres", "mqtt", "fx_api", "redis"):
        current = getattr(s, section)
        if current.managed:
            update[section] = current.model_copy(update={"port": current.port + offset})
    if s.influxdb.managed:
        update["influxdb"] = s.influxdb.model_copy(
            update={"port": s.influxdb.port + offset, "rpc_port": s.influxdb.rpc_port + offset}
        )
    for name, section in update.items():
        for field_name in ("port", "controller_port", "connect_port", "rpc_port"):
            value = getattr(section, field_name, None)
            if value is not None and value > 65535:
                raise ConfigError(
                    f"{PORT_OFFSET_VARIABLE}={offset} moves {name}.{field_name} past 65535: "
                    "choose a smaller one"
                )
    return s.model_copy(update=update)
