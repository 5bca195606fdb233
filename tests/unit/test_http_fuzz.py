"""The fuzz corpus through the HTTP pull (issue 11), against a real HTTP server on loopback.

Hostile records inside pages land in bronze, the dead-letter table (with their reason) or the duplicate
count; hostile pages (not JSON, truncated, empty, too deep, not UTF-8, an HTML error page with status 200, a
body cut off mid-transfer) fail the pull with an error naming the URL, after the pages before them are
written and with the unreadable body kept as a dead letter. Nothing is lost, nothing crashes the connector.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from deltalake import DeltaTable

from lakehouse.contracts.payload import PayloadSpec
from lakehouse.errors import DataError, ServiceError
from lakehouse.simulate.fuzz import CATEGORIES, FuzzCase, corpus
from lakehouse.sources.http import MalformedPage, PullTargets, RetryPolicy, pull_source
from lakehouse.sources.registry import HttpPagination, HttpSource
from loopback_http import serving

pytestmark = pytest.mark.unit

PER_CATEGORY = int(os.environ.get("LAKEHOUSE_FUZZ_PER_CATEGORY", "12"))  # `make fuzz`: 600

CONTRACT = {"date": "date", "currency": "string", "rate_per_eur": "double"}
# The corpus breaks records by a payload declaration; the currency is the key it makes unique per input.
SPEC = PayloadSpec.model_validate(
    {"key": ["currency"], "fields": {"date": {}, "currency": {}, "rate_per_eur": {"type": "double"}}}
)
VALID = [
    {"date": f"2024-11-{d:02d}", "currency": c, "rate_per_eur": 1 + d / 100}
    for d in range(1, 29)
    for c in "ABC"
]
# Where a record-level input may end: bronze, dead letter (reason) or duplicate (the key seen before).
RECORD_EXPECT = {
    "valid": {"bronze"},
    "extra_fields": {"bronze"},
    "huge_value": {"bronze", "dead_letter"},  # dead when the ~900 KB lands in a typed field (date)
    "exact_duplicate": {"duplicate"},
    "conflicting_duplicate": {"dead_letter", "duplicate"},
    "wrong_types": {"dead_letter"},
    "absurd_time": {"dead_letter"},
    "missing_key": {"dead_letter"},
    "null_values": {"dead_letter"},
    "not_an_object": {"dead_letter"},
    "number_extremes": {"bronze", "dead_letter"},  # NaN is a double to JSON; silver judges its range
    "hostile_text": {"bronze", "dead_letter"},
}
PAGE_LEVEL = {"not_json", "truncated_json", "empty", "deep_nesting", "invalid_utf8"}


@dataclass
class Reply:
    body: bytes
    content_type: str = "application/json"
    status: int = 200
    cut_at: int | None = None  # send only this many bytes of the body, then close the connection


class _Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        page = int(dict(parse_qsl(urlsplit(self.path).query)).get("page", "1"))
        replies: list[Reply] = self.server.replies  # type: ignore[attr-defined]
        reply = replies[page - 1] if page <= len(replies) else Reply(b'{"data": []}')
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body if reply.cut_at is None else reply.body[: reply.cut_at])
        if reply.cut_at is not None:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture()
def api() -> Iterator[ThreadingHTTPServer]:
    with serving(_Api) as server:
        yield server


def _pull(api: ThreadingHTTPServer, replies: list[Reply], folder: Path, page_size: int) -> Any:
    api.replies = replies  # type: ignore[attr-defined]
    source = HttpSource(
        name="fuzz_rates",
        kind="http",
        url=f"http://127.0.0.1:{api.server_address[1]}/v1/rates",
        bronze="fuzz_rates",
        key=["date", "currency"],
        contract=CONTRACT,
        pagination=HttpPagination(style="page", page_size=page_size),
        timeout_s=5.0,
        max_retries=1,
    )
    targets = PullTargets(
        bronze=str(folder / "bronze"), dead_letter=str(folder / "dead"), state=folder / "s.json"
    )
    return pull_source(source, targets=targets, policy=RetryPolicy(max_retries=1), sleep=lambda _: None)


def _rows(path: Path) -> list[dict[str, Any]]:
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist() if (path / "_delta_log").is_dir() else []


def _strict_json(case: FuzzCase) -> tuple[bool, Any]:
    try:
        return True, json.loads(case.value.decode("utf-8"))
    except (ValueError, RecursionError):
        return False, None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _page(items: list[Any]) -> bytes:
    return json.dumps({"data": items}).encode()


def test_hostile_records_inside_pages_are_each_accounted(api: ThreadingHTTPServer, tmp_path: Path) -> None:
    cases = corpus(VALID, SPEC, count=len(CATEGORIES) * PER_CATEGORY, seed=5, max_huge=4)
    records = [(case, value) for case in cases for ok, value in [_strict_json(case)] if ok]
    assert {c.category for c, _ in records} >= set(RECORD_EXPECT) - {"huge_value"}
    size = 25 if len(cases) < 1_000 else 500
    pages = [_page([v for _, v in records[i : i + size]]) for i in range(0, len(records), size)]
    report = _pull(api, [Reply(p) for p in pages], tmp_path, page_size=size)
    assert report.received == len(records)
    assert report.written + report.duplicates + len(report.dead_letters) == len(records)
    bronze = {json.loads(r["record"])["currency"] for r in _rows(tmp_path / "bronze")}
    dead = [json.loads(r["record"]) for r in _rows(tmp_path / "dead")]
    assert len(bronze) == report.written and len(dead) == len(report.dead_letters)
    dead_left = Counter(_canonical(letter.record) for letter in report.dead_letters)
    wrong = []
    for case, value in records:  # in the order sent: a key's first arrival is the one bronze keeps
        if dead_left[_canonical(value)]:
            dead_left[_canonical(value)] -= 1
            outcome = "dead_letter"
        elif isinstance(value, dict) and value.get("currency") in bronze:
            bronze.discard(value["currency"])
            outcome = "bronze"
        else:
            outcome = "duplicate"
        if outcome not in RECORD_EXPECT[case.category]:
            wrong.append((case.category, outcome, case.value[:80]))
    assert wrong == []


@pytest.mark.parametrize("category", sorted(PAGE_LEVEL))
def test_an_unreadable_page_fails_the_pull_with_its_body_kept(
    api: ThreadingHTTPServer, tmp_path: Path, category: str
) -> None:
    (case,) = [c for c in corpus(VALID, SPEC, count=len(CATEGORIES) * 3, seed=5) if c.category == category][
        :1
    ]
    first = Reply(_page(VALID[:2]))
    with pytest.raises(MalformedPage) as failed:
        _pull(api, [first, Reply(case.value)], tmp_path, page_size=2)
    assert "page=2" in str(failed.value)
    assert len(_rows(tmp_path / "bronze")) == 2  # the page before it is written
    (letter,) = _rows(tmp_path / "dead")
    assert "page=2" in letter["request_url"] and letter["reason"] == str(failed.value)
    assert json.loads(letter["record"]) == case.value.decode("utf-8", "backslashreplace")  # the body, kept


def test_an_html_error_page_with_status_200_is_not_read_as_data(
    api: ThreadingHTTPServer, tmp_path: Path
) -> None:
    html = b"<html><body>502 Bad Gateway</body></html>"
    with pytest.raises(DataError, match="did not return JSON"):
        _pull(api, [Reply(html, content_type="text/html")], tmp_path, page_size=2)
    assert json.loads(_rows(tmp_path / "dead")[0]["record"]) == html.decode()


def test_json_labelled_text_plain_and_a_huge_page_are_read(api: ThreadingHTTPServer, tmp_path: Path) -> None:
    huge = [{"date": "2024-11-01", "currency": f"C{n:05d}", "rate_per_eur": 1.0} for n in range(20_000)]
    report = _pull(api, [Reply(_page(VALID[:2]), content_type="text/plain"), Reply(_page(huge))], tmp_path, 2)
    assert report.written == 20_002 and len(_rows(tmp_path / "bronze")) == 20_002


def test_a_body_cut_off_mid_transfer_is_retried_then_a_clear_error(
    api: ThreadingHTTPServer, tmp_path: Path
) -> None:
    body = _page(VALID[:2])
    with pytest.raises(ServiceError) as failed:
        _pull(api, [Reply(_page(VALID[2:4])), Reply(body, cut_at=len(body) // 2)], tmp_path, page_size=2)
    assert "page=2" in str(failed.value)
    assert len(_rows(tmp_path / "bronze")) == 2
