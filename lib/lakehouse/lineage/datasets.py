"""Dataset identity and the facets read from a Delta table (delta-rs: no JVM) and the validation results.

Naming convention (documented for every consumer of the events):

* ``namespace``/``name`` follow the OpenLineage naming spec for storage, so that the notebooks' events and the
  Spark listener's events name a table the same way: a local lake gives namespace ``file`` and the table's
  absolute path as name; an object store gives ``s3://bucket`` (the URI's scheme and authority) and the key.
* the workbench identity ``"<layer>.<name>"`` (e.g. ``silver.events``) travels in the standard ``symlinks``
  facet: one identifier ``{namespace: settings.lineage.namespace, name: "silver.events", type: "TABLE"}``.
  :func:`identity_from_path` maps a Spark event's path back to that identity.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import attr
from openlineage.client.generated import (
    data_quality_assertions_dataset,
    data_quality_metrics_dataset,
    dataset_version_dataset,
    schema_dataset,
    symlinks_dataset,
)
from openlineage.client.generated.base import DatasetFacet

from lakehouse import arrow_lake
from lakehouse.config import Settings
from lakehouse.errors import ConfigError

log = logging.getLogger(__name__)

LAYERS = ("bronze", "silver", "gold", "audit")
SOURCE = "source"  # "source.<name>": an entry of the source registry (a topic, a database table, an API)
DELTA_FACET_SCHEMA_URL = "https://lakehouse.invalid/spec/facets/1-0-0/DeltaTableDatasetFacet.json"
SEVERITY = {"fail": "error", "drop": "warn", "warn": "warn", "quarantine": "warn"}


@attr.define(kw_only=True)
class DeltaTableDatasetFacet(DatasetFacet):
    """Custom facet ``delta``: the Delta table's version and last commit as the run left them."""

    version: int
    lastCommitTime: str | None = None  # OpenLineage facets use camelCase
    lastOperation: str | None = None
    partitionColumns: list[str] = attr.field(factory=list)

    @staticmethod
    def _get_schema() -> str:
        return DELTA_FACET_SCHEMA_URL


def split_identity(identity: str) -> tuple[str, str]:
    """``"silver.events"`` -> ``("silver", "events")``; ``"source.clickstream"`` -> ``("source", …)``.

    Raises:
        ConfigError: not of the form ``<layer>.<name>`` with a known layer (or ``source``).
    """
    layer, _, name = identity.partition(".")
    if layer not in (*LAYERS, SOURCE) or not name:
        raise ConfigError(
            f"dataset {identity!r} is not a table identity: use '<layer>.<name>' with layer in {LAYERS}, "
            f"or 'source.<name>' for an entry of sources.yaml"
        )
    return layer, name


def source_names(settings: Settings, name: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a registry source, following the spec's naming for each system.

    Kafka ``kafka://host:port`` + topic; PostgreSQL ``postgres://host:port`` + ``database.public.table``;
    HTTP APIs ``http://host:port`` + path; MQTT ``mqtt://host:port`` + topic filter.

    Raises:
        ConfigError: ``name`` is not in the source registry.
    """
    from lakehouse.sources.registry import (
        HttpSource,
        KafkaSource,
        MqttSource,
        PostgresCdcSource,
        PostgresTableSource,
        load_registry,
    )

    sources = load_registry(settings).sources
    if name not in sources:
        raise ConfigError(f"source {name!r} is not in the source registry: {sorted(sources)}")
    source = sources[name]
    kafka = f"kafka://{settings.kafka.bootstrap_servers.split(',')[0]}"
    pg = settings.postgres
    if isinstance(source, KafkaSource):
        return kafka, source.topic
    if isinstance(source, PostgresTableSource):
        return f"postgres://{pg.host}:{pg.port}", f"{pg.database}.public.{source.table}"
    if isinstance(source, PostgresCdcSource):
        return f"postgres://{pg.host}:{pg.port}", f"{pg.database}.replication_slot.{source.slot}"
    if isinstance(source, HttpSource):
        url = urlparse(source.url)
        return f"{url.scheme}://{url.netloc}", url.path
    if isinstance(source, MqttSource):
        return f"mqtt://{settings.mqtt.host}:{settings.mqtt.port}", source.mqtt_topic
    raise ConfigError(f"source {name!r} has a kind lineage cannot name: {type(source).__name__}")


def storage_name(path: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a path: ``("file", "/abs/path")`` or ``("s3://b", "key")``."""
    parsed = urlparse(path)
    if parsed.scheme in ("", "file"):
        local = parsed.path if parsed.scheme == "file" else path
        return "file", str(Path(local).absolute())
    return f"{parsed.scheme}://{parsed.netloc}", parsed.path.lstrip("/")


def dataset_names(settings: Settings, identity: str) -> tuple[str, str, str]:
    """Namespace, name and storage path of a ``"<layer>.<name>"`` table (path ``""`` for a source)."""
    layer, table = split_identity(identity)
    if layer == SOURCE:
        return (*source_names(settings, table), "")
    path = settings.table_path(layer, table)
    namespace, name = storage_name(path)
    return namespace, name, path


def identity_from_path(settings: Settings, namespace: str, name: str) -> str | None:
    """The ``"<layer>.<name>"`` identity of a dataset named by storage (None: not a lake table)."""
    lake_ns, lake_root = storage_name(str(settings.lake))
    if namespace != lake_ns:
        return None
    root = lake_root.rstrip("/") + "/"
    if not name.startswith(root):
        return None
    parts = name[len(root) :].strip("/").split("/")
    if len(parts) < 2 or parts[0] not in LAYERS:
        return None
    return f"{parts[0]}.{parts[1]}"


def symlinks_facet(settings: Settings, identity: str) -> symlinks_dataset.SymlinksDatasetFacet:
    """The ``symlinks`` facet carrying the workbench identity of a table."""
    return symlinks_dataset.SymlinksDatasetFacet(
        identifiers=[
            symlinks_dataset.Identifier(namespace=settings.lineage.namespace, name=identity, type="TABLE")
        ]
    )


def _type_name(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    kind = spec.get("type")
    if kind == "array":
        return f"array<{_type_name(spec['elementType'])}>"
    if kind == "map":
        return f"map<{_type_name(spec['keyType'])},{_type_name(spec['valueType'])}>"
    return str(kind)


def _schema_fields(fields: Iterable[Mapping[str, Any]]) -> list[schema_dataset.SchemaDatasetFacetFields]:
    result = []
    for position, field in enumerate(fields, start=1):
        spec = field["type"]
        nested = None
        if isinstance(spec, dict) and spec.get("type") == "struct":
            nested = _schema_fields(spec["fields"])
        result.append(
            schema_dataset.SchemaDatasetFacetFields(
                name=field["name"], type=_type_name(spec), ordinal_position=position, fields=nested
            )
        )
    return result


def delta_facets(path: str) -> dict[str, DatasetFacet]:
    """Schema, Delta version/commit, dataset version and row-count facets of the Delta table at ``path``.

    Returns an empty dict when no Delta table is there (yet). Row counts come from the log's ``numRecords``
    statistics; a table whose files lack them is counted.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(path)
    except TableNotFoundError:
        log.debug("no Delta table at %s: no dataset facets", path)
        return {}
    import pyarrow as pa
    import pyarrow.compute as pc

    version = table.version()
    schema = json.loads(table.schema().to_json())
    history = table.history(1)
    last = history[0] if history else {}
    committed = (
        datetime.fromtimestamp(last["timestamp"] / 1000, tz=UTC).isoformat() if "timestamp" in last else None
    )
    actions = pa.table(table.get_add_actions(flatten=True))
    records = actions["num_records"] if "num_records" in actions.column_names else None
    if records is not None and records.null_count == 0:
        row_count = int(pc.sum(records).as_py() or 0)
    else:
        row_count = int(arrow_lake.dataset(table).count_rows())
    size = int(pc.sum(actions["size_bytes"]).as_py() or 0) if actions.num_rows else 0
    return {
        "schema": schema_dataset.SchemaDatasetFacet(fields=_schema_fields(schema["fields"])),
        "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(version)),
        "delta": DeltaTableDatasetFacet(
            version=version,
            lastCommitTime=committed,
            lastOperation=last.get("operation"),
            partitionColumns=list(table.metadata().partition_columns),
        ),
        "dataQualityMetrics": data_quality_metrics_dataset.DataQualityMetricsDatasetFacet(
            columnMetrics={},
            rowCount=row_count,
            bytes=size,
            fileCount=actions.num_rows,
            lastUpdated=committed,
        ),
    }


def validation_rows(settings: Settings, run_id: str) -> list[dict[str, Any]]:
    """Rows of the ``audit.validation_results`` Delta table for ``run_id`` (none when it is absent)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(settings.table_path("audit", "validation_results"))
    except TableNotFoundError:
        return []
    import pyarrow.compute as pc

    dataset = arrow_lake.dataset(table)
    if "run_id" not in dataset.schema.names:
        log.warning("audit.validation_results has no run_id column: no assertions attached")
        return []
    rows: list[dict[str, Any]] = dataset.to_table(filter=pc.field("run_id") == run_id).to_pylist()
    return rows


def assertions_facets(
    rows: Iterable[Mapping[str, Any]],
) -> dict[str, data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet]:
    """One ``dataQualityAssertions`` facet per table: each rule of the run, failed if any batch failed it."""
    grouped: dict[str, dict[tuple[str, str | None], dict[str, Any]]] = {}
    for row in rows:
        rule = row.get("rule") or f"{row.get('expectation')}:{row.get('column')}"
        key = (str(rule), row.get("column"))
        entry = grouped.setdefault(str(row.get("table")), {}).setdefault(
            key,
            {"row": row, "success": True, "unexpected": 0, "elements": 0, "batches": 0},
        )
        entry["success"] = entry["success"] and bool(row.get("success"))
        entry["unexpected"] += int(row.get("unexpected_count") or 0)
        entry["elements"] += int(row.get("element_count") or 0)
        entry["batches"] += 1
    facets = {}
    for table, rules in grouped.items():
        assertions = []
        for (rule, column), entry in sorted(rules.items(), key=lambda item: item[0][0]):
            row = entry["row"]
            action = str(row.get("action") or "warn")
            assertions.append(
                data_quality_assertions_dataset.Assertion(
                    assertion=str(row.get("expectation")),
                    success=entry["success"],
                    column=column,
                    severity=SEVERITY.get(action, "warn"),
                    name=rule,
                    expected="0 unexpected",
                    actual=f"{entry['unexpected']} unexpected of {entry['elements']}",
                    params={
                        "action": action,
                        "engine": row.get("engine"),
                        "suite": row.get("suite"),
                        "batches": entry["batches"],
                    },
                )
            )
        facets[table] = data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
            assertions=assertions
        )
    return facets
