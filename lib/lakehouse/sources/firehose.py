"""Buffered delivery into bronze — the role Kinesis Firehose plays in the seed architecture.

A :class:`DeliveryStream` takes records one at a time and appends them to a bronze Delta table in batches:
it flushes when the buffer holds ``flush_records`` records, when ``flush_seconds`` have passed since the
first record entered the buffer, and on :meth:`DeliveryStream.close`. The time rule is checked on every
:meth:`~DeliveryStream.put` and :meth:`~DeliveryStream.poll` (the connector polls after every page), so a
slow source still lands its records at most about ``flush_seconds`` late; there is no background thread.

Writes go through delta-rs (``write_deltalake``, append): no JVM in the pull path. Each bronze row keeps the
raw record as JSON plus ingest metadata (:data:`BRONZE_HTTP`). The ``dedupe_key`` is built from the
source's ``key`` fields; a record whose key is already in the table or in the buffer is counted as a
duplicate and not written again, so re-pulling a page never lands it twice. (The keys of the table are read
once, on the first put: one stream per table at a time — the DAG runs the pulls serially.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse import arrow_lake
from lakehouse.errors import DataError, ServiceError

log = logging.getLogger(__name__)

# Bronze for HTTP sources: the raw record plus where and when it was fetched, and the flush that wrote it.
BRONZE_HTTP: Final = pa.schema(
    [
        pa.field("record", pa.string(), nullable=False),
        pa.field("dedupe_key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("request_url", pa.string(), nullable=False),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
    ]
)

FlushReason = Literal["size", "time", "close"]
Writer = Callable[[str, pa.Table], int]


def delta_append(path: str, table: pa.Table) -> int:
    """Append ``table`` to the Delta table at ``path`` (created on first write); returns the new version.

    Raises:
        ServiceError: delta-rs could not write (the message names the path).
    """
    try:
        write_deltalake(path, table, mode="append")
        return int(DeltaTable(path).version())
    except (DeltaError, OSError) as exc:
        raise ServiceError(
            f"appending {table.num_rows} rows to the Delta table at {path} failed: {exc}"
        ) from exc


def existing_keys(path: str) -> set[str]:
    """The ``dedupe_key`` values already in the bronze table at ``path`` (empty when there is no table)."""
    try:
        table = DeltaTable(path)
    except TableNotFoundError:
        return set()
    keys = arrow_lake.read(table, ["dedupe_key"]).column("dedupe_key")
    return {str(key) for key in keys.to_pylist()}


def dedupe_key(record: Mapping[str, Any], key_fields: Sequence[str]) -> str:
    """The identity of a record: its key fields' values joined by ``|`` (e.g. ``"2024-11-01|USD"``).

    Without key fields, the SHA-256 of the record's canonical JSON (identical records are duplicates).

    Raises:
        DataError: a key field is missing or null (such records belong in the dead-letter list).
    """
    if not key_fields:
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()
    values = []
    for name in key_fields:
        value = record.get(name)
        if value is None:
            raise DataError(f"record has no value for key field {name!r}: {dict(record)!r}")
        values.append(str(value))
    return "|".join(values)


@dataclass(frozen=True)
class FlushReport:
    """One flush: why it happened, what it wrote and what it dropped as duplicates."""

    batch_id: str
    reason: FlushReason
    written: int
    duplicates: int
    table_version: int | None


@dataclass
class _Buffered:
    record: str
    key: str
    url: str
    fetched_at: datetime


@dataclass
class DeliveryStream:
    """Buffer records and append them to a bronze Delta table on size, on time and on close.

    Args:
        table: the bronze table's path.
        source: the source name stored on every row.
        key_fields: the record fields that identify a record (the registry's ``key``).
        flush_records: flush when the buffer holds this many records.
        flush_seconds: flush when the oldest buffered record has waited this long.
        clock: a monotonic clock in seconds (injectable: tests pass a fake one).
        writer: how a batch is written (default :func:`delta_append`); returns the table version.

    Example:
        >>> with DeliveryStream(path, "fx_rates", ["date", "currency"], 500, 5.0) as stream:  # doctest: +SKIP
        ...     stream.put({"date": "2024-11-01", "currency": "USD", "rate_per_eur": 1.0866}, url=url)
    """

    table: str
    source: str
    key_fields: Sequence[str]
    flush_records: int = 500
    flush_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    writer: Writer = delta_append
    reports: list[FlushReport] = field(default_factory=list, init=False)
    _buffer: list[_Buffered] = field(default_factory=list, init=False, repr=False)
    _keys: set[str] | None = field(default=None, init=False, repr=False)
    _buffered_keys: set[str] = field(default_factory=set, init=False, repr=False)
    _first_at: float | None = field(default=None, init=False, repr=False)
    _duplicates: int = field(default=0, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.flush_records < 1 or self.flush_seconds <= 0:
            raise DataError("a delivery stream needs flush_records >= 1 and flush_seconds > 0")

    @property
    def buffered(self) -> int:
        """Records waiting for the next flush."""
        return len(self._buffer)

    @property
    def written(self) -> int:
        """Records written by this stream so far."""
        return sum(report.written for report in self.reports)

    @property
    def duplicates(self) -> int:
        """Records dropped as duplicates so far (flushed reports plus the pending count)."""
        return sum(report.duplicates for report in self.reports) + self._duplicates

    def put(self, record: Mapping[str, Any], *, url: str, fetched_at: datetime | None = None) -> bool:
        """Buffer one record; flush if the buffer is full or old enough.

        Args:
            record: a JSON object (already checked against the source's contract).
            url: the request that returned it (kept in bronze for lineage).
            fetched_at: when it was fetched (default now, UTC).

        Returns:
            False when the record was a duplicate (its key is in the table or the buffer), else True.

        Raises:
            DataError: the stream is closed, or the record lacks a key field.
            ServiceError: a flush triggered by this put failed.
        """
        if self._closed:
            raise DataError(f"the delivery stream to {self.table} is closed: open a new one")
        key = dedupe_key(record, self.key_fields)
        if self._keys is None:
            self._keys = existing_keys(self.table)
        if key in self._keys or key in self._buffered_keys:
            self._duplicates += 1
            self.poll()
            return False
        if not self._buffer:
            self._first_at = self.clock()
        self._buffer.append(
            _Buffered(
                record=json.dumps(record, separators=(",", ":"), ensure_ascii=False),
                key=key,
                url=url,
                fetched_at=fetched_at or datetime.now(UTC),
            )
        )
        self._buffered_keys.add(key)
        if len(self._buffer) >= self.flush_records:
            self.flush("size")
        else:
            self.poll()
        return True

    def poll(self) -> FlushReport | None:
        """Flush if the oldest buffered record has waited ``flush_seconds``; call it between pages."""
        if self._first_at is not None and self.clock() - self._first_at >= self.flush_seconds:
            return self.flush("time")
        return None

    def flush(self, reason: FlushReason = "close") -> FlushReport | None:
        """Write the buffer as one Delta append (nothing when it is empty and nothing was dropped).

        Returns:
            The flush's report, or None when there was nothing to report.

        Raises:
            ServiceError: the write failed; the buffer is kept, so a later flush can retry it.
        """
        if not self._buffer and not self._duplicates:
            return None
        batch_id = str(uuid.uuid4())
        version: int | None = None
        if self._buffer:
            rows = pa.Table.from_pylist(
                [
                    {
                        "record": item.record,
                        "dedupe_key": item.key,
                        "source": self.source,
                        "request_url": item.url,
                        "fetched_at": item.fetched_at,
                        "batch_id": batch_id,
                    }
                    for item in self._buffer
                ],
                schema=BRONZE_HTTP,
            )
            version = self.writer(self.table, rows)
        report = FlushReport(batch_id, reason, len(self._buffer), self._duplicates, version)
        if self._keys is not None:
            self._keys.update(self._buffered_keys)
        self._buffer.clear()
        self._buffered_keys.clear()
        self._first_at = None
        self._duplicates = 0
        self.reports.append(report)
        log.info(
            "flush (%s) to %s: %d written, %d duplicates, version %s",
            reason,
            self.table,
            report.written,
            report.duplicates,
            version,
        )
        return report

    def close(self) -> list[FlushReport]:
        """Flush what is left and refuse further puts; returns every flush's report."""
        if not self._closed:
            self.flush("close")
            self._closed = True
        return list(self.reports)

    def __enter__(self) -> DeliveryStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: Any) -> None:
        self.close()
