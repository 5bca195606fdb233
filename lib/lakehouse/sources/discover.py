"""Proposing a registry entry from a sample of a new source: what ``lakehouse source add`` writes.

Each kind is sampled where it lives and the sample becomes a draft entry for ``sources.yaml`` (or
``$LAKEHOUSE_SOURCES``), validated with the registry's own models before anything is written:

* ``postgres`` — the table's columns, types and primary key from the catalog (``information_schema``); a
  column that names a version or change time (``updated_at``, ``modified_at``, ``version``…, of a type a
  keyset position keeps) is proposed as the watermark of an incremental extract, otherwise the table is
  extracted as snapshots;
* ``kafka`` — a sample of the topic: its records' fields (reported) and a key field;
* ``http`` — one page of the API: where the records are in nested JSON (``records_path``), the next cursor
  (``next_cursor_path``) and a contract of the fields every sampled record carries;
* ``mqtt`` — a payload declaration (a file of the user's own, or drafted from a few sampled messages: one
  field per leaf value, with its path and type).

The functions that turn a sample into an entry are pure (unit-tested on inline samples); the samplers talk to
the services. :func:`add_to_registry` appends the entry to the file, so its comments stay as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from lakehouse.config import Settings, expand_variables
from lakehouse.errors import ConfigError, ServiceError

_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Column names that say "this grows with each change of the row", best first.
_WATERMARK: Final = re.compile(
    r"^(updated|modified|changed|last_modified|last_updated|last_changed|ingested|loaded|synced)"
    r"(_at|_on|_time|_ts|_date)?$|^(row_)?version$|^(revision|rev|seq|sequence_number)$",
    re.IGNORECASE,
)
# PostgreSQL base types a keyset position keeps exactly and that grow (no text or uuid watermarks).
_WATERMARK_TYPES: Final = frozenset({"timestamptz", "timestamp", "int2", "int4", "int8", "numeric", "date"})
_CURSOR_NAMES: Final = ("next_cursor", "nextCursor", "next_page_token", "nextPageToken", "cursor", "next")
_SAMPLE_RECORDS: Final = 200


@dataclass(frozen=True)
class Proposal:
    """A drafted registry entry (as written in the file: ``${VARIABLES}`` unexpanded) and what was seen."""

    name: str
    entry: dict[str, Any]
    notes: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)


# --- pure: a sample becomes an entry ----------------------------------------------------------------------


def json_type(values: Sequence[Any]) -> str:
    """The registry/contract type of sampled JSON values: boolean, long, double, date, timestamp or string.

    Example:
        >>> json_type([1, 2.5, None])
        'double'
    """
    present = [v for v in values if v is not None]
    if not present:
        return "string"
    if all(isinstance(v, bool) for v in present):
        return "boolean"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "long"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "double"
    if all(isinstance(v, str) and re.match(r"^\d{4}-\d{2}-\d{2}$", v) for v in present):
        return "date"
    if all(isinstance(v, str) and re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", v) for v in present):
        return "timestamp"
    return "string"


def _leaves(
    document: Mapping[str, Any], prefix: tuple[str, ...], out: dict[tuple[str, ...], list[Any]]
) -> None:
    for name, value in document.items():
        if not _IDENTIFIER.match(str(name)):
            continue
        path = (*prefix, str(name))
        if isinstance(value, dict) and value and len(path) < 4:
            _leaves(value, path, out)
        else:
            out.setdefault(path, []).append(None if isinstance(value, dict | list) else value)


def leaf_fields(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, ...], str]:
    """Path → type of every leaf value of the sampled objects (nested objects walked), in first-seen order."""
    seen: dict[tuple[str, ...], list[Any]] = {}
    for record in records:
        _leaves(record, (), seen)
    return {path: json_type(values) for path, values in seen.items()}


def _key_guess(names: Sequence[str]) -> list[str]:
    for name in names:
        if name.lower() == "id":
            return [name]
    return [n for n in names if n.lower().endswith("_id")][:1]


def _base(name: str, *, bronze: str | None, description: str, owner: str | None) -> dict[str, Any]:
    if not _NAME.match(name):
        raise ConfigError(f"source name {name!r} must be lower_snake_case (a-z, 0-9, _; a letter first)")
    entry: dict[str, Any] = {"description": description or f"TODO: what {name} holds"}
    if owner:
        entry["owner"] = owner
    entry["bronze"] = bronze or name
    return entry


def propose_postgres(
    name: str,
    table: str,
    columns: Sequence[tuple[str, str]],
    primary_key: Sequence[str],
    *,
    connection: str | None = None,
    key: Sequence[str] = (),
    watermark: str | None = None,
    mode: str | None = None,
    bronze: str | None = None,
    description: str = "",
    owner: str | None = None,
) -> Proposal:
    """A postgres entry from the table's catalog: ``columns`` (name, base type as ``pg_type.typname``) and
    its primary key.

    The key is ``key`` or the primary key; the mode is ``mode`` or, when no watermark is given, incremental
    on the first column named like a change time or version (not a key column, of a type that grows), else
    snapshot.

    Raises:
        ConfigError: no key (no primary key and none given), or a named key/watermark column the table lacks.

    Example:
        >>> columns = [("id", "int8"), ("updated_at", "timestamptz")]
        >>> p = propose_postgres("orders", "sales.orders", columns, ["id"])
        >>> (p.entry["mode"], p.entry["watermark"])
        ('incremental', 'updated_at')
    """
    types = dict(columns)
    entry = {"kind": "postgres", **_base(name, bronze=bronze, description=description, owner=owner)}
    notes: list[str] = []
    chosen = list(key) or list(primary_key)
    if not chosen:
        raise ConfigError(
            f"{table} has no primary key: name the columns that identify a row with --key (e.g. --key id)"
        )
    missing = [c for c in [*chosen, *([watermark] if watermark else [])] if c not in types]
    if missing:
        raise ConfigError(f"{table} has no column(s) {missing}; its columns: {list(types)}")
    if key and primary_key and set(key) != set(primary_key):
        notes.append(f"key {list(key)} is not the primary key {list(primary_key)}: it must identify a row")
    if mode is None:
        if watermark is None:
            candidates = [
                c for c, t in columns if c not in chosen and _WATERMARK.match(c) and t in _WATERMARK_TYPES
            ]
            watermark = candidates[0] if candidates else None
        mode = "incremental" if watermark else "snapshot"
        notes.append(
            f"incremental by watermark {watermark!r} (it must grow with every change of a row)"
            if watermark
            else "no version or change-time column: extracted as snapshots (whole rows compared by key)"
        )
    elif mode == "incremental" and watermark is None:
        raise ConfigError(f"--mode incremental needs --watermark (a column of {table} that grows)")
    if connection:
        entry["connection"] = connection
    entry.update(table=table, mode=mode, key=chosen)
    if mode == "incremental":
        entry["watermark"] = watermark
        entry["ordering"] = watermark
    return Proposal(name, entry, tuple(notes), {c: t for c, t in columns})


def find_records(body: Any) -> tuple[tuple[str, ...] | None, list[Any]]:
    """Where the records are in an API's JSON body: the path to the first list of objects (breadth first).

    Returns:
        ``(path, records)``; path ``()`` when the body itself is the list, ``None`` when there is none.
    """
    if isinstance(body, list):
        return (), body
    queue: list[tuple[tuple[str, ...], Any]] = [((), body)]
    while queue:
        path, node = queue.pop(0)
        if not isinstance(node, dict):
            continue
        for name, value in node.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                return (*path, str(name)), value
            if isinstance(value, dict):
                queue.append(((*path, str(name)), value))
    return None, []


def find_cursor(body: Any, skip: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
    """The path of a next-page cursor in the body (a text or number under a cursor-like name), or None."""
    queue: list[tuple[tuple[str, ...], Any]] = [((), body)]
    while queue:
        path, node = queue.pop(0)
        if not isinstance(node, dict) or (skip is not None and path == skip):
            continue
        for wanted in _CURSOR_NAMES:
            value = node.get(wanted)
            if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
                return (*path, wanted)
        queue.extend(((*path, str(n)), v) for n, v in node.items() if isinstance(v, dict))
    return None


def _dotted(path: Sequence[str]) -> str:
    return ".".join(f"`{p}`" if "." in p else p for p in path)


def propose_http(
    name: str,
    url: str,
    body: Any,
    *,
    records_path: str | None = None,
    next_cursor_path: str | None = None,
    cursor_param: str = "cursor",
    page_size: int | None = None,
    size_param: str = "page_size",
    auth_header: str | None = None,
    auth_value: str | None = None,
    key: Sequence[str] = (),
    bronze: str | None = None,
    description: str = "",
    owner: str | None = None,
) -> Proposal:
    """An http entry from one page's JSON ``body``: pagination by where the records and the cursor are,
    a contract of the top-level fields every sampled record carries, and the key.

    Raises:
        ConfigError: the page has no list of records (where ``records_path`` says, or anywhere), or a given
            key is not a field of the records.
    """
    from lakehouse.contracts.payload import parse_path

    entry = {"kind": "http", **_base(name, bronze=bronze, description=description, owner=owner), "url": url}
    notes: list[str] = []
    if records_path is not None:
        path: tuple[str, ...] | None = parse_path(records_path)
        node: Any = body
        for segment in path or ():
            node = node.get(segment) if isinstance(node, dict) else None
        records = node if isinstance(node, list) else []
        if not isinstance(node, list):
            raise ConfigError(f"{url}: nothing is a list at records_path {records_path!r}")
    else:
        path, records = find_records(body)
        if path is None:
            raise ConfigError(f"{url}: the page holds no list of records; name it with --records-path")
    objects = [r for r in records[:_SAMPLE_RECORDS] if isinstance(r, dict)]
    if not objects:
        raise ConfigError(f"{url}: the records at {_dotted(path or ()) or 'the top level'} are not objects")
    cursor = parse_path(next_cursor_path) if next_cursor_path else find_cursor(body, skip=path)
    pagination: dict[str, Any] = {"style": "cursor" if cursor else "none"}
    if path:
        pagination["records_path"] = _dotted(path)
    if cursor:
        pagination.update(next_cursor_path=_dotted(cursor), cursor_param=cursor_param)
        notes.append(f"cursor pagination: the next page is asked with ?{cursor_param}=<{_dotted(cursor)}>")
        if page_size:
            pagination.update(page_size=page_size, size_param=size_param)
    elif not path:
        pagination = {"style": "none"}
    entry["pagination"] = pagination
    if auth_value:
        entry["auth"] = {"header": auth_header or "Authorization", "value": auth_value}
    top = [n for n in objects[0] if _IDENTIFIER.match(str(n))]
    for record in objects[1:]:
        top.extend(n for n in record if n not in top and _IDENTIFIER.match(str(n)))
    chosen = list(key) or _key_guess(top)
    unknown = [k for k in chosen if k not in top]
    if unknown:
        raise ConfigError(f"{url}: key {unknown} is not a field of the records ({top})")
    if not chosen:
        notes.append("no key: none of the records' fields is id or *_id; set key (or scaffold appends)")
    everywhere = [n for n in top if all(n in r for r in objects)]
    contract = {}
    for n in everywhere:
        values = [r[n] for r in objects]
        if any(isinstance(v, dict | list) for v in values):
            continue  # nested: the silver contract says what is inside
        contract[n] = json_type(values)
    entry.update(key=chosen, contract=contract)
    fields = {_dotted(p): t for p, t in leaf_fields(objects).items()}
    notes.append(f"{len(objects)} records sampled: {len(fields)} fields, {len(contract)} in the contract")
    return Proposal(name, entry, tuple(notes), fields)


def _decoded(samples: Sequence[bytes]) -> tuple[list[dict[str, Any]], int]:
    objects, bad = [], 0
    for raw in samples:
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            bad += 1
            continue
        if isinstance(value, dict):
            objects.append(value)
        else:
            bad += 1
    return objects, bad


def propose_kafka(
    name: str,
    topic: str,
    samples: Sequence[bytes],
    *,
    partitions: int | None = None,
    key: Sequence[str] = (),
    bronze: str | None = None,
    description: str = "",
    owner: str | None = None,
) -> Proposal:
    """A kafka entry from sampled message values: the records' fields (reported) and their key.

    An empty topic is proposed with a note (scaffold samples bronze later); records that are not JSON objects
    are counted in the notes (silver quarantines them as ``malformed_json``).
    """
    entry = {"kind": "kafka", **_base(name, bronze=bronze, description=description, owner=owner)}
    entry["topic"] = topic
    if partitions:
        entry["partitions"] = partitions
    objects, bad = _decoded(samples)
    fields = {_dotted(p): t for p, t in leaf_fields(objects).items()}
    top = list(dict.fromkeys(n for o in objects for n in o if _IDENTIFIER.match(str(n))))
    chosen = list(key) or _key_guess(top)
    missing = [k for k in key if k not in top]
    if objects and missing:
        raise ConfigError(f"topic {topic}: key {missing} is not a field of the sampled records ({top})")
    entry["key"] = chosen
    notes = [f"{len(samples)} messages sampled: {len(objects)} JSON objects, {bad} other"]
    if not samples:
        notes = [f"topic {topic} is empty: nothing sampled (its records are sampled again by scaffold)"]
    return Proposal(name, entry, tuple(notes), fields)


def _payload_type(kind: str) -> str:
    return {"long": "bigint", "double": "double", "boolean": "boolean", "timestamp": "timestamp"}.get(
        kind, "string"
    )


def propose_payload(
    samples: Sequence[bytes],
    *,
    key: Sequence[str],
    sequence: str | None = None,
    event_time: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """A payload declaration drafted from sampled device messages: one field per leaf value (named by its
    path joined with ``_``, with the path when nested), typed from the values.

    Raises:
        ConfigError: no message was a JSON object, or a named key/sequence/time field is not among them.
    """
    objects, bad = _decoded(samples)
    if not objects:
        raise ConfigError(
            f"none of the {len(samples)} sampled messages is a JSON object: declare the payload in a file "
            "(--payload FILE)"
        )
    fields: dict[str, Any] = {}
    for path, kind in leaf_fields(objects).items():
        spec: dict[str, Any] = {"type": _payload_type(kind)}
        name = "_".join(path)
        if len(path) > 1:
            spec["path"] = _dotted(path)
        fields.setdefault(name, spec)
    unknown = [n for n in [*key, sequence, event_time] if n and n not in fields]
    if unknown:
        raise ConfigError(f"{unknown} are not fields of the sampled messages ({sorted(fields)})")
    payload: dict[str, Any] = {"key": list(key)}
    if sequence:
        payload["sequence"] = sequence
    if event_time:
        payload["event_time"] = event_time
        if fields[event_time]["type"] in ("bigint", "double"):  # epoch seconds or milliseconds, by size
            payload["time_format"] = "auto"
        fields[event_time]["type"] = "timestamp"
    payload["fields"] = fields
    notes = [f"{len(samples)} messages sampled ({bad} not JSON objects): review the drafted payload"]
    return payload, notes


def propose_mqtt(
    name: str,
    mqtt_topic: str,
    payload: Mapping[str, Any],
    *,
    kafka_topic: str | None = None,
    topic_pattern: str | None = None,
    key: Sequence[str] = (),
    bronze: str | None = None,
    description: str = "",
    owner: str | None = None,
) -> Proposal:
    """An mqtt entry: the broker topic, the Kafka topic it is bridged to (and its dead letters), the payload.

    Raises:
        ConfigError: the payload declaration is invalid (the message names the field).
    """
    from lakehouse.contracts.payload import PayloadSpec

    try:
        declared = PayloadSpec.model_validate(payload)
    except ValidationError as exc:
        raise ConfigError(f"the payload of {name!r} is invalid: {_problems(exc)}") from None
    kafka = kafka_topic or name.replace("_", "-")
    entry = {"kind": "mqtt", **_base(name, bronze=bronze, description=description, owner=owner)}
    entry.update(mqtt_topic=mqtt_topic, kafka_topic=kafka, dead_letter_topic=f"{kafka}.dlq")
    if topic_pattern:
        entry["topic_pattern"] = topic_pattern
    entry["key"] = list(key) or [*declared.key, *([declared.sequence] if declared.sequence else [])]
    if declared.event_time:
        entry["ordering"] = declared.event_time
    entry["payload"] = dict(payload)
    notes = [f"bridge it with `lakehouse iot bridge --source {name}`; bronze ingests {kafka}"]
    return Proposal(name, entry, tuple(notes), {n: f.sql_type.ddl() for n, f in declared.fields.items()})


# --- the registry file ------------------------------------------------------------------------------------


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def registry_path(settings: Settings) -> Path:
    """The registry file ``lakehouse source add`` writes: ``$LAKEHOUSE_SOURCES``, else ``sources.yaml``."""
    import os

    from lakehouse.sources.registry import REGISTRY_FILE, REGISTRY_VARIABLE

    return Path(os.environ.get(REGISTRY_VARIABLE) or settings.root / REGISTRY_FILE)


def check_new(settings: Settings, name: str, path: Path | None = None) -> None:
    """Refuse a source name the registry has (before sampling: the name is the cheap thing to check).

    Raises:
        ConfigError: the name is not lower_snake_case, or the registry file has a source of that name.
    """
    _base(name, bronze=None, description="", owner=None)
    path = path or registry_path(settings)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if name in ((document or {}).get("sources") or {}):
        raise ConfigError(
            f"{path.name} already has a source {name!r}: choose another name, or edit that entry"
        )


def entry_text(name: str, entry: Mapping[str, Any]) -> str:
    """The entry as a block of the registry's ``sources:`` mapping (two-space indent)."""
    body = yaml.safe_dump(dict(entry), sort_keys=False, allow_unicode=True, width=110)
    return f"  {name}:\n" + "".join(f"    {line}\n" if line else "\n" for line in body.splitlines())


def add_to_registry(settings: Settings, proposal: Proposal, path: Path | None = None) -> Path:
    """Append the proposed entry to the registry file after validating the registry it makes.

    The file's text is kept (comments too): the entry is appended under ``sources:``. Variables such as
    ``${OWN_DB_URL}`` are written as given and must be set for the check.

    Raises:
        ConfigError: a source of that name (or bronze table) exists, or the entry does not validate (the
            message names the field).
    """
    from lakehouse.sources.registry import Registry, settings_variables

    path = path or registry_path(settings)
    text = path.read_text(encoding="utf-8") if path.is_file() else "sources:\n"
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    sources = document.get("sources") or {}
    if proposal.name in sources:
        raise ConfigError(
            f"{path.name} already has a source {proposal.name!r}: choose another name, or edit that entry"
        )
    block = entry_text(proposal.name, proposal.entry)
    new_text = text if text.endswith("\n") else text + "\n"
    if not sources and re.search(r"^sources:\s*(\{\s*\})?\s*$", new_text, re.MULTILINE):
        new_text = re.sub(r"^sources:.*$", "sources:", new_text, count=1, flags=re.MULTILINE)
    new_text += block
    try:
        updated = yaml.safe_load(new_text)
        appended = updated["sources"][proposal.name] == json.loads(json.dumps(proposal.entry))
        kept = all(updated["sources"].get(n) == v for n, v in sources.items())
    except (yaml.YAMLError, KeyError, TypeError):
        appended = kept = False
    if not (appended and kept):  # the file's layout does not take an appended block: rewrite it whole
        updated = {**document, "sources": {**sources, proposal.name: proposal.entry}}
        new_text = yaml.safe_dump(updated, sort_keys=False, allow_unicode=True, width=110)
    try:
        Registry.model_validate(expand_variables(updated, path, settings_variables(settings)))
    except ValidationError as exc:
        raise ConfigError(f"the entry for {proposal.name!r} is invalid: {_problems(exc)}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new_text, encoding="utf-8")
    return path


# --- samplers (they talk to the services) -----------------------------------------------------------------

_PG_COLUMNS: Final = """
SELECT c.column_name, c.udt_name
FROM information_schema.columns c
WHERE c.table_schema = %s AND c.table_name = %s
ORDER BY c.ordinal_position
"""
_PG_PRIMARY_KEY: Final = """
SELECT k.column_name
FROM information_schema.table_constraints t
JOIN information_schema.key_column_usage k
  ON k.constraint_schema = t.constraint_schema AND k.constraint_name = t.constraint_name
 AND k.table_schema = t.table_schema AND k.table_name = t.table_name
WHERE t.constraint_type = 'PRIMARY KEY' AND t.table_schema = %s AND t.table_name = %s
ORDER BY k.ordinal_position
"""


def sample_postgres(
    settings: Settings, table: str, connection: str | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """The table's columns (name, base type) and primary key, from ``information_schema``.

    Args:
        table: ``table`` (schema public) or ``schema.table``, as written in the registry.
        connection: a libpq string or URL, ``${VARIABLES}`` expanded from the environment (default: the
            environment file's PostgreSQL).

    Raises:
        ConfigError: the table does not exist (or the role cannot see it).
        ServiceError: the database does not answer.
    """
    import psycopg

    from lakehouse.sources.registry import REGISTRY_FILE, settings_variables

    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    try:
        if connection:
            conninfo = expand_variables(connection, Path(REGISTRY_FILE), settings_variables(settings))
            conn = psycopg.connect(conninfo, connect_timeout=10)
        else:
            conn = psycopg.connect(**settings.postgres.connect_kwargs(), connect_timeout=10)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise ServiceError(
            f"cannot connect to PostgreSQL for {table} ({type(exc).__name__}; the connection is not shown: "
            "it may hold a password): check it, or start the environment's with `lakehouse up`"
        ) from None
    with conn:
        columns = [(str(c), str(t)) for c, t in conn.execute(_PG_COLUMNS, (schema, name))]
        key = [str(row[0]) for row in conn.execute(_PG_PRIMARY_KEY, (schema, name))]
    if not columns:
        raise ConfigError(
            f"no table {schema}.{name} in that database (names are case-sensitive, the schema defaults to "
            "public)"
        )
    return columns, key


def sample_http(
    url: str, headers: Mapping[str, str], *, timeout_s: float = 10.0, settings: Settings | None = None
) -> Any:
    """One page of the API as parsed JSON (``${VARIABLES}`` in url and headers expanded).

    Raises:
        ServiceError: the API does not answer, or answers an error status.
        ConfigError: the answer is not JSON.
    """
    import requests

    from lakehouse.sources.registry import REGISTRY_FILE, settings_variables

    variables = settings_variables(settings) if settings is not None else {}
    url = expand_variables(url, Path(REGISTRY_FILE), variables)
    headers = expand_variables(dict(headers), Path(REGISTRY_FILE), variables)
    try:
        response = requests.get(url, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        raise ServiceError(f"{url} does not answer ({type(exc).__name__}): is the API up?") from None
    if response.status_code >= 400:
        raise ServiceError(f"{url} answered HTTP {response.status_code}: check the url and --auth-value")
    try:
        return response.json()
    except ValueError:
        raise ConfigError(f"{url} did not answer JSON ({response.text[:120]!r})") from None


def sample_kafka(
    settings: Settings, topic: str, *, limit: int = 50, timeout_s: float = 5.0
) -> tuple[list[bytes], int]:
    """Up to ``limit`` message values from the start of ``topic``, and its partition count.

    Raises:
        ConfigError: the topic does not exist.
    """
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        if not partitions:
            raise ConfigError(f"no Kafka topic {topic!r} at {settings.kafka.bootstrap_servers}")
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        end = consumer.end_offsets(assigned)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while (
            len(values) < limit
            and any(consumer.position(tp) < end[tp] for tp in assigned)
            and time.monotonic() < deadline
        ):
            for batch in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in batch if r.value is not None)
        return values[:limit], len(partitions)
    finally:
        consumer.close()


def sample_mqtt(settings: Settings, topic: str, *, limit: int = 20, seconds: float = 10.0) -> list[bytes]:
    """Up to ``limit`` messages published on ``topic`` (a filter, ``+``/``#`` allowed) within ``seconds``."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    received: list[bytes] = []
    done = threading.Event()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        received.append(bytes(message.payload))
        if len(received) >= limit:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    try:
        client.connect(settings.mqtt.host, settings.mqtt.port)
    except OSError as exc:
        raise ServiceError(
            f"the MQTT broker at {settings.mqtt.host}:{settings.mqtt.port} does not answer ({exc}): "
            "start it with `lakehouse up`"
        ) from None
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        done.wait(seconds)
    finally:
        client.loop_stop()
        client.disconnect()
    return received[:limit]
