"""The HTTP pull connector on a fake session: pagination, retries, 429, schema checks, the cursor state."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pytest
import requests
from deltalake import DeltaTable

from lakehouse.errors import ConfigError, DataError, ServiceError
from lakehouse.sources.firehose import delta_append
from lakehouse.sources.http import (
    HttpClient,
    PullTargets,
    RetryPolicy,
    check_record,
    pull_source,
    read_cursor,
    retry_after_seconds,
)
from lakehouse.sources.registry import HttpAuth, HttpPagination, HttpSource
from loopback_http import serving

pytestmark = pytest.mark.unit

BASE = "http://api.test/v1/rates"
NOW = datetime(2024, 11, 4, 12, 0, 0, tzinfo=UTC)
CONTRACT = {"date": "date", "currency": "string", "rate_per_eur": "double"}


def response(
    status: int, body: Any = None, headers: Mapping[str, str] | None = None, url: str = BASE
) -> requests.Response:
    made = requests.Response()
    made.status_code = status
    made._content = (
        (body if isinstance(body, bytes) else json.dumps(body).encode()) if body is not None else b""
    )
    made.headers.update(headers or {})
    made.url = url
    return made


Answer = requests.Response | Exception


class FakeSession:
    """Answers from a script (or a function of the params); records every call."""

    def __init__(self, answers: list[Answer] | Callable[[dict[str, str]], Answer]) -> None:
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    def get(
        self, url: str, *, params: Mapping[str, str], headers: Mapping[str, str], timeout: float
    ) -> requests.Response:
        self.calls.append({"url": url, "params": dict(params), "headers": dict(headers), "timeout": timeout})
        answer = self.answers(dict(params)) if callable(self.answers) else self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def rate(day: str, currency: str, value: float = 1.5) -> dict[str, Any]:
    return {"date": day, "currency": currency, "rate_per_eur": value}


def source(style: str = "cursor", **overrides: Any) -> HttpSource:
    fields: dict[str, Any] = {
        "name": "fx_rates",
        "kind": "http",
        "url": f"{BASE}?since=2024-10-31",
        "bronze": "fx_rates",
        "key": ["date", "currency"],
        "contract": CONTRACT,
        "auth": HttpAuth(value="Bearer ${LAKEHOUSE_TEST_FX_TOKEN:-secret}"),
        "pagination": HttpPagination(style=style, page_size=2),  # type: ignore[arg-type]
        "incremental_param": "since",
        "incremental_field": "date",
        "timeout_s": 3.0,
        "max_retries": 3,
        "flush_records": 100,
    }
    fields.update(overrides)
    return HttpSource(**fields)


def targets(tmp_path: Path) -> PullTargets:
    return PullTargets(
        str(tmp_path / "bronze"), str(tmp_path / "dead_letter"), tmp_path / "state" / "fx.json"
    )


def pull(src: HttpSource, session: FakeSession, tmp_path: Path, **kwargs: Any) -> Any:
    kwargs.setdefault("sleep", Sleeps())
    return pull_source(
        src, targets=targets(tmp_path), session=session, now=lambda: NOW, rng=random.Random(1), **kwargs
    )


def bronze_keys(tmp_path: Path) -> list[str]:
    return sorted(
        DeltaTable(str(tmp_path / "bronze")).to_pyarrow_table(columns=["dedupe_key"]).column(0).to_pylist()
    )


# --- pagination -------------------------------------------------------------------------------------------


def test_cursor_pagination_follows_next_cursor_until_null(tmp_path: Path) -> None:
    session = FakeSession(
        [
            response(
                200, {"data": [rate("2024-11-01", "USD"), rate("2024-11-01", "GBP")], "next_cursor": "c1"}
            ),
            response(
                200, {"data": [rate("2024-11-04", "USD"), rate("2024-11-04", "GBP")], "next_cursor": "c2"}
            ),
            response(200, {"data": [rate("2024-11-05", "USD")], "next_cursor": None}),
        ]
    )
    report = pull(source("cursor"), session, tmp_path)
    assert [call["params"].get("cursor") for call in session.calls] == [None, "c1", "c2"]
    assert all(
        call["params"]["page_size"] == "2" and call["params"]["since"] == "2024-10-31"
        for call in session.calls
    )
    assert session.calls[0]["url"] == BASE and session.calls[0]["timeout"] == 3.0
    assert session.calls[0]["headers"]["Authorization"] == "Bearer secret"
    assert (report.pages, report.received, report.written) == (3, 5, 5)
    assert len(bronze_keys(tmp_path)) == 5


def test_page_pagination_stops_at_a_short_page(tmp_path: Path) -> None:
    pages = {
        "1": [rate("2024-11-01", "USD"), rate("2024-11-01", "GBP")],
        "2": [rate("2024-11-04", "USD"), rate("2024-11-04", "GBP")],
        "3": [rate("2024-11-05", "USD")],
    }
    session = FakeSession(lambda params: response(200, {"data": pages[params["page"]]}))
    report = pull(source("page"), session, tmp_path)
    assert [call["params"]["page"] for call in session.calls] == ["1", "2", "3"]
    assert report.pages == 3 and report.written == 5


def test_page_pagination_stops_at_an_empty_page(tmp_path: Path) -> None:
    pages = {"1": [rate("2024-11-01", "USD"), rate("2024-11-01", "GBP")], "2": []}
    session = FakeSession(lambda params: response(200, {"data": pages[params["page"]]}))
    assert pull(source("page"), session, tmp_path).pages == 2


def test_a_repeated_cursor_is_an_error_not_an_endless_loop(tmp_path: Path) -> None:
    session = FakeSession(
        lambda params: response(200, {"data": [rate("2024-11-01", "USD")], "next_cursor": "same"})
    )
    with pytest.raises(DataError, match="twice"):
        pull(source("cursor"), session, tmp_path)
    assert len(session.calls) == 2


def test_no_pagination_accepts_a_top_level_list(tmp_path: Path) -> None:
    session = FakeSession([response(200, [rate("2024-11-01", "USD")])])
    report = pull(source("none"), session, tmp_path)
    assert report.pages == 1 and report.written == 1
    assert "page_size" not in session.calls[0]["params"]


# --- retries ----------------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_within_doubling_bounds() -> None:
    policy = RetryPolicy(max_retries=10, base_s=0.5, cap_s=4.0)
    assert [policy.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    rng = random.Random(7)
    for retry in range(6):
        waits = [policy.backoff(retry, rng) for _ in range(300)]
        assert all(0.0 <= wait <= policy.ceiling(retry) for wait in waits)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(waits) < 0.1 * policy.ceiling(retry) and max(waits) > 0.9 * policy.ceiling(retry)


def test_connection_errors_timeouts_and_5xx_are_retried_with_backoff() -> None:
    session = FakeSession(
        [
            requests.ConnectionError("refused"),
            requests.ReadTimeout("slow"),
            response(503, {"error": "busy"}),
            response(200, {"data": []}),
        ]
    )
    sleeps = Sleeps()
    policy = RetryPolicy(max_retries=3, base_s=1.0, cap_s=30.0)
    client = HttpClient(session, headers={}, timeout_s=1.0, policy=policy, sleep=sleeps, rng=random.Random(3))
    assert client.get(BASE, {}).status_code == 200
    assert client.stats.requests == 4 and client.stats.retries == 3
    assert len(sleeps) == 3
    assert all(0.0 <= wait <= policy.ceiling(n) for n, wait in enumerate(sleeps))
    expected = random.Random(3)
    assert list(sleeps) == [expected.uniform(0, policy.ceiling(n)) for n in range(3)]


def test_429_waits_what_retry_after_says_in_seconds() -> None:
    session = FakeSession([response(429, {}, {"Retry-After": "7"}), response(200, {"data": []})])
    sleeps = Sleeps()
    client = HttpClient(session, headers={}, timeout_s=1.0, policy=RetryPolicy(base_s=0.01), sleep=sleeps)
    client.get(BASE, {})
    assert sleeps == [7.0]


def test_429_waits_until_an_http_date_retry_after() -> None:
    later = format_datetime(NOW + timedelta(seconds=42), usegmt=True)
    session = FakeSession([response(429, {}, {"Retry-After": later}), response(200, {"data": []})])
    sleeps = Sleeps()
    client = HttpClient(
        session, headers={}, timeout_s=1.0, policy=RetryPolicy(), sleep=sleeps, now=lambda: NOW
    )
    client.get(BASE, {})
    assert sleeps == [42.0]


def test_429_without_retry_after_falls_back_to_backoff() -> None:
    session = FakeSession([response(429, {}), response(200, {"data": []})])
    sleeps = Sleeps()
    client = HttpClient(session, headers={}, timeout_s=1.0, policy=RetryPolicy(base_s=2.0), sleep=sleeps)
    client.get(BASE, {})
    assert len(sleeps) == 1 and 0.0 <= sleeps[0] <= 2.0


def test_a_retry_after_beyond_the_limit_is_refused() -> None:
    session = FakeSession([response(429, {}, {"Retry-After": "3600"})])
    client = HttpClient(
        session, headers={}, timeout_s=1.0, policy=RetryPolicy(max_retry_after_s=60), sleep=Sleeps()
    )
    with pytest.raises(ServiceError, match="3600s"):
        client.get(BASE, {})


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("0", NOW) == 0.0
    assert retry_after_seconds("-5", NOW) == 0.0
    assert retry_after_seconds(format_datetime(NOW - timedelta(seconds=9), usegmt=True), NOW) == 0.0
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds(None, NOW) is None


def test_gives_up_after_max_retries_with_a_clear_error() -> None:
    session = FakeSession(lambda params: response(500, {"error": "boom"}))
    sleeps = Sleeps()
    client = HttpClient(session, headers={}, timeout_s=1.0, policy=RetryPolicy(max_retries=2), sleep=sleeps)
    with pytest.raises(ServiceError, match=r"after 2 retries \(3 attempts\).*HTTP 500.*max_retries") as error:
        client.get(BASE, {"since": "2024-10-31"})
    assert "since=2024-10-31" in str(error.value)
    assert len(session.calls) == 3 and len(sleeps) == 2


def test_client_errors_fail_at_once() -> None:
    for status, error in ((401, ConfigError), (403, ConfigError), (404, ServiceError)):
        session = FakeSession([response(status, {"error": "no"})])
        client = HttpClient(session, headers={}, timeout_s=1.0, policy=RetryPolicy(), sleep=Sleeps())
        with pytest.raises(error):
            client.get(BASE, {})
        assert len(session.calls) == 1


# --- schema checks ----------------------------------------------------------------------------------------


def test_bad_records_go_to_the_dead_letter_list_with_their_reason(tmp_path: Path) -> None:
    good = rate("2024-11-01", "USD")
    bad = [
        "not an object",
        {"date": "2024-11-01", "currency": "GBP"},  # no rate
        {"date": "2024-11-01", "currency": None, "rate_per_eur": 1.0},  # null key
        {"date": "2024-13-01", "currency": "JPY", "rate_per_eur": 160.0},  # not a date
        {"date": "2024-11-01", "currency": "CAD", "rate_per_eur": "1.5"},  # a string, not a double
    ]
    session = FakeSession([response(200, {"data": [good, *bad], "next_cursor": None})])
    report = pull(source("cursor"), session, tmp_path)
    assert report.received == 6 and report.written == 1
    reasons = [letter.reason for letter in report.dead_letters]
    assert len(reasons) == 5
    assert "not a JSON object" in reasons[0]
    assert "missing fields ['rate_per_eur']" in reasons[1]
    assert "null key fields ['currency']" in reasons[2]
    assert "'date' must be date" in reasons[3]
    assert "'rate_per_eur' must be double" in reasons[4]
    stored = DeltaTable(str(tmp_path / "dead_letter")).to_pyarrow_table().to_pylist()
    assert sorted(row["reason"] for row in stored) == sorted(reasons)
    assert all(row["request_url"] and row["pull_id"] == report.pull_id for row in stored)


def test_check_record_accepts_a_valid_record() -> None:
    assert check_record(rate("2024-11-01", "USD"), CONTRACT, ["date", "currency"]) is None
    assert check_record({**rate("2024-11-01", "JPY"), "rate_per_eur": 160}, CONTRACT, []) is None
    assert check_record({**rate("2024-11-01", "JPY"), "rate_per_eur": True}, CONTRACT, []) is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>gateway</html>", "did not return JSON"),
        (b'{"data": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "nested too deeply"),
        ({"items": []}, "no 'data' field"),
        ({"data": {"date": "2024-11-01"}}, "not a list"),
        ("a string", "expected an object"),
    ],
)
def test_a_malformed_page_raises_with_its_url(tmp_path: Path, body: Any, message: str) -> None:
    session = FakeSession([response(200, body, url=f"{BASE}?since=2024-10-31&page_size=2")])
    with pytest.raises(DataError, match=message) as error:
        pull(source("cursor"), session, tmp_path)
    assert f"{BASE}?since=2024-10-31" in str(error.value)


# --- the incremental cursor -------------------------------------------------------------------------------


def test_the_cursor_is_persisted_and_sent_on_the_next_pull(tmp_path: Path) -> None:
    first = FakeSession([response(200, {"data": [rate("2024-11-01", "USD"), rate("2024-11-04", "USD")]})])
    report = pull(source("cursor"), first, tmp_path)
    assert (report.cursor_before, report.cursor_after) == (None, "2024-11-04")
    assert read_cursor(targets(tmp_path).state) == "2024-11-04"
    second = FakeSession([response(200, {"data": [], "next_cursor": None})])
    report = pull(source("cursor"), second, tmp_path)
    # The persisted cursor replaces the URL's initial `since`.
    assert second.calls[0]["params"]["since"] == "2024-11-04"
    assert (report.cursor_before, report.cursor_after, report.written) == ("2024-11-04", "2024-11-04", 0)


def test_the_cursor_is_not_persisted_when_the_flush_fails(tmp_path: Path) -> None:
    def broken(path: str, table: pa.Table) -> int:
        raise ServiceError("the lake is read-only")

    session = FakeSession([response(200, {"data": [rate("2024-11-01", "USD")]})])
    with pytest.raises(ServiceError, match="read-only"):
        pull(source("cursor"), session, tmp_path, writer=broken)
    assert not targets(tmp_path).state.exists()


def test_the_cursor_is_written_only_after_the_last_flush(tmp_path: Path) -> None:
    state = targets(tmp_path).state
    seen: list[bool] = []

    def watching(path: str, table: pa.Table) -> int:
        seen.append(state.exists())
        return delta_append(path, table)

    session = FakeSession([response(200, {"data": [rate("2024-11-01", "USD"), rate("2024-11-04", "USD")]})])
    pull(source("cursor", flush_records=1), session, tmp_path, writer=watching)
    assert seen == [False, False] and read_cursor(state) == "2024-11-04"


def test_the_cursor_is_not_advanced_when_the_api_gives_up_midway(tmp_path: Path) -> None:
    session = FakeSession(
        [response(200, {"data": [rate("2024-11-01", "USD")], "next_cursor": "c1"})] + [response(500, {})] * 4
    )
    with pytest.raises(ServiceError, match="still failing"):
        pull(source("cursor"), session, tmp_path)
    # What was fetched is delivered (dedupe makes the re-pull harmless); the cursor stays where it was.
    assert bronze_keys(tmp_path) == ["2024-11-01|USD"]
    assert not targets(tmp_path).state.exists()


def test_a_re_pulled_page_is_not_written_twice(tmp_path: Path) -> None:
    page = {"data": [rate("2024-11-01", "USD"), rate("2024-11-01", "GBP")]}
    src = source("cursor", incremental_param=None)  # an API without incremental support re-sends everything
    pull(src, FakeSession([response(200, page)]), tmp_path)
    report = pull(src, FakeSession([response(200, page)]), tmp_path)
    assert (report.written, report.duplicates) == (0, 2)
    assert bronze_keys(tmp_path) == ["2024-11-01|GBP", "2024-11-01|USD"]


def test_pull_needs_somewhere_to_write() -> None:
    with pytest.raises(ConfigError, match="settings"):
        pull_source(source(), session=FakeSession([]))


# --- nested JSON: records and cursor by path, against a real HTTP server on loopback ----------------------


class _NestedApi(BaseHTTPRequestHandler):
    """An API that wraps its records two levels deep and its cursor in a `meta` object."""

    pages: Final = {
        None: ([rate("2024-11-01", "USD"), rate("2024-11-01", "GBP")], "p2"),
        "p2": ([rate("2024-11-04", "USD")], None),
    }

    def do_GET(self) -> None:
        query = dict(parse_qsl(urlsplit(self.path).query))
        items, cursor = self.pages[query.get("after")]
        body = json.dumps(
            {
                "status": "ok",
                "result": {"count": len(items), "items": items},
                "meta": {"paging": {"next": cursor}},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture()
def nested_api() -> Iterator[str]:
    with serving(_NestedApi) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/rates"


def test_records_and_cursor_are_found_by_path_in_nested_json(nested_api: str, tmp_path: Path) -> None:
    pagination = HttpPagination(
        style="cursor",
        page_size=2,
        cursor_param="after",
        records_path="result.items",
        next_cursor_path="meta.paging.next",
    )
    src = source(url=nested_api, pagination=pagination, auth=None)
    report = pull_source(src, targets=targets(tmp_path), rng=random.Random(1))
    assert report.pages == 2 and report.received == 3 and report.written == 3
    assert report.cursor_after == "2024-11-04"
    assert bronze_keys(tmp_path) == sorted(["2024-11-01|GBP", "2024-11-01|USD", "2024-11-04|USD"])


def test_a_records_path_that_is_not_there_names_what_is(nested_api: str, tmp_path: Path) -> None:
    pagination = HttpPagination(style="cursor", page_size=2, records_path="result.rows")
    with pytest.raises(DataError, match=r"no 'result.rows' field \(keys at result: \['count', 'items'\]\)"):
        pull_source(source(url=nested_api, pagination=pagination, auth=None), targets=targets(tmp_path))


def test_records_field_still_works_and_conflicts_with_records_path() -> None:
    assert HttpPagination(records_field="rows").records_location == ("rows",)
    assert HttpPagination(records_path="a.`b.c`").records_location == ("a", "b.c")
    assert HttpPagination().cursor_location == ("next_cursor",)
    with pytest.raises(ValueError, match="records_path or records_field"):
        HttpPagination(records_field="rows", records_path="a.rows")
    with pytest.raises(ValueError, match="empty segment"):
        HttpPagination(next_cursor_path="meta..next")
