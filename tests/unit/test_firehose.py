"""Buffered delivery into bronze: flush on size, on time (fake clock) and on close; dedupe by key."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakehouse.errors import DataError, ServiceError
from lakehouse.sources.firehose import BRONZE_HTTP, DeliveryStream, dedupe_key

pytestmark = pytest.mark.unit

URL = "http://127.0.0.1/v1/rates?page=1"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rate(day: str, currency: str, value: float = 1.0) -> dict[str, object]:
    return {"date": day, "currency": currency, "rate_per_eur": value}


def rows(path: Path) -> list[dict[str, object]]:
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def stream(path: Path, clock: FakeClock, records: int = 3, seconds: float = 5.0) -> DeliveryStream:
    return DeliveryStream(str(path), "fx_rates", ["date", "currency"], records, seconds, clock)


def test_flushes_when_the_buffer_is_full(tmp_path: Path) -> None:
    clock = FakeClock()
    delivery = stream(tmp_path / "bronze", clock, records=3)
    for currency in ("USD", "GBP"):
        delivery.put(rate("2024-11-01", currency), url=URL)
    assert delivery.reports == [] and not (tmp_path / "bronze").exists()
    delivery.put(rate("2024-11-01", "JPY"), url=URL)
    assert [(r.reason, r.written) for r in delivery.reports] == [("size", 3)]
    assert delivery.buffered == 0
    assert len(rows(tmp_path / "bronze")) == 3


def test_flushes_when_the_oldest_record_has_waited_flush_seconds(tmp_path: Path) -> None:
    clock = FakeClock()
    delivery = stream(tmp_path / "bronze", clock, records=100, seconds=5.0)
    delivery.put(rate("2024-11-01", "USD"), url=URL)
    clock.now += 4.9
    delivery.put(rate("2024-11-01", "GBP"), url=URL)
    assert delivery.poll() is None
    clock.now += 0.1  # 5.0 s after the *first* buffered record
    report = delivery.poll()
    assert report is not None and (report.reason, report.written) == ("time", 2)
    # The timer restarts with the next buffered record, not with the flush.
    clock.now += 100
    delivery.put(rate("2024-11-04", "USD"), url=URL)
    assert delivery.buffered == 1
    clock.now += 5
    delivery.put(rate("2024-11-04", "GBP"), url=URL)  # put checks the timer too
    assert [r.reason for r in delivery.reports] == ["time", "time"]
    assert delivery.buffered == 0


def test_close_flushes_the_rest_and_refuses_more(tmp_path: Path) -> None:
    delivery = stream(tmp_path / "bronze", FakeClock(), records=10)
    delivery.put(rate("2024-11-01", "USD"), url=URL)
    reports = delivery.close()
    assert [(r.reason, r.written) for r in reports] == [("close", 1)]
    with pytest.raises(DataError, match="closed"):
        delivery.put(rate("2024-11-01", "GBP"), url=URL)


def test_rows_keep_the_record_and_ingest_metadata(tmp_path: Path) -> None:
    with stream(tmp_path / "bronze", FakeClock()) as delivery:
        delivery.put(rate("2024-11-01", "USD", 1.0866), url=URL)
    table = DeltaTable(str(tmp_path / "bronze")).to_pyarrow_table()
    assert table.schema.names == BRONZE_HTTP.names
    (row,) = table.to_pylist()
    assert json.loads(row["record"]) == rate("2024-11-01", "USD", 1.0866)
    assert row["dedupe_key"] == "2024-11-01|USD"
    assert row["source"] == "fx_rates" and row["request_url"] == URL
    assert row["batch_id"] == delivery.reports[0].batch_id
    assert row["fetched_at"].tzinfo is not None


def test_a_repulled_page_never_lands_twice(tmp_path: Path) -> None:
    page = [rate("2024-11-01", c) for c in ("USD", "GBP", "JPY", "CAD")]
    with stream(tmp_path / "bronze", FakeClock(), records=3) as first:
        for record in page:
            first.put(record, url=URL)
        # The same record again inside the buffer is a duplicate too.
        assert first.put(page[3], url=URL) is False
    assert first.written == 4 and first.duplicates == 1
    # A new stream (a later pull) reads the keys already in the table.
    with stream(tmp_path / "bronze", FakeClock(), records=3) as second:
        accepted = [second.put(record, url=URL) for record in [*page, rate("2024-11-04", "USD")]]
    assert accepted == [False, False, False, False, True]
    assert second.written == 1 and second.duplicates == 4
    keys = sorted(row["dedupe_key"] for row in rows(tmp_path / "bronze"))
    assert len(keys) == len(set(keys)) == 5


def test_dedupe_key_needs_every_key_field() -> None:
    assert dedupe_key(rate("2024-11-01", "USD"), ["date", "currency"]) == "2024-11-01|USD"
    assert dedupe_key({"b": 1, "a": 2}, []) == dedupe_key({"a": 2, "b": 1}, [])
    with pytest.raises(DataError, match="currency"):
        dedupe_key({"date": "2024-11-01", "currency": None}, ["date", "currency"])


def test_a_failed_write_keeps_the_buffer_for_a_retry(tmp_path: Path) -> None:
    calls: list[int] = []

    def flaky(path: str, table: pa.Table) -> int:
        calls.append(table.num_rows)
        if len(calls) == 1:
            raise ServiceError("disk full")
        return 7

    delivery = DeliveryStream(str(tmp_path / "b"), "s", ["id"], 2, 5.0, FakeClock(), flaky)
    delivery.put({"id": 1}, url=URL)
    with pytest.raises(ServiceError):
        delivery.put({"id": 2}, url=URL)
    assert delivery.buffered == 2 and delivery.reports == []
    report = delivery.flush()
    assert report is not None and report.written == 2 and report.table_version == 7
    assert calls == [2, 2]
