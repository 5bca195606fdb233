"""A topic-to-topic processor, declared on a Kafka source (``sources.yaml``, section ``processor``).

The processor consumes the source's topic, dead-letters a record that breaks one of its ``require`` rules
(with the rule's reason), adds the ``derive`` fields to the others and produces them to ``topic``. A derived
field is a ``lookup`` (one field's value through a ``map``) or the first matching of its ``cases``. Every
comparison of text is case-insensitive. Example (shipments: a carrier's region, and a speed class)::

    processor:
      topic: shipments.enriched
      dead_letter_topic: shipments.dlq
      require:
        - {reason: missing_shipment_id, field: shipment_id, present: true}
        - {reason: unknown_carrier, field: carrier.code, in: [dhl, ups, fedex]}
      derive:
        region: {lookup: destination.country, map: {de: emea, us: north_america}, default: other}
        speed:
          default: standard
          cases:
            - {value: express, when: [{field: service, in: [next_day, same_day]}]}
            - {value: freight, when: [{any: [{field: weight_kg, above: 1000}, {field: pallets, above: 0}]}]}

Nothing here imports Spark or Kafka: the declaration is checked with the registry, and applied to one record
at a time by :mod:`lakehouse.streaming.processors`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REASON = re.compile(r"^[a-z][a-z0-9_:.-]*$")

Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Condition(_Model):
    """One test of a record: a field (a dotted path into the JSON) against ``in``, ``contains``, ``above``
    or ``present``; or ``any`` of several conditions.

    ``in`` holds when the value is one of the listed ones; ``contains`` when the text value contains one of
    the listed texts; ``above`` when the number is greater; ``present: true`` when the field is there and not
    blank (``false``: absent or blank). A field that is missing fails every test but ``present: false``.
    """

    field: str | None = None
    in_: list[Scalar] | None = Field(None, alias="in")
    contains: list[str] | None = None
    above: float | None = None
    present: bool | None = None
    any: list[Condition] | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [t for t in (self.in_, self.contains, self.above, self.present) if t is not None]
        if self.any is not None:
            if self.field is not None or tests:
                raise ValueError("any: holds conditions of its own; give it no field or test")
            if not self.any:
                raise ValueError("any: needs at least one condition")
            return self
        if self.field is None or not all(_NAME.match(p) for p in self.field.split(".")):
            raise ValueError(f"a condition needs field: a dotted path of names (got {self.field!r})")
        if len(tests) != 1:
            raise ValueError(f"condition on {self.field}: give exactly one of in, contains, above, present")
        return self

    def path(self) -> list[str]:
        return (self.field or "").split(".")


class Requirement(Condition):
    """A rule every record must keep; a record that breaks it is dead-lettered with ``reason``."""

    reason: str

    @model_validator(mode="after")
    def _reason_name(self) -> Requirement:
        if not _REASON.match(self.reason):
            raise ValueError(f"reason {self.reason!r} must be lower_snake_case")
        return self


class Case(_Model):
    """``value`` when every condition of ``when`` holds."""

    value: Scalar
    when: list[Condition] = Field(min_length=1)


class Derived(_Model):
    """A field the processor adds: a ``lookup`` of one field's value in ``map``, or the first of ``cases``
    that holds; ``default`` otherwise (null when not given)."""

    lookup: str | None = None
    map: dict[str, Scalar] = Field(default_factory=dict)
    cases: list[Case] = Field(default_factory=list)
    default: Scalar | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Derived:
        if (self.lookup is None) == (not self.cases):
            raise ValueError("a derived field is either lookup (with map) or cases")
        if self.lookup is not None and not self.map:
            raise ValueError(f"lookup of {self.lookup} needs map: the values it turns into")
        return self


class ProcessorSpec(_Model):
    """The ``processor`` section of a Kafka source: where enriched and dead-lettered records go, and how.

    ``key`` names the field whose value keys a produced record that arrived without a key. ``stamp`` names
    the field that gets the processing time (epoch ms; null: none). ``group_id`` defaults to
    ``lakehouse-processor-<source>``.
    """

    topic: str = Field(min_length=1)
    dead_letter_topic: str = Field(min_length=1)
    group_id: str | None = None
    key: str | None = None
    require: list[Requirement] = Field(default_factory=list)
    derive: dict[str, Derived] = Field(default_factory=dict)
    stamp: str | None = "processed_at"

    @model_validator(mode="after")
    def _distinct(self) -> ProcessorSpec:
        if self.topic == self.dead_letter_topic:
            raise ValueError("topic and dead_letter_topic must differ")
        reasons = [r.reason for r in self.require]
        if len(set(reasons)) != len(reasons):
            raise ValueError(f"duplicate require reasons {reasons}")
        bad = [name for name in self.derive if not _NAME.match(name)]
        if bad:
            raise ValueError(f"derived field names {bad} must be plain names")
        return self


def value_at(record: dict[str, Any], path: list[str]) -> Any:
    """The value at a dotted path of a JSON object (None when any step is missing or not an object)."""
    value: Any = record
    for step in path:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def _same(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def holds(condition: Condition, record: dict[str, Any]) -> bool:
    """Whether ``condition`` holds for the JSON object ``record`` (text compared case-insensitively).

    Example:
        >>> holds(Condition(field="device.os", contains=["pad"]), {"device": {"os": "iPadOS"}})
        True
    """
    if condition.any is not None:
        return any(holds(c, record) for c in condition.any)
    value = value_at(record, condition.path())
    if condition.present is not None:
        there = value is not None and not (isinstance(value, str) and not value.strip())
        return there == condition.present
    if value is None or isinstance(value, dict | list):
        return False
    if condition.in_ is not None:
        # bool is an int to Python: true must not match 1
        kind = isinstance(value, bool)
        return any(_same(value) == _same(v) and kind == isinstance(v, bool) for v in condition.in_)
    if condition.contains is not None:
        return isinstance(value, str) and any(
            part.casefold() in value.casefold() for part in condition.contains
        )
    assert condition.above is not None
    return isinstance(value, int | float) and not isinstance(value, bool) and value > condition.above


def derive(spec: Derived, record: dict[str, Any]) -> Scalar | None:
    """The value of a derived field for ``record``."""
    if spec.lookup is not None:
        value = value_at(record, spec.lookup.split("."))
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            folded = {str(k).casefold(): v for k, v in spec.map.items()}
            found = folded.get(str(value).strip().casefold())
            if found is not None:
                return found
        return spec.default
    for case in spec.cases:
        if all(holds(c, record) for c in case.when):
            return case.value
    return spec.default
