"""Payload declarations: what a device or a producer sends, declared in ``sources.yaml``, read by one engine.

A source of kind ``mqtt`` (required) or ``kafka`` (optional) declares its ``payload``::

    payload:
      key: [device_id]              # the device (entity) a record is about: the Kafka message key
      sequence: seq                 # orders the records of one key; key + sequence identify a record
      event_time: device_time       # when it happened (a timestamp field)
      time_format: auto             # iso8601 (default) | epoch_ms | epoch_s | auto
      fields:
        device_id: {type: string}                                 # the path defaults to the field's name
        seq: {type: bigint, min: 0}
        device_time: {path: [ts, device_time], type: timestamp}   # alternatives: the first non-null wins
        temperature_c:
          path: readings.temp.value                               # nested: a dotted path
          type: double
          unit_path: readings.temp.unit                           # the unit travels with the value…
          units: {C: degC, F: degF, K: kelvin}                    # …spelled so (any other: unknown_unit)
          to: degC                                                # converted with pint
          round: 2
          min: -40
          max: 85
        pressure_kpa: {path: p, type: double, unit: hPa, to: kPa}  # a fixed unit
        rssi_dbm: {type: double, null_values: [n/a]}               # spellings of "no value"

**Paths** are dotted segments into nested JSON objects (``readings.temp.value``). A segment whose name holds
a dot or a backtick is quoted with backticks, as in Spark SQL (```a.b`.c``; a literal backtick is doubled).
Array indices are not part of the syntax: declare the array itself (``type: array<double>``).

**Types** are Spark SQL type names: string, int (integer), bigint (long), smallint, tinyint, double, float,
boolean, timestamp, date, decimal(p,s), array<T>, map<string,T>. A struct is declared as its leaves, one
field per path. Reading JSON is strict: a number is not a string, ``"7"`` is not an integer, ``true`` is not a
number, NaN is not a double.

**Units** are converted with `pint <https://pint.readthedocs.io>`_ (offsets included: °F → °C). ``unit`` is a
fixed unit of the payload's value; ``unit_path`` reads it from the payload, and ``units`` maps the spellings
a device uses to pint's names (when given, it is the closed list of accepted spellings: pint alone would read
``C`` as coulomb and ``F`` as farad). Unit names are checked when a reader is built
(:meth:`PayloadSpec.reader`), not when the registry loads, so that loading ``sources.yaml`` does not import
pint.

Reading one document (:meth:`PayloadReader.read`) gives the declared fields, typed and converted (timestamps
as ISO-8601 UTC with milliseconds, decimals as exact strings), and ``extra``: every value the declaration does
not name, kept as it came (nested), never dropped. A document that breaks the declaration raises
:class:`PayloadError`; its ``reason`` names the rule:

=====================  =================================================================================
``not_json``           the bytes are not UTF-8 JSON
``not_an_object``      the JSON is not an object
``missing_<field>``    a key or sequence field, or a ``required`` one, is missing or null (or a blank key)
``invalid_<field>``    a key or sequence field has the wrong type or lies outside its ``min``/``max``
``invalid_timestamp``  the event time is missing, or a timestamp is unreadable or outside earliest..latest
``invalid_value``      another field has the wrong type
``unknown_unit``       a value came without its unit, or with a unit the field does not accept
``out_of_range``       a value (converted) lies outside ``min``/``max``
``undeclared_field``   ``undeclared: dead_letter`` and the payload has a value the declaration does not name
=====================  =================================================================================

Spark reads the same declaration: :meth:`PayloadSpec.record_ddl` is the normalised record,
:meth:`PayloadSpec.payload_ddl` the raw nested payload (for ``from_json``) and
:meth:`PayloadSpec.select_expressions` the Spark SQL that turns the parsed payload into the record.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lakehouse.errors import ConfigError

TimeFormat = Literal["iso8601", "epoch_ms", "epoch_s", "auto"]
Path = tuple[str, ...]

GENERIC_REASONS: Final = (
    "not_json",
    "not_an_object",
    "invalid_timestamp",
    "invalid_value",
    "unknown_unit",
    "out_of_range",
    "undeclared_field",
)
_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INTEGER_BITS: Final = {"tinyint": 8, "smallint": 16, "int": 32, "bigint": 64}
_SCALARS: Final = {
    "string": "string",
    "int": "int",
    "integer": "int",
    "bigint": "bigint",
    "long": "bigint",
    "smallint": "smallint",
    "short": "smallint",
    "tinyint": "tinyint",
    "byte": "tinyint",
    "double": "double",
    "float": "float",
    "real": "float",
    "boolean": "boolean",
    "bool": "boolean",
    "timestamp": "timestamp",
    "date": "date",
}
_NUMERIC: Final = frozenset({"int", "bigint", "smallint", "tinyint", "double", "float", "decimal"})
_EPOCH_SECONDS_BELOW: Final = 100_000_000_000  # `auto`: smaller numbers are seconds, larger milliseconds


class PayloadError(ValueError):
    """A payload that breaks its declaration; ``reason`` names the rule (see the module docstring)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- paths ------------------------------------------------------------------------------------------------


def parse_path(text: str) -> Path:
    """``a.b.c`` → ``("a", "b", "c")``; backticks quote a segment (```a.b`.c`` → ``("a.b", "c")``).

    Raises:
        ValueError: an empty segment or an unclosed backtick.

    Example:
        >>> parse_path("readings.`temp.c`.value")
        ('readings', 'temp.c', 'value')
    """
    segments: list[str] = []
    index, length = 0, len(text)
    while True:
        if index < length and text[index] == "`":
            segment, index = [], index + 1
            while True:
                end = text.find("`", index)
                if end < 0:
                    raise ValueError(f"path {text!r} has an unclosed backtick")
                segment.append(text[index:end])
                if text.startswith("``", end):
                    segment.append("`")
                    index = end + 2
                    continue
                index = end + 1
                break
            name = "".join(segment)
        else:
            end = text.find(".", index)
            end = length if end < 0 else end
            name = text[index:end]
            if "`" in name:
                raise ValueError(f"path {text!r}: a backtick may only quote a whole segment")
            index = end
        if not name:
            raise ValueError(f"path {text!r} has an empty segment")
        segments.append(name)
        if index == length:
            return tuple(segments)
        if text[index] != ".":
            raise ValueError(f"path {text!r}: expected '.' after a quoted segment")
        index += 1
        if index == length:
            raise ValueError(f"path {text!r} has an empty segment")


def format_path(path: Path) -> str:
    """The text of a path, quoting segments that need it (the inverse of :func:`parse_path`)."""
    return ".".join(s if _NAME.match(s) else "`" + s.replace("`", "``") + "`" for s in path)


def lookup(document: Any, path: Path) -> Any:
    """The value at ``path`` in nested objects, or None when any step is missing or not an object."""
    node = document
    for segment in path:
        if not isinstance(node, dict) or segment not in node:
            return None
        node = node[segment]
    return node


def _sql_column(root: str, path: Path) -> str:
    return ".".join([root, *("`" + s.replace("`", "``") + "`" for s in path)])


# --- types ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlType:
    """A parsed Spark SQL type: a scalar name, ``decimal(p,s)``, ``array<T>`` or ``map<K,V>``."""

    name: str
    precision: int = 0
    scale: int = 0
    element: SqlType | None = None
    key: SqlType | None = None

    @property
    def numeric(self) -> bool:
        return self.name in _NUMERIC

    @property
    def scalar(self) -> bool:
        return self.name not in {"array", "map"}

    def ddl(self) -> str:
        """The Spark DDL spelling: ``BIGINT``, ``DECIMAL(10,2)``, ``ARRAY<DOUBLE>``, ``MAP<STRING,INT>``."""
        if self.name == "decimal":
            return f"DECIMAL({self.precision},{self.scale})"
        if self.name == "array":
            assert self.element is not None
            return f"ARRAY<{self.element.ddl()}>"
        if self.name == "map":
            assert self.key is not None and self.element is not None
            return f"MAP<{self.key.ddl()},{self.element.ddl()}>"
        return self.name.upper()


_TOKEN: Final = re.compile(r"\s*([A-Za-z_]+|\d+|[<>(),])")


@functools.lru_cache(maxsize=512)
def parse_type(text: str) -> SqlType:
    """Parse a Spark SQL type name (see the module docstring for the supported ones).

    Raises:
        ValueError: an unknown or malformed type.

    Example:
        >>> parse_type("array<decimal(10, 2)>").ddl()
        'ARRAY<DECIMAL(10,2)>'
    """
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position:].strip():
                raise ValueError(f"type {text!r}: unexpected {text[position:]!r}")
            break
        tokens.append(match.group(1).lower())
        position = match.end()
    parsed, rest = _parse_tokens(tokens, text)
    if rest:
        raise ValueError(f"type {text!r}: unexpected {' '.join(rest)!r} at the end")
    return parsed


def _expect(tokens: list[str], token: str, text: str) -> list[str]:
    if not tokens or tokens[0] != token:
        raise ValueError(f"type {text!r}: expected {token!r}")
    return tokens[1:]


def _parse_tokens(tokens: list[str], text: str) -> tuple[SqlType, list[str]]:
    known = ", ".join([*sorted(set(_SCALARS.values())), "decimal(p,s)", "array<T>", "map<string,T>"])
    if not tokens:
        raise ValueError(f"type {text!r} is empty (known: {known})")
    head, rest = tokens[0], tokens[1:]
    if head in _SCALARS:
        return SqlType(_SCALARS[head]), rest
    if head in {"decimal", "dec", "numeric"}:
        precision, scale = 10, 0
        if rest and rest[0] == "(":
            rest = rest[1:]
            if not rest or not rest[0].isdigit():
                raise ValueError(f"type {text!r}: decimal needs a precision")
            precision, rest = int(rest[0]), rest[1:]
            if rest and rest[0] == ",":
                if len(rest) < 2 or not rest[1].isdigit():
                    raise ValueError(f"type {text!r}: decimal needs a scale after the comma")
                scale, rest = int(rest[1]), rest[2:]
            rest = _expect(rest, ")", text)
        if not 1 <= precision <= 38 or not 0 <= scale <= precision:
            raise ValueError(f"type {text!r}: decimal(p,s) needs 1 <= p <= 38 and 0 <= s <= p")
        return SqlType("decimal", precision, scale), rest
    if head == "array":
        element, rest = _parse_tokens(_expect(rest, "<", text), text)
        return SqlType("array", element=element), _expect(rest, ">", text)
    if head == "map":
        key, rest = _parse_tokens(_expect(rest, "<", text), text)
        if key.name != "string":
            raise ValueError(f"type {text!r}: JSON object keys are strings, so a map's key type is string")
        value, rest = _parse_tokens(_expect(rest, ",", text), text)
        return SqlType("map", key=key, element=value), _expect(rest, ">", text)
    raise ValueError(f"unknown type {head!r} in {text!r} (known: {known})")


# --- units ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _unit_registry() -> Any:
    import pint  # only sources that declare units pay for pint's import (~0.4 s)

    return pint.UnitRegistry()


@functools.lru_cache(maxsize=1024)
def unit_converter(source: str, target: str) -> Callable[[float], float]:
    """A function converting a magnitude from unit ``source`` to ``target`` (pint names, e.g. degF → degC).

    Raises:
        ValueError: a unit pint does not know, or units of different dimensions.
    """
    import pint

    units = _unit_registry()
    try:
        origin, goal = units.Unit(source), units.Unit(target)
        units.Quantity(1.0, origin).to(goal)
    except (pint.errors.PintError, AttributeError, TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"cannot convert {source!r} to {target!r}: {exc}") from None

    def exact(value: float) -> float:
        return float(units.Quantity(value, origin).to(goal).magnitude)

    # Most conversions are affine (°F → °C included): computed once by pint, applied as value * a + b,
    # ~100x faster than a pint Quantity per value. Non-linear ones (logarithmic units) stay with pint.
    offset = exact(0.0)
    scale = exact(1.0) - offset
    probes = (-40.0, 37.5, 1000.0, 123456.789)
    if all(math.isclose(exact(p), p * scale + offset, rel_tol=1e-12, abs_tol=1e-12) for p in probes):
        return lambda value: value * scale + offset
    return exact


def affine(source: str, target: str) -> tuple[float, float]:
    """``(scale, offset)`` with ``target = value * scale + offset`` (for Spark SQL; pint's own conversion).

    Raises:
        ValueError: unknown or incompatible units, or a conversion that is not linear (logarithmic units).
    """
    convert = unit_converter(source, target)
    offset = convert(0.0)
    scale = convert(1.0) - offset
    probe = convert(1000.0)
    if not math.isclose(probe, 1000.0 * scale + offset, rel_tol=1e-12, abs_tol=1e-12):
        raise ValueError(f"converting {source!r} to {target!r} is not linear: Spark SQL cannot express it")
    return scale, offset


# --- the declaration --------------------------------------------------------------------------------------


class FieldSpec(BaseModel):
    """One field of a payload: where it is, its type, its unit and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | list[str] | None = Field(
        None, description="dotted path into the payload, or alternatives (first non-null wins); default: name"
    )
    type: str = Field("string", description="a Spark SQL type name")
    description: str = ""
    required: bool = Field(False, description="a missing or null value dead-letters the payload")
    unit: str | None = Field(None, description="the fixed unit of the payload's value (pint name)")
    unit_path: str | None = Field(None, description="where the payload says the value's unit")
    units: dict[str, str] = Field(
        default_factory=dict, description="payload spellings of the unit → pint names (closed list)"
    )
    to: str | None = Field(None, description="the unit of the record's value")
    round: int | None = Field(None, ge=0, le=12, description="decimal places kept after conversion")
    min: float | None = None
    max: float | None = None
    time_format: TimeFormat | None = Field(None, description="for timestamps; default: the payload's")
    null_values: list[str] = Field(default_factory=list, description="strings that mean no value")

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        parse_type(value)
        return value

    @field_validator("path")
    @classmethod
    def _paths(cls, value: str | list[str] | None) -> str | list[str] | None:
        for text in [value] if isinstance(value, str) else value or []:
            parse_path(text)
        if isinstance(value, list) and not value:
            raise ValueError("path alternatives must not be empty")
        return value

    @field_validator("unit_path")
    @classmethod
    def _unit_path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_path(value)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> FieldSpec:
        kind = self.sql_type
        if self.unit is not None and self.unit_path is not None:
            raise ValueError("give either `unit` (fixed) or `unit_path` (read from the payload), not both")
        if self.to is not None and self.unit is None and self.unit_path is None:
            raise ValueError("`to` converts from a unit: declare `unit` or `unit_path` too")
        if self.unit_path is not None and self.to is None:
            raise ValueError("`unit_path` needs `to`, the unit the record's value is converted to")
        if self.units and self.unit_path is None:
            raise ValueError("`units` lists the payload's spellings of `unit_path`: declare `unit_path`")
        numeric_only = {
            "unit": self.unit,
            "unit_path": self.unit_path,
            "round": self.round,
            "min": self.min,
            "max": self.max,
        }
        used = [name for name, value in numeric_only.items() if value is not None]
        if used and not kind.numeric:
            raise ValueError(f"{', '.join(used)} need a numeric type, not {self.type!r}")
        if self.time_format is not None and kind.name != "timestamp":
            raise ValueError(f"time_format applies to timestamps, not {self.type!r}")
        if self.null_values and not kind.scalar:
            raise ValueError("null_values apply to scalar fields")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    @property
    def sql_type(self) -> SqlType:
        return parse_type(self.type)

    def paths(self, name: str) -> list[Path]:
        """The parsed path alternatives of this field (``name`` itself when no path is declared)."""
        if self.path is None:
            return [(name,)]
        return [parse_path(p) for p in ([self.path] if isinstance(self.path, str) else self.path)]


class PayloadSpec(BaseModel):
    """A payload declaration (see the module docstring): fields, key, sequence and event time.

    Example:
        >>> spec = PayloadSpec.model_validate(
        ...     {"key": ["id"], "fields": {"id": {}, "t": {"path": "m.temp", "type": "double"}}}
        ... )
        >>> spec.record_ddl()
        '`id` STRING, `t` DOUBLE, `extra` STRING'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["json"] = "json"
    fields: dict[str, FieldSpec] = Field(min_length=1)
    key: list[str] = Field(min_length=1, description="the device/entity fields: the Kafka message key")
    sequence: str | None = Field(None, description="orders the records of one key")
    event_time: str | None = Field(None, description="the timestamp field of when it happened")
    time_format: TimeFormat = "iso8601"
    earliest: date = Field(date(2000, 1, 1), description="timestamps before this are absurd")
    latest: date = Field(date(2100, 1, 1), description="timestamps from this on are absurd")
    undeclared: Literal["keep", "dead_letter"] = Field(
        "keep", description="keep undeclared values in `extra_field`, or dead-letter the payload"
    )
    extra_field: str = "extra"

    @model_validator(mode="after")
    def _coherent(self) -> PayloadSpec:
        for name in self.fields:
            if not _NAME.match(name):
                raise ValueError(f"field name {name!r} must be a plain identifier (letters, digits, _)")
        roles = [*(("key", name) for name in self.key)]
        if self.sequence is not None:
            roles.append(("sequence", self.sequence))
        if self.event_time is not None:
            roles.append(("event_time", self.event_time))
        for role, name in roles:
            if name not in self.fields:
                raise ValueError(f"{role} {name!r} is not one of the declared fields {sorted(self.fields)}")
        for name in self.key:
            kind = self.fields[name].sql_type.name
            if kind not in {"string", *_INTEGER_BITS}:
                raise ValueError(f"key field {name!r} must be a string or an integer, not {kind!r}")
        if len(set(self.key)) != len(self.key):
            raise ValueError(f"key {self.key} names a field twice")
        if self.sequence is not None and not self.fields[self.sequence].sql_type.scalar:
            raise ValueError(f"sequence {self.sequence!r} must be a scalar field")
        if self.sequence is not None and self.sequence in self.key:
            raise ValueError(f"sequence {self.sequence!r} is also a key field")
        if self.event_time is not None and self.fields[self.event_time].sql_type.name != "timestamp":
            raise ValueError(f"event_time {self.event_time!r} must be a timestamp field")
        if self.extra_field in self.fields:
            raise ValueError(f"{self.extra_field!r} holds the undeclared values: rename the field")
        if not _NAME.match(self.extra_field):
            raise ValueError(f"extra_field {self.extra_field!r} must be a plain identifier")
        if self.earliest >= self.latest:
            raise ValueError(f"earliest ({self.earliest}) must be before latest ({self.latest})")
        return self

    # -- roles ----------------------------------------------------------------------------------------

    @property
    def identity(self) -> list[str]:
        """Key fields, then the sequence, then the event time: the fields read (and checked) first."""
        return [*self.key, *(n for n in (self.sequence, self.event_time) if n is not None)]

    def dead_letter_reasons(self) -> list[str]:
        """Every reason a payload of this declaration can be dead-lettered with."""
        named = [f"missing_{n}" for n in (*self.key, *([self.sequence] if self.sequence else []))]
        named += [f"invalid_{n}" for n in (*self.key, *([self.sequence] if self.sequence else []))]
        named += [f"missing_{n}" for n, f in self.fields.items() if f.required and n not in self.identity]
        return [*GENERIC_REASONS, *named]

    def time_format_of(self, name: str) -> TimeFormat:
        return self.fields[name].time_format or self.time_format

    # -- Spark ----------------------------------------------------------------------------------------

    def record_ddl(self) -> str:
        """The Spark DDL of the normalised record: the declared fields in order, then ``extra`` (JSON text).

        Spark reads a JSON object into a STRING column as its JSON text, so ``extra`` is STRING.
        """
        columns = [f"`{name}` {spec.sql_type.ddl()}" for name, spec in self.fields.items()]
        if self.undeclared == "keep":
            columns.append(f"`{self.extra_field}` STRING")
        return ", ".join(columns)

    def record_schema(self) -> Any:
        """:meth:`record_ddl` as a ``pyspark.sql.types.StructType`` (imports pyspark)."""
        from pyspark.sql.types import StructType, _parse_datatype_string

        parsed = _parse_datatype_string(self.record_ddl())
        assert isinstance(parsed, StructType)
        return parsed

    def _raw_type(self, name: str) -> str:
        spec = self.fields[name]
        kind = spec.sql_type
        if kind.name == "timestamp":
            return "DOUBLE" if self.time_format_of(name) in {"epoch_ms", "epoch_s"} else "STRING"
        if spec.null_values or kind.name == "date":
            return "STRING"
        return kind.ddl()

    def payload_ddl(self) -> str:
        """The Spark DDL of the raw payload as sent (nested structs from the paths), for ``from_json``.

        Timestamps are read as STRING (ISO-8601, ``auto``) or DOUBLE (epochs) and fields with
        ``null_values`` as STRING; :meth:`select_expressions` turns them into the record's types.

        Raises:
            ConfigError: two fields read one path with different types.
        """
        tree: dict[str, Any] = {}
        for name, spec in self.fields.items():
            leaves = [(path, self._raw_type(name)) for path in spec.paths(name)]
            if spec.unit_path is not None:
                leaves.append((parse_path(spec.unit_path), "STRING"))
            for path, kind in leaves:
                node = tree
                for segment in path[:-1]:
                    child = node.setdefault(segment, {})
                    if not isinstance(child, dict):
                        raise ConfigError(f"payload field {name!r}: {format_path(path)} crosses a value")
                    node = child
                current = node.get(path[-1])
                if current is not None and current != kind:
                    raise ConfigError(
                        f"payload field {name!r}: {format_path(path)} is read as {kind} and as {current}"
                    )
                node[path[-1]] = kind

        def render(node: dict[str, Any], separator: str) -> str:
            parts = []
            for segment, child in node.items():
                kind = child if isinstance(child, str) else f"STRUCT<{render(child, ': ')}>"
                parts.append(f"`{segment.replace('`', '``')}`{separator}{kind}")
            return ", ".join(parts)

        return render(tree, " ")

    def select_expressions(self, parsed: str = "payload") -> list[str]:
        """Spark SQL expressions (``… AS name``) that turn the parsed payload column into the record.

        Alternatives are coalesced, values cast with ``try_cast`` (a wrong type becomes null), units
        converted, timestamps parsed by their format, values rounded. Range, unit and type checks that
        dead-letter a payload in Python are the silver engine's to route (quarantine with a reason).

        Args:
            parsed: the column holding ``from_json(value, payload_ddl())``.

        Raises:
            ConfigError: a ``unit_path`` field without ``units`` (Spark cannot ask pint per row).
        """
        expressions = []
        for name, spec in self.fields.items():
            alternatives = [_sql_column(parsed, path) for path in spec.paths(name)]
            value = alternatives[0] if len(alternatives) == 1 else f"coalesce({', '.join(alternatives)})"
            if spec.null_values:
                listed = ", ".join(_sql_literal(v) for v in spec.null_values)
                value = f"CASE WHEN CAST({value} AS STRING) IN ({listed}) THEN NULL ELSE {value} END"
            kind = spec.sql_type
            if kind.name == "timestamp":
                value = _timestamp_sql(value, self.time_format_of(name))
            elif kind.name == "date":
                value = f"try_cast({value} AS DATE)"
            else:
                value = f"try_cast({value} AS {kind.ddl()})"
            if spec.to is not None:
                value = self._converted_sql(name, spec, value, parsed)
            if spec.round is not None:
                value = f"round({value}, {spec.round})"
            expressions.append(f"{value} AS `{name}`")
        return expressions

    def _converted_sql(self, name: str, spec: FieldSpec, value: str, parsed: str) -> str:
        assert spec.to is not None
        try:
            if spec.unit is not None:
                scale, offset = affine(spec.unit, spec.to)
                return f"({value} * {scale!r} + {offset!r})"
            if not spec.units:
                raise ConfigError(
                    f"payload field {name!r}: declare `units` (the payload's spellings) for Spark to convert"
                )
            assert spec.unit_path is not None
            unit = f"lower(trim({_sql_column(parsed, parse_path(spec.unit_path))}))"
            cases = []
            for spelling, pint_name in spec.units.items():
                scale, offset = affine(pint_name, spec.to)
                cases.append(
                    f"WHEN {_sql_literal(spelling.strip().lower())} THEN {value} * {scale!r} + {offset!r}"
                )
            return f"(CASE {unit} {' '.join(cases)} END)"
        except ValueError as exc:
            raise ConfigError(f"payload field {name!r}: {exc}") from None

    # -- Python ---------------------------------------------------------------------------------------

    def reader(self) -> PayloadReader:
        """A compiled reader of this declaration (units resolved with pint).

        Raises:
            ConfigError: a unit pint does not know, or one that does not convert to ``to``.
        """
        return PayloadReader(self)

    def normalised(
        self, after_identity: Mapping[str, FieldSpec], at_end: Mapping[str, FieldSpec]
    ) -> PayloadSpec:
        """The declaration of the records a connector writes after reading this payload: identity first,
        then ``after_identity`` (e.g. when it was received), the other fields, then ``at_end``; paths are the
        names, timestamps ISO-8601, units already converted.

        Raises:
            ValueError: an added field has the name of a declared one.
        """
        clash = sorted(set(self.fields) & (set(after_identity) | set(at_end)))
        if clash:
            raise ValueError(f"payload fields {clash} clash with the fields the connector adds")

        def plain(name: str, spec: FieldSpec) -> FieldSpec:
            kind = spec.sql_type
            return FieldSpec(
                path=format_path((name,)),
                type=spec.type,
                description=spec.description,
                required=spec.required,
                min=spec.min,
                max=spec.max,
                time_format="iso8601" if kind.name == "timestamp" else None,
            )

        ordered: dict[str, FieldSpec] = {name: plain(name, self.fields[name]) for name in self.identity}
        ordered.update(after_identity)
        ordered.update({n: plain(n, s) for n, s in self.fields.items() if n not in self.identity})
        ordered.update(at_end)
        return PayloadSpec(
            fields=ordered,
            key=self.key,
            sequence=self.sequence,
            event_time=self.event_time,
            time_format="iso8601",
            earliest=self.earliest,
            latest=self.latest,
            undeclared="keep",
            extra_field=self.extra_field,
        )


def _sql_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _timestamp_sql(value: str, time_format: TimeFormat) -> str:
    if time_format == "epoch_ms":
        return f"timestamp_millis(try_cast({value} AS BIGINT))"
    if time_format == "epoch_s":
        return f"timestamp_micros(try_cast(try_cast({value} AS DOUBLE) * 1000000 AS BIGINT))"
    if time_format == "iso8601":
        return f"try_to_timestamp({value})"
    number = f"try_cast({value} AS DOUBLE)"
    return (
        f"CASE WHEN {value} RLIKE '^-?[0-9]+([.][0-9]+)?$' THEN "
        f"CASE WHEN abs({number}) < {_EPOCH_SECONDS_BELOW} "
        f"THEN timestamp_micros(try_cast({number} * 1000000 AS BIGINT)) "
        f"ELSE timestamp_millis(try_cast({number} AS BIGINT)) END "
        f"ELSE try_to_timestamp({value}) END"
    )


# --- reading in Python --------------------------------------------------------------------------------------


def iso_millis(moment: datetime) -> str:
    """``2024-11-01T10:00:00.000Z``: UTC, millisecond precision, ``Z`` suffix."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _Mismatch(Exception):
    """A value of the wrong type (the caller knows which reason that is)."""


@dataclass(frozen=True)
class PayloadRecord:
    """One payload read by its declaration: the typed fields (declaration order) and what it did not name."""

    values: dict[str, Any]
    extra: dict[str, Any] | None

    def key(self, fields: Iterable[str]) -> str:
        """The message key: the key fields' values joined by ``/``."""
        return "/".join(str(self.values[name]) for name in fields)


def _plain(value: Any) -> Any:
    """JSON-ready: Decimals (how numbers are parsed) back to int/float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _tree(paths: Iterable[Path]) -> dict[str, Any]:
    """Consumed paths as a tree: a segment maps to True (consumed whole) or to the consumed parts below."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for segment in path[:-1]:
            child = node.get(segment)
            if child is True:
                break
            node = node.setdefault(segment, {})
        else:
            node[path[-1]] = True
    return tree


def _remaining(node: dict[str, Any], consumed: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        below = consumed.get(key)
        if below is True:
            continue
        if below is None or not isinstance(value, dict):
            out[key] = value
            continue
        rest = _remaining(value, below)
        if rest:
            out[key] = rest
    return out


class PayloadReader:
    """A :class:`PayloadSpec` compiled for reading many payloads (paths parsed, units resolved)."""

    def __init__(self, spec: PayloadSpec) -> None:
        self.spec = spec
        self._paths = {name: field.paths(name) for name, field in spec.fields.items()}
        self._unit_paths = {
            name: parse_path(field.unit_path) for name, field in spec.fields.items() if field.unit_path
        }
        self._consumed = _tree([*(p for ps in self._paths.values() for p in ps), *self._unit_paths.values()])
        self._earliest = datetime.combine(spec.earliest, datetime.min.time(), UTC)
        self._latest = datetime.combine(spec.latest, datetime.min.time(), UTC)
        self._fixed: dict[str, Callable[[float], float]] = {}
        self._spelled: dict[str, dict[str, Callable[[float], float]]] = {}
        for name, field in spec.fields.items():
            if field.to is None:
                continue
            try:
                if field.unit is not None:
                    self._fixed[name] = unit_converter(field.unit, field.to)
                else:
                    unit_converter(field.to, field.to)
                    self._spelled[name] = {
                        spelling.strip().lower(): unit_converter(unit, field.to)
                        for spelling, unit in field.units.items()
                    }
            except ValueError as exc:
                raise ConfigError(f"payload field {name!r}: {exc}") from None
        self._others = [name for name in spec.fields if name not in spec.identity]
        self._types = {name: field.sql_type for name, field in spec.fields.items()}

    def read(self, payload: bytes) -> PayloadRecord:
        """Read one payload (bytes of JSON).

        Raises:
            PayloadError: the payload breaks the declaration (its reason names the rule).
        """
        try:
            # Strict UTF-8 first: json.loads of bytes lets encoded surrogates through ('surrogatepass').
            document = json.loads(payload.decode("utf-8"), parse_float=Decimal)
        except (UnicodeDecodeError, ValueError) as exc:
            raise PayloadError("not_json", str(exc)) from None
        except RecursionError:  # thousands of nested brackets: Python's parser gives up, the record is kept
            raise PayloadError("not_json", f"nested too deeply to read ({len(payload)} bytes)") from None
        return self.read_document(document)

    def read_document(self, document: Any) -> PayloadRecord:
        """Read one parsed JSON document (numbers may be Decimal or float)."""
        if not isinstance(document, dict):
            raise PayloadError("not_an_object", f"a JSON {type(document).__name__}, not an object")
        spec = self.spec
        raw = {name: self.find(document, name) for name in spec.fields}
        values: dict[str, Any] = {}
        for name in spec.key:
            values[name] = self._identity(name, raw[name], blank_is_missing=True)
        if spec.sequence is not None:
            values[spec.sequence] = self._identity(spec.sequence, raw[spec.sequence], blank_is_missing=False)
        if spec.event_time is not None:
            moment = raw[spec.event_time]
            if moment is None:
                raise PayloadError(
                    "invalid_timestamp", f"no {spec.event_time} ({self._shown(spec.event_time)})"
                )
            values[spec.event_time] = self._timestamp(spec.event_time, moment)
        numbers: dict[str, Any] = {}
        for name in self._others:  # types first, then units, then ranges: the first rule broken is named
            field = spec.fields[name]
            value = raw[name]
            if value is None:
                if field.required:
                    raise PayloadError(f"missing_{name}", f"no {self._shown(name)}")
                values[name] = None
                continue
            kind = self._types[name]
            if kind.name == "timestamp":
                values[name] = self._timestamp(name, value)
                continue
            try:
                values[name] = self._typed(value, kind)
            except _Mismatch as exc:
                raise PayloadError("invalid_value", f"{name}={_show(value)}: {exc}") from None
            if kind.numeric:
                numbers[name] = values[name]
        for name, value in numbers.items():
            field = spec.fields[name]
            if field.to is not None:
                values[name] = self._convert(name, document, value)
        for name in numbers:
            field = spec.fields[name]
            value = values[name]
            if field.round is not None and not isinstance(value, str):
                value = values[name] = round(value, field.round)
            number = float(value)
            if (field.min is not None and number < field.min) or (
                field.max is not None and number > field.max
            ):
                raise PayloadError(
                    "out_of_range", f"{name}={value} outside [{_bound(field.min)}, {_bound(field.max)}]"
                )
        extra = _remaining(document, self._consumed) or None
        if extra and spec.undeclared == "dead_letter":
            raise PayloadError("undeclared_field", f"undeclared values {sorted(extra)}")
        return PayloadRecord({name: values[name] for name in spec.fields}, _plain(extra) if extra else None)

    # -- helpers --------------------------------------------------------------------------------------

    def _shown(self, name: str) -> str:
        return " or ".join(format_path(p) for p in self._paths[name])

    def find(self, document: dict[str, Any], name: str) -> Any:
        """The raw value of field ``name`` in a document: the first of its paths that holds a value."""
        nulls = self.spec.fields[name].null_values
        for path in self._paths[name]:
            value = lookup(document, path)
            if value is not None and not (nulls and isinstance(value, str) and value in nulls):
                return value
        return None

    def _identity(self, name: str, value: Any, *, blank_is_missing: bool) -> Any:
        field = self.spec.fields[name]
        if value is None or (blank_is_missing and isinstance(value, str) and not value.strip()):
            raise PayloadError(f"missing_{name}", f"{self._shown(name)}={_show(value)}")
        kind = self._types[name]
        try:
            if kind.name == "timestamp":
                return self._timestamp(name, value)
            typed = self._typed(value, kind)
        except (_Mismatch, PayloadError) as exc:
            raise PayloadError(f"invalid_{name}", f"{name}={_show(value)}: {exc}") from None
        if kind.numeric:
            number = float(typed)
            if (field.min is not None and number < field.min) or (
                field.max is not None and number > field.max
            ):
                raise PayloadError(
                    f"invalid_{name}", f"{name}={typed} outside [{_bound(field.min)}, {_bound(field.max)}]"
                )
        return typed

    def _typed(self, value: Any, kind: SqlType) -> Any:
        name = kind.name
        if name == "string":
            if not isinstance(value, str):
                raise _Mismatch(f"a {_json_kind(value)}, not a string")
            return value
        if name == "boolean":
            if not isinstance(value, bool):
                raise _Mismatch(f"a {_json_kind(value)}, not a boolean")
            return value
        if name in _INTEGER_BITS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _Mismatch(f"a {_json_kind(value)}, not an integer")
            bits = _INTEGER_BITS[name]
            if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
                raise _Mismatch(f"does not fit a {name}")
            return value
        if name in {"double", "float"}:
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                raise _Mismatch(f"a {_json_kind(value)}, not a number")
            number = float(value)
            if not math.isfinite(number):
                raise _Mismatch("not a finite number")
            return number
        if name == "decimal":
            return self._decimal(value, kind)
        if name == "date":
            if not isinstance(value, str):
                raise _Mismatch(f"a {_json_kind(value)}, not an ISO-8601 date")
            try:
                return date.fromisoformat(value.strip()).isoformat()
            except ValueError:
                raise _Mismatch("not an ISO-8601 date (YYYY-MM-DD)") from None
        if name == "array":
            assert kind.element is not None
            if not isinstance(value, list):
                raise _Mismatch(f"a {_json_kind(value)}, not an array")
            element = kind.element
            return [None if item is None else self._typed(item, element) for item in value]
        if name == "map":
            assert kind.element is not None
            if not isinstance(value, dict):
                raise _Mismatch(f"a {_json_kind(value)}, not an object")
            element = kind.element
            return {k: None if v is None else self._typed(v, element) for k, v in value.items()}
        raise _Mismatch(f"values of type {name} are read as timestamps")  # pragma: no cover

    @staticmethod
    def _decimal(value: Any, kind: SqlType) -> str:
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
            raise _Mismatch(f"a {_json_kind(value)}, not a number")
        try:
            number = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
        except InvalidOperation:
            raise _Mismatch("not a decimal number") from None
        if not number.is_finite():
            raise _Mismatch("not a finite number")
        quantized = number.quantize(Decimal(1).scaleb(-kind.scale), rounding=ROUND_HALF_UP)
        if len(quantized.as_tuple().digits) > kind.precision and quantized != 0:
            raise _Mismatch(f"has more than {kind.precision} digits")
        return str(quantized)

    def _timestamp(self, name: str, value: Any) -> str:
        time_format = self.spec.time_format_of(name)
        moment: datetime | None = None
        if isinstance(value, bool):
            moment = None
        elif isinstance(value, int | float | Decimal) and time_format != "iso8601":
            number = float(value)
            if math.isfinite(number):
                if time_format == "epoch_ms" or (
                    time_format == "auto" and abs(number) >= _EPOCH_SECONDS_BELOW
                ):
                    number /= 1000
                moment = self._from_epoch(number)
        elif isinstance(value, str) and value.strip() and time_format in {"iso8601", "auto"}:
            try:
                moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                moment = None
            else:
                moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        if moment is None:
            raise PayloadError("invalid_timestamp", f"{name}={_show(value)} is not a {time_format} time")
        if not self._earliest <= moment < self._latest:
            raise PayloadError(
                "invalid_timestamp",
                f"{name}={_show(value)} is outside {self.spec.earliest}..{self.spec.latest}",
            )
        return iso_millis(moment)

    @staticmethod
    def _from_epoch(seconds: float) -> datetime | None:
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None

    def _convert(self, name: str, document: dict[str, Any], value: Any) -> float:
        fixed = self._fixed.get(name)
        if fixed is not None:
            return fixed(float(value))
        spelled = lookup(document, self._unit_paths[name])
        options = self._spelled[name]
        convert: Callable[[float], float] | None = None
        if isinstance(spelled, str) and spelled.strip():
            if options:
                convert = options.get(spelled.strip().lower())
            else:
                target = self.spec.fields[name].to
                assert target is not None
                try:
                    convert = unit_converter(spelled.strip(), target)
                except ValueError:
                    convert = None
        if convert is None:
            accepted = f" (accepted: {', '.join(self.spec.fields[name].units)})" if options else ""
            raise PayloadError("unknown_unit", f"{name} unit {_show(spelled)}{accepted}")
        return convert(float(value))


def _bound(value: float | None) -> str:
    return "…" if value is None else f"{value:g}"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: Any) -> str:
    text = json.dumps(_plain(value), default=str)
    return text if len(text) <= 80 else text[:77] + "..."
