"""A seeded corpus of hostile payloads for a declared JSON source, each tagged with its category.

The fuzzer starts from valid records of the source (the simulator's, or a sample of the user's own) and
breaks them the ways real producers do, guided by the source's payload declaration (``sources.yaml``,
:class:`~lakehouse.contracts.payload.PayloadSpec`): which fields are the key, which is the event time,
which are text and which are numbers. Nothing here knows a demo field. The same seed gives the same
corpus, so a failure is replayed by its seed and index.

Every case says its :data:`CATEGORIES` entry; what a pipeline must do with each category (land in silver,
quarantine with a reason, count as a duplicate) is the caller's expectation
(``tests/data/fuzz/<source>.yaml``): whatever the category, an input is never lost and never stops a task.

Example:
    >>> from lakehouse.contracts.payload import PayloadSpec
    >>> fields = {"id": {}, "at": {"type": "timestamp"}, "n": {"type": "double"}}
    >>> spec = PayloadSpec.model_validate({"key": ["id"], "event_time": "at", "fields": fields})
    >>> cases = corpus([{"id": "a", "at": "2026-01-01T00:00:00Z", "n": 1.5}], spec, count=40, seed=1)
    >>> len(cases), len({c.category for c in cases}) == len(CATEGORIES)
    (40, True)
"""

from __future__ import annotations

import copy
import json
import random
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from lakehouse.contracts.payload import PayloadSpec
from lakehouse.contracts.payload import lookup as _get
from lakehouse.errors import ConfigError

Path = tuple[str, ...]
Record = dict[str, Any]

# The categories, in the order a corpus cycles through them.
CATEGORIES: Final = (
    "valid",  # a valid record as it is
    "extra_fields",  # schema drift: fields nobody declared, one of them nested
    "exact_duplicate",  # a re-delivery: the same bytes as an earlier valid record
    "conflicting_duplicate",  # an earlier valid record's key with other content
    "not_json",  # text that is not JSON
    "truncated_json",  # a valid record cut short
    "empty",  # no bytes at all
    "not_an_object",  # JSON, but an array, a string, a number or null
    "invalid_utf8",  # bytes that are not UTF-8 inside a valid record
    "missing_key",  # the key field left out
    "null_values",  # every declared field null
    "wrong_types",  # objects where text is declared, text where numbers are, a time that is no time
    "absurd_time",  # event times of 10^30 ms, 2099, 1900, negative
    "number_extremes",  # NaN, Infinity, -1e308, 1e400 in number fields
    "hostile_text",  # NUL, control and bidi characters, SQL, markup, lone surrogates, 10k-char text
    "huge_value",  # a ~900 KB text field (under Kafka's 1 MB message limit)
    "deep_nesting",  # 5,000 levels of nested arrays in an undeclared field
)
HUGE_BYTES: Final = 900_000
DEEP: Final = 5_000


@dataclass(frozen=True)
class FuzzCase:
    """One input: its category, the Kafka key and value bytes, and its place in the corpus."""

    index: int
    category: str
    key: bytes | None
    value: bytes
    note: str = ""


def _set(record: Record, path: Path, value: Any) -> None:
    node = record
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _drop(record: Record, path: Path) -> None:
    node: Any = record
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


@dataclass(frozen=True)
class _Shape:
    """Where the declaration says things are, resolved against one valid record."""

    key: list[Path]
    time: list[Path]
    text: list[Path]
    numbers: list[Path]
    declared: list[Path]

    @classmethod
    def of(cls, spec: PayloadSpec, record: Record) -> _Shape:
        def present(name: str) -> Path | None:
            paths = spec.fields[name].paths(name)
            return next((p for p in paths if _get(record, p) is not None), None)

        key = [p for p in (present(k) for k in spec.key) if p is not None]
        time = [p for p in ([present(spec.event_time)] if spec.event_time else []) if p is not None]
        text, numbers, declared = [], [], []
        for name, field in spec.fields.items():
            path = present(name)
            if path is None:
                continue
            declared.append(path)
            kind = field.sql_type
            if kind.numeric:
                numbers.append(path)
            elif kind.name == "string" and path not in key:
                text.append(path)
        return cls(key=key, time=time, text=text, numbers=numbers, declared=declared)


_HOSTILE_TEXT: Final = (
    "nul\x00inside",
    "bell\x07 and escape \x1b[31m red",
    "\u202eevil-right-to-left\u202c",
    "'; DROP TABLE silver.events; --",
    "<script>alert(1)</script>",
    "\ud800 lone surrogate",
    "emoji \U0001f4a5 and zero\u200bwidth",
    "x" * 10_000,
    "",
    "   ",
)


def _instant(value: Any) -> datetime:
    """A time field's value (epoch s or ms, or ISO-8601) as an aware datetime (now when it is none)."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000 if value > 10**11 else value, UTC)
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _dumps(record: Any) -> bytes:
    # Python's json writes NaN/Infinity as bare tokens (not JSON): exactly what sloppy producers send. A lone
    # surrogate is written as its JSON escape (valid UTF-8 text that decodes to no character).
    return json.dumps(record, ensure_ascii=False, allow_nan=True).encode("utf-8", "backslashreplace")


class _Builder:
    def __init__(self, spec: PayloadSpec, valid: Sequence[Record], seed: int) -> None:
        if not valid:
            raise ConfigError("the fuzzer needs at least one valid record to break")
        if not all(isinstance(r, dict) for r in valid):
            raise ConfigError("the fuzzer's valid records must be JSON objects")
        self.spec, self.valid, self.rng = spec, list(valid), random.Random(seed)
        self.sent: list[tuple[bytes | None, bytes, Record]] = []  # valid cases so far: key, value, record
        self.serial = 0
        self.start: datetime | None = None

    def _record(self) -> Record:
        """A fresh valid record: a template with its key made unique and its event time a second after the
        previous record's (a valid stream is in order: lateness is not what a category tests)."""
        record = copy.deepcopy(self.rng.choice(self.valid))
        self.serial += 1
        shape = _Shape.of(self.spec, record)
        for path in shape.key:
            _set(record, path, f"{_get(record, path)}-fz{self.serial}")
        for path in shape.time:
            _set(record, path, self._clock(_get(record, path)))
        return record

    def _clock(self, template: Any) -> Any:
        """The corpus clock (a second per record from the first template time), in the template form."""
        if self.start is None:
            self.start = _instant(self.valid_time())
        moment = self.start + timedelta(seconds=self.serial)
        if isinstance(template, int | float):
            return int(moment.timestamp() * 1000) if template > 10**11 else int(moment.timestamp())
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def valid_time(self) -> Any:
        for record in self.valid:
            for path in _Shape.of(self.spec, record).time:
                return _get(record, path)
        return None

    def _key(self, record: Record) -> bytes | None:
        parts = [_get(record, p) for p in _Shape.of(self.spec, record).key]
        return (
            "|".join(str(p) for p in parts).encode("utf-8", "backslashreplace")
            if parts and None not in parts
            else None
        )

    def case(self, category: str) -> tuple[bytes | None, bytes, str]:
        make: Callable[[], tuple[bytes | None, bytes, str]] = getattr(self, f"_{category}")
        return make()

    def _valid(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        value = _dumps(record)
        self.sent.append((self._key(record), value, record))
        return self._key(record), value, ""

    def _extra_fields(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        record["fuzz_new_field"] = self.rng.randint(0, 10**6)
        record["fuzz_nested"] = {"a": [1, {"b": None}], "c": "d"}
        value = _dumps(record)
        self.sent.append((self._key(record), value, record))
        return self._key(record), value, ""

    def _earlier(self) -> tuple[bytes | None, bytes, Record]:
        if not self.sent:
            self._valid()
        return self.rng.choice(self.sent)

    def _exact_duplicate(self) -> tuple[bytes | None, bytes, str]:
        key, value, _ = self._earlier()
        return key, value, ""

    def _conflicting_duplicate(self) -> tuple[bytes | None, bytes, str]:
        key, _, record = self._earlier()
        changed = copy.deepcopy(record)
        shape = _Shape.of(self.spec, changed)
        if shape.time:  # a second later: same key, another time
            path = shape.time[0]
            current = _get(changed, path)
            if isinstance(current, int):
                _set(changed, path, current + 1000)
            else:
                moved = datetime.fromisoformat(str(current)) + timedelta(seconds=1)
                _set(changed, path, moved.isoformat().replace("+00:00", "Z"))
            return key, _dumps(changed), "/".join(path)
        path = self.rng.choice(shape.text or shape.numbers)
        _set(changed, path, f"{_get(changed, path)}-changed")
        return key, _dumps(changed), "/".join(path)

    def _not_json(self) -> tuple[bytes | None, bytes, str]:
        size = self.rng.randint(1, 200)
        text = "".join(self.rng.choice(string.printable) for _ in range(size))
        return None, ("{" + text if self.rng.random() < 0.5 else text).encode(), ""

    def _truncated_json(self) -> tuple[bytes | None, bytes, str]:
        value = _dumps(self._record())
        return None, value[: self.rng.randint(1, len(value) - 1)], ""

    def _empty(self) -> tuple[bytes | None, bytes, str]:
        return None, b"", ""

    def _not_an_object(self) -> tuple[bytes | None, bytes, str]:
        choice = self.rng.choice([[self._record()], "a string", 42, None, [], True])
        return None, _dumps(choice), type(choice).__name__

    def _invalid_utf8(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        shape = _Shape.of(self.spec, record)
        marker = "FUZZ-BAD-BYTES-MARKER"
        path = self.rng.choice(shape.text or shape.key)
        _set(record, path, f"{_get(record, path)}{marker}")
        bad = self.rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        value = _dumps(record).replace(marker.encode(), bad)
        key = self._key(record)
        return (key + b"\xfe" if key else b"\xfe"), value, "/".join(path)

    def _missing_key(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        for name in self.spec.key:
            for path in self.spec.fields[name].paths(name):
                _drop(record, path)
        return None, _dumps(record), ""

    def _null_values(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        key = self._key(record)
        for path in _Shape.of(self.spec, record).declared:
            _set(record, path, None)
        return key, _dumps(record), ""

    def _wrong_types(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        shape = _Shape.of(self.spec, record)
        key = self._key(record)
        targets = [("time", p) for p in shape.time] + [("number", p) for p in shape.numbers]
        targets += [("text", p) for p in shape.text]
        kind, path = self.rng.choice(targets)
        value: Any = {"text": {"nested": ["object"]}, "number": "forty-two", "time": "yesterday at noon"}[
            kind
        ]
        _set(record, path, value)
        return key, _dumps(record), f"{kind}:{'/'.join(path)}"

    def _absurd_time(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        shape = _Shape.of(self.spec, record)
        if not shape.time:
            return self._wrong_types()
        path = shape.time[0]
        numeric = isinstance(_get(record, path), int | float)
        choices: list[Any] = (
            [10**30, -1, 4_070_908_800_000, -2_208_988_800_000, 0]
            if numeric
            else [
                "2099-12-31T23:59:59Z",
                "1900-01-01T00:00:00Z",
                "9999-12-31T23:59:59Z",
                "0001-01-01T00:00:00Z",
            ]
        )
        absurd = self.rng.choice(choices)
        _set(record, path, absurd)
        return self._key(record), _dumps(record), str(absurd)

    def _number_extremes(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        shape = _Shape.of(self.spec, record)
        if not shape.numbers:
            return self._hostile_text()
        path = self.rng.choice(shape.numbers)
        extreme = self.rng.choice(["nan", "inf", "-inf", "-1e308", "1e400"])
        marker = "FUZZ-NUMBER-MARKER"
        _set(record, path, marker)
        token = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(extreme, extreme)
        value = _dumps(record).replace(f'"{marker}"'.encode(), token.encode())
        return self._key(record), value, f"{'/'.join(path)}={token}"

    def _hostile_text(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        shape = _Shape.of(self.spec, record)
        path = self.rng.choice(shape.text or shape.key)
        text = self.rng.choice(_HOSTILE_TEXT)
        _set(record, path, text)
        return self._key(record), _dumps(record), "/".join(path)

    def _huge_value(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        shape = _Shape.of(self.spec, record)
        path = self.rng.choice(shape.text) if shape.text else ("fuzz_huge",)
        _set(record, path, "h" * HUGE_BYTES)
        return self._key(record), _dumps(record), "/".join(path)

    def _deep_nesting(self) -> tuple[bytes | None, bytes, str]:
        record = self._record()
        marker = "FUZZ-DEEP-MARKER"
        record["fuzz_deep"] = marker
        value = _dumps(record).replace(f'"{marker}"'.encode(), b"[" * DEEP + b"1" + b"]" * DEEP)
        return self._key(record), value, ""


def corpus(
    valid: Iterable[Record],
    spec: PayloadSpec,
    *,
    count: int,
    seed: int = 7,
    categories: Sequence[str] = CATEGORIES,
    max_huge: int | None = None,
) -> list[FuzzCase]:
    """``count`` inputs cycling through ``categories`` (in a seeded shuffle), built from ``valid`` records.

    ``max_huge`` caps the ~900 KB inputs (the rest of their share becomes ``hostile_text``): a corpus of
    thousands would otherwise carry gigabytes.

    Raises:
        ConfigError: no valid record, an unknown category, or a count below one.
    """
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise ConfigError(f"unknown fuzz categories {unknown}; known: {', '.join(CATEGORIES)}")
    if count < 1:
        raise ConfigError(f"a corpus needs at least one input, got count={count}")
    builder = _Builder(spec, list(valid), seed)
    order = [categories[i % len(categories)] for i in range(count)]
    if max_huge is not None:
        huge = [i for i, category in enumerate(order) if category == "huge_value"]
        for i in huge[max_huge:]:
            order[i] = "hostile_text"
    builder.rng.shuffle(order)
    cases = []
    for index, category in enumerate(order):
        key, value, note = builder.case(category)
        cases.append(FuzzCase(index=index, category=category, key=key, value=value, note=note))
    return cases


def summary(cases: Iterable[FuzzCase]) -> dict[str, int]:
    """How many inputs of each category."""
    return dict(sorted(Counter(c.category for c in cases).items()))


def send(cases: Sequence[FuzzCase], *, bootstrap_servers: str, topic: str) -> list[tuple[int, int]]:
    """Produce the corpus to ``topic`` (acks=all) and return each case's (partition, offset), in order.

    Raises:
        ServiceError: no broker answers, or the broker refused a record.
    """
    from kafka.errors import KafkaError

    from lakehouse import kafka_clients
    from lakehouse.errors import ServiceError

    producer = kafka_clients.producer(
        bootstrap_servers, "lakehouse-fuzz", linger_ms=20, max_request_size=HUGE_BYTES + 200_000
    )
    try:
        futures = [producer.send(topic, key=c.key, value=c.value) for c in cases]
        producer.flush(timeout=120)
        placed = []
        for case, future in zip(cases, futures, strict=True):
            try:
                metadata = future.get(timeout=30)
            except KafkaError as exc:
                raise ServiceError(
                    f"Kafka at {bootstrap_servers} refused fuzz input {case.index} ({case.category}, "
                    f"{len(case.value)} bytes) on {topic}: {exc}"
                ) from exc
            placed.append((int(metadata.partition), int(metadata.offset)))
        return placed
    finally:
        producer.close(timeout=5)


def manifest(cases: Sequence[FuzzCase], placed: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """One JSON-able row per input: index, category, partition, offset, size and note (not the bytes)."""
    return [
        {
            "index": c.index,
            "category": c.category,
            "partition": p,
            "offset": o,
            "bytes": len(c.value),
            "note": c.note,
        }
        for c, (p, o) in zip(cases, placed, strict=True)
    ]
