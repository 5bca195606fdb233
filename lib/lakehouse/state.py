"""Small JSON state files (extract positions, HTTP cursors, the device registry, continuous-mode status).

One way to write them: the document goes to a temporary file in the same folder, is flushed to disk
(``fsync``), renamed over the old file and the folder is synced, so a crash leaves either the old state or the
new one, never half of either. Reads are typed: :func:`read_state` validates the document into the model a
module declares, and a damaged file is a :class:`~lakehouse.errors.DataError` that says what to do.

Values JSON has no type for (a timestamp, a decimal, a UUID — a position an extract must resume from
exactly) are kept as ``{"type": ..., "value": <exact text>}`` by :func:`encode_typed` and read back as the
same Python value by :func:`decode_typed`.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, TypeVar

from pydantic import TypeAdapter, ValidationError

from lakehouse.errors import DataError

T = TypeVar("T")


def write_json(
    path: Path, document: Any, *, indent: int | None = 2, default: Callable[[Any], Any] = str
) -> None:
    """Replace ``path`` with ``document`` as JSON, atomically and durably.

    Args:
        path: the state file (its folder is created when missing).
        document: anything ``json.dumps`` takes; values it cannot encode go through ``default``.
        indent: JSON indentation (None: one line).
        default: how to encode values JSON has no type for (``str`` by default: datetimes, decimals, UUIDs).

    Example:
        >>> write_json(Path("/tmp/example-state.json"), {"cursor": "2024-10-01"})  # doctest: +SKIP
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=indent, default=default)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def read_json(path: Path) -> Any | None:
    """The JSON document in ``path`` (None when the file does not exist).

    Raises:
        DataError: the file exists but is not JSON.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(f"the state file {path} is not valid JSON ({exc}): fix or delete it") from exc


def read_state(path: Path, model: type[T], *, what: str = "state file") -> T | None:
    """The document in ``path`` validated as ``model`` (a dataclass, pydantic model or typed dict).

    Args:
        path: the state file.
        model: the type the owning module writes.
        what: how the message names the file (e.g. "the extract state").

    Returns:
        The typed state, or None when the file does not exist yet.

    Raises:
        DataError: the file is not JSON or not a ``model`` (the message names the file and the problem).
    """
    document = read_json(path)
    if document is None:
        return None
    try:
        return TypeAdapter(model).validate_python(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(document)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise DataError(
            f"{what} {path} is damaged ({problems}): delete it to start from the beginning"
        ) from exc


TYPED_VALUE_TYPES: Final = (
    "bool",
    "int",
    "numeric",
    "float",
    "text",
    "uuid",
    "date",
    "timestamp",
    "timestamptz",
)


def encode_typed(value: object) -> dict[str, str]:
    """A value as ``{"type": <type>, "value": <text>}``: the text holds it exactly, the type how to read it.

    Types: ``bool``, ``int``, ``numeric`` (Decimal, scale kept), ``float`` (shortest round-trip text),
    ``text``, ``uuid``, ``date``, ``timestamp`` (naive datetime) and ``timestamptz`` (aware datetime, its
    offset kept), all to the microsecond.

    Raises:
        DataError: the value has none of these types (the message names the type).

    Example:
        >>> encode_typed(datetime(2024, 1, 1, 0, 0, 0, 123456))
        {'type': 'timestamp', 'value': '2024-01-01T00:00:00.123456'}
        >>> decode_typed(encode_typed(Decimal("1.50")))
        Decimal('1.50')
    """
    if isinstance(value, bool):
        return {"type": "bool", "value": "true" if value else "false"}
    if isinstance(value, int):
        return {"type": "int", "value": str(value)}
    if isinstance(value, Decimal):
        return {"type": "numeric", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "value": repr(value)}
    if isinstance(value, str):
        return {"type": "text", "value": value}
    if isinstance(value, uuid.UUID):
        return {"type": "uuid", "value": str(value)}
    if isinstance(value, datetime):  # before date: a datetime is a date
        kind = "timestamp" if value.tzinfo is None else "timestamptz"
        return {"type": kind, "value": value.isoformat()}
    if isinstance(value, date):
        return {"type": "date", "value": value.isoformat()}
    known = ", ".join(TYPED_VALUE_TYPES)
    raise DataError(f"cannot keep a {type(value).__name__} in a state file (types: {known})")


def decode_typed(document: object) -> Any:
    """The value :func:`encode_typed` wrote (``{"type": ..., "value": ...}``), as the same Python type.

    Raises:
        DataError: the document is not a typed value, or its text is not a value of its type.
    """
    if (
        not isinstance(document, dict)
        or set(document) != {"type", "value"}
        or not isinstance(document["value"], str)
    ):
        raise DataError(f"{document!r} is not a typed value ({{'type': ..., 'value': '<text>'}})")
    kind, text = document["type"], document["value"]
    try:
        if kind == "bool" and text in ("true", "false"):
            return text == "true"
        if kind == "int":
            return int(text)
        if kind == "numeric":
            return Decimal(text)
        if kind == "float":
            return float(text)
        if kind == "text":
            return text
        if kind == "uuid":
            return uuid.UUID(text)
        if kind == "date":
            return date.fromisoformat(text)
        if kind in ("timestamp", "timestamptz"):
            value = datetime.fromisoformat(text)
            if (value.tzinfo is None) != (kind == "timestamp"):
                raise ValueError(f"a {kind} {'has no' if kind == 'timestamptz' else 'has a'} UTC offset")
            return value
    except (ValueError, InvalidOperation) as exc:
        raise DataError(f"{text!r} is not a {kind} ({exc})") from exc
    raise DataError(f"{document!r} has an unknown type (known: {', '.join(TYPED_VALUE_TYPES)})")
