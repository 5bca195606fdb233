"""Small JSON state files (extract positions, HTTP cursors, the device registry, continuous-mode status).

One way to write them: the document goes to a temporary file in the same folder, is flushed to disk
(``fsync``), renamed over the old file and the folder is synced, so a crash leaves either the old state or the
new one, never half of either. Reads are typed: :func:`read_state` validates the document into the model a
module declares, and a damaged file is a :class:`~lakehouse.errors.DataError` that says what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
