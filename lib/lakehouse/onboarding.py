"""Onboarding a source into silver: draft its declaration, contract and starter suite from a bronze sample.

``lakehouse table scaffold <source>`` reads what the source landed in bronze (a sample, with delta-rs: no
Spark) and the source's registry entry, and drafts ``catalog/silver/<name>.yaml`` — the contract (columns and
types, PII proposed by the scanner with ``treatment: tokenize``) with its ``build`` section (the input's
format, the key, the sequence, the apply mode) — and ``quality/suites/silver/<name>.json`` (row count, key not
null, key unique). The user reviews both; the DAG picks the table up on the next ``lakehouse build``.

How each kind is drafted:

* a Kafka or MQTT source **with a declared payload** reads it (``payload: <source>``): one column per declared
  field, the key and sequence of the declaration, its event time with a watermark; append, deduplicated;
* a Kafka or HTTP source without one: the JSON records' top-level fields, as text cast to the type the sample
  suggests;
* an HTTP source's nested records are flattened: ``customer.address.city`` becomes column
  ``customer_address_city`` read with ``get_json_object`` (lists stay JSON text);
* a PostgreSQL extract: the bronze columns, upserted by the primary key; an incremental extract's latest
  watermark wins, a snapshot's latest ``_snapshot`` (its tombstones, ``_deleted``, are deletes: the row stays
  in silver flagged ``_deleted``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from lakehouse.config import Settings
from lakehouse.errors import ConfigError

_SPARK_TO_DELTA: Final = {
    "bigint": "long",
    "int": "integer",
    "smallint": "short",
    "tinyint": "byte",
    "float": "float",
}
_SAMPLE_ROWS: Final = 1000


@dataclass(frozen=True)
class Draft:
    """A drafted silver table: the contract file's text and the suite's, and where they go."""

    table: str
    contract_path: Path
    contract: str
    suite_path: Path
    suite: str
    notes: tuple[str, ...] = ()
    # Other drafts the table needs, e.g. the contract of its bronze input when it has none yet.
    extra: tuple[tuple[Path, str], ...] = ()

    def write(self, *, overwrite: bool = False) -> list[Path]:
        """Write the files (refusing to replace existing ones unless ``overwrite``)."""
        written = []
        files = ((self.contract_path, self.contract), (self.suite_path, self.suite), *self.extra)
        for path, text in files:
            if path.exists() and not overwrite:
                raise ConfigError(f"{path} exists: review it, or pass --force to replace it")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
        return written


def _delta_type(kind: str) -> str:
    return _SPARK_TO_DELTA.get(kind.lower(), kind.lower())


def _sample(settings: Settings, bronze: str) -> Any:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    path = settings.table_path("bronze", bronze)
    try:
        table = DeltaTable(path)
    except TableNotFoundError:
        raise ConfigError(
            f"bronze/{bronze} has no data yet at {path}: land the source first (lakehouse build, or its "
            "bronze task), then scaffold its silver table from what arrived"
        ) from None
    from lakehouse.governance.catalog import sample_frame

    return sample_frame(table, _SAMPLE_ROWS)


def _pii(sample: Any, column_of: dict[str, str]) -> dict[str, str]:
    """Silver column → PII kind, from the scanner's findings on the bronze sample."""
    from lakehouse.privacy.detectors import scan_frame

    found = {}
    for finding in scan_frame(sample):
        if finding.proposed_classification != "pii":
            continue
        target = column_of.get(finding.column)
        if target is not None:
            found[target] = finding.kind
    return found


def _infer(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "boolean"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "long"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "double"
    if present and all(isinstance(v, str) and re.match(r"^\d{4}-\d{2}-\d{2}$", v) for v in present):
        return "date"
    if present and all(
        isinstance(v, str) and re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", v) for v in present
    ):
        return "timestamp"
    return "string"


_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_DEPTH: Final = 3


def _leaf_paths(documents: list[dict[str, Any]], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths to the documents' leaf values, in first-seen order (objects walked ``_MAX_DEPTH`` deep)."""
    paths: list[tuple[str, ...]] = []
    for document in documents:
        for name, value in document.items():
            if not _IDENTIFIER.match(name):
                continue
            path = (*prefix, name)
            if isinstance(value, dict) and value and len(path) < _MAX_DEPTH:
                nested = [d[name] for d in documents if isinstance(d.get(name), dict)]
                paths.extend(p for p in _leaf_paths(nested, path) if p not in paths)
            elif path not in paths and not any(p[: len(path)] == path for p in paths):
                paths.append(path)
    return paths


def _value_at(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = document
    for segment in path:
        node = node.get(segment) if isinstance(node, dict) else None
    return None if isinstance(node, dict) else node


def _json_fields(sample: Any, column: str) -> dict[tuple[str, ...], str]:
    """Path → inferred type of every leaf field the sampled JSON objects of ``column`` carry.

    Nested objects are flattened (``customer.address.city``); lists are leaves (kept as JSON text).
    """
    documents = []
    for text in sample[column].dropna().head(_SAMPLE_ROWS):
        try:
            document = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(document, dict):
            documents.append(document)
    if not documents:
        raise ConfigError(f"no JSON object among the sampled {column!r} values: is this a JSON source?")
    return {path: _infer([_value_at(d, path) for d in documents]) for path in _leaf_paths(documents)}


def scaffold_table(settings: Settings, source_name: str, *, owner: str | None = None) -> Draft:
    """Draft the silver declaration, contract and suite of a registered source from its bronze sample.

    Raises:
        ConfigError: no such source, its bronze table is empty, or its kind cannot be drafted.
    """
    from lakehouse.sources.registry import load_registry

    registry = load_registry(settings)
    source = registry.sources.get(source_name)
    if source is None:
        raise ConfigError(f"no source {source_name!r} in the registry (known: {sorted(registry.sources)})")
    sample = _sample(settings, source.bronze)
    notes: list[str] = []
    columns: list[dict[str, Any]] = []
    column_of: dict[str, str] = {}
    build: dict[str, Any]
    payload = getattr(source, "record_payload", lambda: None)()
    if source.kind in ("kafka", "mqtt") and payload is not None:
        for name, field in payload.fields.items():
            columns.append({"name": name, "type": _delta_type(field.sql_type.ddl())})
            for path in field.paths(name):
                column_of[f"value.{'.'.join(path)}"] = name
        key = [*payload.key, *([payload.sequence] if payload.sequence else [])]
        build = {
            "inputs": [{"table": f"bronze.{source.bronze}", "format": "json", "payload": source_name}],
            "key": key,
            "sequence": ["ingested_at"],
            "apply": "append",
        }
        if payload.event_time:
            build["event_time"] = {
                "column": payload.event_time,
                "watermark": "1 hour",
                "partition_by": payload.key,
            }
            if payload.sequence:  # lateness judged in the device's own order, not the order rows landed
                build["event_time"]["order_by"] = [payload.sequence]
        columns.append({"name": "ingested_at", "type": "timestamp"})
    elif source.kind in ("kafka", "mqtt", "http"):
        text_column = "record" if "record" in sample.columns else "value"
        fields: dict[str, str] = {}
        for path, kind in _json_fields(sample, text_column).items():
            name = "_".join(path)
            if name in fields:
                notes.append(f"{'.'.join(path)} is also {name}: the first one is drafted, review it")
                continue
            fields[name] = kind
            column: dict[str, Any] = {"name": name, "type": kind}
            if len(path) > 1:  # a nested value: read from the record's text by its JSON path
                column["expr"] = f"get_json_object({text_column}, '$.{'.'.join(path)}')"
            columns.append(column)
            column_of[f"{text_column}.{'.'.join(path)}"] = name
        position = ["fetched_at", "batch_id"] if source.kind == "http" else ["ingested_at"]
        for position_column in position:
            if position_column in sample.columns:
                kind = "timestamp" if position_column.endswith("_at") else "string"
                columns.append({"name": position_column, "type": kind})
        key = [k for k in source.key if k in fields] or []
        if not key:
            notes.append("no key: the source declares none that the records carry; set build.key")
        build = {
            "inputs": [{"table": f"bronze.{source.bronze}", "format": "json", "column": text_column}],
            "key": key,
            "sequence": [c for c in position if c in sample.columns],
            "apply": "upsert" if key and source.kind == "http" else "append",
        }
        notes.append(f"types inferred from {len(sample)} sampled records: review them")
    elif source.kind == "postgres":
        bookkeeping = {c for c in sample.columns if c.startswith("_")}
        from lakehouse.governance.catalog import delta_schema

        fields_of = {
            name: kind for name, kind, _ in delta_schema(settings.table_path("bronze", source.bronze)) or []
        }
        for name in sample.columns:
            if name not in bookkeeping:
                columns.append({"name": name, "type": fields_of.get(name, "string")})
                column_of[name] = name
        watermark = str(getattr(source, "watermark", "") or "")
        mode = getattr(source, "mode", "incremental")
        sequence: list[str] = [watermark] if mode == "incremental" and watermark in sample.columns else []
        if not sequence:
            # A snapshot's rows are ordered by the snapshot that landed them (one row per key in each);
            # an extract without its watermark in bronze by when it was extracted.
            sequence = [c for c in ("_snapshot", "_extracted_at") if c in sample.columns][:1]
            for extra_column in sequence:
                described = {
                    "_snapshot": "The source snapshot the row's latest version came from.",
                    "_extracted_at": "When the row's latest version was extracted.",
                }[extra_column]
                default = "long" if extra_column == "_snapshot" else "timestamp"
                columns.append(
                    {
                        "name": extra_column,
                        "type": fields_of.get(extra_column, default),
                        "description": described,
                    }
                )
        if not sequence:
            notes.append(f"no sequence: bronze.{source.bronze} has no {watermark or 'watermark'}; set it")
        build = {
            "inputs": [{"table": f"bronze.{source.bronze}"}],
            "key": list(source.key),
            "sequence": sequence,
            "apply": "upsert",
        }
        if "_deleted" in sample.columns:  # a snapshot's tombstone: the key is gone from the source table
            build["deletes"] = "_deleted"
        elif "_op" in sample.columns:
            build["deletes"] = "_op = 'D'"
        columns += [
            {
                "name": "_deleted",
                "type": "boolean",
                "description": "A tombstone: the row was deleted at the source.",
            },
            {"name": "_source", "type": "string", "description": "The input the latest version came from."},
            {"name": "_merged_at", "type": "timestamp", "description": "When silver last changed the row."},
        ]
    else:
        raise ConfigError(
            f"source {source_name!r} is {source.kind}: declare its silver table by hand "
            "(a CDC stream carries several tables: one build input per table, format: wal2json)"
        )
    pii = _pii(sample, column_of)
    for column in columns:
        column.setdefault("description", "TODO: what this column means")
        if column["name"] in pii:
            column.update(classification="pii", pii=pii[column["name"]], treatment="tokenize")
        else:
            column.setdefault("classification", "internal")
    if pii:
        notes.append(f"PII proposed (tokenized in silver): {sorted(pii.items())}")
    table = f"silver.{source.bronze}"
    document = {
        "table": table,
        "owner": owner or source.owner,
        "description": source.description or "TODO: what one row is",
        "classification": "pii" if pii else "internal",
        "retention_days": 365,
        "freshness_sla": "24h",
        "build": build,
        "columns": columns,
    }
    header = (
        f"# Drafted by `lakehouse table scaffold {source_name}` from {len(sample)} bronze rows: review it.\n"
        "# The build section says how the silver engine builds the table (lakehouse.contracts.build).\n"
    )
    contract_text = header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=110)
    from lakehouse.governance.catalog import TableContract

    TableContract.model_validate(document)  # a draft that would not load is a bug here, not the user's
    expectations: list[dict[str, Any]] = [
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": 0},
            "meta": {"rule": "row_count", "action": "warn"},
        },
        *(
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": k},
                "meta": {"rule": f"{k}_not_null", "action": "quarantine"},
            }
            for k in build["key"]
        ),
    ]
    if len(build["key"]) == 1:
        expectations.append(
            {
                "type": "expect_column_values_to_be_unique",
                "kwargs": {"column": build["key"][0]},
                "meta": {"rule": "key_unique", "action": "fail"},
            }
        )
    elif build["key"]:
        expectations.append(
            {
                "type": "expect_compound_columns_to_be_unique",
                "kwargs": {"column_list": build["key"]},
                "meta": {"rule": "key_unique", "action": "fail"},
            }
        )
    suite = {
        "name": table,
        "meta": {"notes": "Drafted by lakehouse table scaffold: add the table's rules."},
        "expectations": expectations,
    }
    extra: list[tuple[Path, str]] = []
    bronze_contract = settings.root / "catalog" / "bronze" / f"{source.bronze}.yaml"
    if not bronze_contract.exists():
        from lakehouse.governance.catalog import scaffold_contract

        extra.append(
            (bronze_contract, scaffold_contract(settings, f"bronze.{source.bronze}", owner=source.owner))
        )
        notes.append(f"bronze.{source.bronze} had no contract: drafted {bronze_contract} too")
    return Draft(
        table=table,
        extra=tuple(extra),
        contract_path=settings.root / "catalog" / "silver" / f"{source.bronze}.yaml",
        contract=contract_text,
        suite_path=settings.root / settings.quality.suites_dir / "silver" / f"{source.bronze}.json",
        suite=json.dumps(suite, indent=2) + "\n",
        notes=tuple(notes),
    )
