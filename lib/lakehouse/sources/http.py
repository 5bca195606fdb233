"""The generic HTTP pull connector: a registry :class:`~lakehouse.sources.registry.HttpSource` → bronze.

For one source, :func:`pull_source`

1. reads the incremental cursor persisted by the last successful run (``<workspace>/state/<source>.json``)
   and sends it as ``incremental_param`` (the first run uses the URL's own query, e.g. ``?since=...``);
2. walks the pages (``none``, ``page`` or ``cursor`` pagination) with one ``requests.Session``, a timeout per
   request, and retries: connection errors, timeouts and HTTP 5xx back off exponentially with full jitter
   (``uniform(0, min(cap, base * 2**retry))``); HTTP 429 waits what ``Retry-After`` says (seconds or an HTTP
   date); other 4xx fail at once; after ``max_retries`` retries it gives up with a :class:`ServiceError`;
3. checks each page: the body must be JSON with a list of records where ``pagination.records_path`` says
   (a dotted path into nested JSON such as ``result.items``; the next cursor likewise at
   ``next_cursor_path``; the older one-level ``records_field``/``next_cursor_field`` still work), else a
   :class:`DataError` naming the URL;
   a record that is not an object, lacks a contract field, has a null key or a value of the wrong type goes
   to the dead-letter list with its reason (and to the ``<bronze>_dead_letter`` table) — never dropped;
4. puts valid records into a :class:`~lakehouse.sources.firehose.DeliveryStream` (flush on size/time/close,
   deduplicated by the source's key);
5. only after the stream's last flush succeeded, writes the new cursor: the max ``incremental_field`` seen.

The retry loop is a small hand-written one rather than tenacity: the wait depends on the *response*
(``Retry-After`` on a 429, which may be an HTTP date read against an injectable clock) as much as on the
attempt number, the give-up error must name the URL and the last failure, and the loop must take injected
``sleep``/``now``/``rng`` so unit tests check the exact schedule without sleeping. That is ~40 lines here;
in tenacity it would be a custom wait, a custom retry predicate and a custom stop/error callback.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pyarrow as pa
import requests

from lakehouse.config import Settings, expand_variables
from lakehouse.contracts.payload import format_path
from lakehouse.errors import ConfigError, DataError, ServiceError
from lakehouse.sources.firehose import DeliveryStream, FlushReport, Writer, delta_append
from lakehouse.sources.registry import REGISTRY_FILE, HttpSource, Registry, load_registry
from lakehouse.state import read_json, write_json

log = logging.getLogger(__name__)

DEFAULT_BACKOFF_BASE_S: Final = 0.5
DEFAULT_BACKOFF_CAP_S: Final = 30.0
DEFAULT_MAX_RETRY_AFTER_S: Final = 600.0
DEFAULT_MAX_PAGES: Final = 100_000
USER_AGENT: Final = "lakehouse-workbench/0.1 (+http pull connector)"

DEAD_LETTER: Final = pa.schema(
    [
        pa.field("record", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("request_url", pa.string(), nullable=False),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("pull_id", pa.string(), nullable=False),
    ]
)

# Contract type names → the kind of JSON value that satisfies them (unknown type names are not checked).
_CONTRACT_KINDS: Final = {
    "string": "string",
    "str": "string",
    "timestamp": "string",
    "date": "date",
    "double": "number",
    "float": "number",
    "decimal": "number",
    "number": "number",
    "int": "integer",
    "integer": "integer",
    "long": "integer",
    "bigint": "integer",
    "boolean": "boolean",
    "bool": "boolean",
}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if not isinstance(value, str):  # date
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


class HttpGetter(Protocol):
    """What the connector needs of ``requests.Session`` (tests pass a fake)."""

    def get(
        self, url: str, *, params: Mapping[str, str], headers: Mapping[str, str], timeout: float
    ) -> requests.Response: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried.

    Attributes:
        max_retries: retries after the first attempt (the source's ``max_retries``).
        base_s: the first backoff ceiling; it doubles per retry.
        cap_s: the largest backoff ceiling.
        max_retry_after_s: refuse (raise) when a server asks to wait longer than this.
    """

    max_retries: int = 5
    base_s: float = DEFAULT_BACKOFF_BASE_S
    cap_s: float = DEFAULT_BACKOFF_CAP_S
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S

    def ceiling(self, retry: int) -> float:
        """The upper bound of the wait before retry number ``retry`` (0-based)."""
        return min(self.cap_s, self.base_s * 2.0**retry)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: a wait drawn uniformly from ``[0, ceiling(retry)]``."""
        return rng.uniform(0.0, self.ceiling(retry))


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (None if unreadable).

    Example:
        >>> retry_after_seconds("3", datetime.now(UTC))
        3.0
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass(frozen=True)
class DeadLetter:
    """A record the connector could not accept, with why and where it came from."""

    record: Any
    reason: str
    url: str
    fetched_at: datetime


@dataclass(frozen=True)
class Page:
    """One page as fetched: its URL, its valid records and its dead letters."""

    url: str
    fetched_at: datetime
    records: list[dict[str, Any]]
    dead_letters: list[DeadLetter]
    raw_count: int
    next_cursor: str | None


@dataclass
class RequestStats:
    """Requests made, retries and the waits slept between attempts (seconds)."""

    requests: int = 0
    retries: int = 0
    waits: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class HttpClient:
    """GET with timeouts, retries (backoff with full jitter, 429 + Retry-After) and an auth header.

    Args:
        session: a ``requests.Session`` (or a fake with the same ``get``).
        headers: headers for every request (auth, user agent).
        timeout_s: the connect and read timeout of one attempt.
        policy: the retry policy.
        sleep: how to wait (tests pass a recorder).
        now: the wall clock, for ``Retry-After`` dates.
        rng: the jitter's random source.
    """

    def __init__(
        self,
        session: HttpGetter,
        *,
        headers: Mapping[str, str],
        timeout_s: float,
        policy: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.session = session
        self.headers = dict(headers)
        self.timeout_s = timeout_s
        self.policy = policy
        self.sleep = sleep
        self.now = now
        self.rng = rng or random.Random()
        self.stats = RequestStats()

    def get(self, url: str, params: Mapping[str, str]) -> requests.Response:
        """GET ``url`` with ``params``, retrying what is worth retrying.

        Returns:
            The first 2xx response.

        Raises:
            ConfigError: HTTP 401/403 (the credentials are wrong or missing).
            ServiceError: another 4xx, or still failing after ``max_retries`` retries, or a ``Retry-After``
                longer than the policy accepts.
        """
        shown = _show(url, params)
        for attempt in range(self.policy.max_retries + 1):
            self.stats.requests += 1
            wait: float | None = None
            try:
                response = self.session.get(url, params=params, headers=self.headers, timeout=self.timeout_s)
            except (
                requests.Timeout,
                requests.ConnectionError,
                # The body cut off mid-transfer or not decodable as its Content-Encoding says: transient too.
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status < 400:
                    return response
                failure = f"HTTP {status}: {response.text[:200]}"
                if status == 429:
                    wait = retry_after_seconds(response.headers.get("Retry-After"), self.now())
                    if wait is not None and wait > self.policy.max_retry_after_s:
                        raise ServiceError(
                            f"{shown} is rate limited and asks to retry after {wait:.0f}s, longer than "
                            f"{self.policy.max_retry_after_s:.0f}s: pull again later"
                        )
                elif status in (401, 403):
                    raise ConfigError(
                        f"{shown} refused the credentials (HTTP {status}): check the source's auth header "
                        "and the environment variable it names"
                    )
                elif status < 500:
                    raise ServiceError(f"{shown} answered {failure}: check the source's url and parameters")
            self.stats.failures.append(failure)
            if attempt == self.policy.max_retries:
                break
            if wait is None:
                wait = self.policy.backoff(attempt, self.rng)
            log.warning("%s failed (%s); retry %d in %.2fs", shown, failure, attempt + 1, wait)
            self.stats.retries += 1
            self.stats.waits.append(wait)
            self.sleep(wait)
        raise ServiceError(
            f"{shown} still failing after {self.policy.max_retries} retries "
            f"({self.policy.max_retries + 1} attempts); last error: {self.stats.failures[-1]} — "
            "check that the API is up, or raise the source's max_retries"
        )


def _show(url: str, params: Mapping[str, str]) -> str:
    return requests.Request("GET", url, params=dict(params)).prepare().url or url


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its query, and the query as a dict (static parameters of the source)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment="")), dict(parse_qsl(parts.query))


def _type_problem(name: str, value: Any, expected: str) -> str | None:
    kind = _CONTRACT_KINDS.get(expected.lower())
    if kind is None or value is None or _is_kind(value, kind):
        return None
    return f"field {name!r} must be {expected}, got {type(value).__name__} {value!r}"


def check_record(record: Any, contract: Mapping[str, str], key: Sequence[str]) -> str | None:
    """Why ``record`` breaks the source's contract (None when it is fine).

    A record must be a JSON object holding every contract field and every key field; key fields may not be
    null; values must match the contract's type (string, date, double, long, boolean, …; other type names
    are not checked).
    """
    if not isinstance(record, dict):
        return f"not a JSON object: {type(record).__name__}"
    missing = [name for name in (*contract, *key) if name not in record]
    if missing:
        return f"missing fields {sorted(set(missing))}"
    nulls = [name for name in key if record[name] is None]
    if nulls:
        return f"null key fields {nulls}"
    for name, expected in contract.items():
        problem = _type_problem(name, record[name], expected)
        if problem:
            return problem
    return None


_ABSENT: Final = object()


def _at(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for segment in path:
        if not isinstance(node, dict) or segment not in node:
            return _ABSENT
        node = node[segment]
    return node


def _shape(body: dict[str, Any], path: tuple[str, ...]) -> str:
    """What the body has where the path broke off, for the error message."""
    node: Any = body
    for depth, segment in enumerate(path):
        if not isinstance(node, dict):
            return f"{format_path(path[:depth])} is a {type(node).__name__}"
        if segment not in node:
            at = format_path(path[:depth]) if depth else "the top level"
            return f"keys at {at}: {sorted(node)[:10]}"
        node = node[segment]
    return "found"  # pragma: no cover - only called when the path broke off


class MalformedPage(DataError):
    """A response the connector cannot read as a page. Its body is kept: :attr:`letter` is its dead letter
    (the bytes as text, any that are not UTF-8 as ``\\xNN`` escapes), written by the pull before it fails."""

    def __init__(self, message: str, response: requests.Response, url: str, fetched_at: datetime) -> None:
        super().__init__(message)
        body = response.content.decode("utf-8", "backslashreplace")
        self.letter = DeadLetter(body, message, url, fetched_at)


def parse_page(response: requests.Response, source: HttpSource, fetched_at: datetime, url: str) -> Page:
    """Check one response against the source's pagination and contract.

    The body must be UTF-8 JSON (RFC 8259), whatever the Content-Type says: a JSON page labelled
    ``text/plain`` is read; an HTML error page with status 200, a truncated body or bytes that are not UTF-8
    are not.

    Raises:
        MalformedPage: the body is not UTF-8 JSON, or the records are not a list (the message names the URL).
    """
    pagination = source.pagination

    def malformed(message: str) -> MalformedPage:
        return MalformedPage(message, response, url, fetched_at)

    try:
        body = json.loads(response.content.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"{exc.reason} at byte {exc.start}"
        raise malformed(f"{url} returned bytes that are not UTF-8 ({problem})") from None
    except ValueError as exc:
        shown = response.content[:120].decode("utf-8", "backslashreplace")
        raise malformed(f"{url} did not return JSON ({shown!r}): is the url right?") from exc
    except RecursionError:
        size = len(response.content)
        raise malformed(f"{url} returned JSON nested too deeply to read ({size} bytes)") from None
    next_cursor: str | None = None
    where = format_path(pagination.records_location)
    if isinstance(body, list) and pagination.style == "none":
        items: Any = body
    elif isinstance(body, dict):
        items = _at(body, pagination.records_location)
        if items is _ABSENT:
            raise malformed(
                f"{url} returned no {where!r} field ({_shape(body, pagination.records_location)}): set "
                "pagination.records_path to where the records are (a dotted path, e.g. result.items)"
            )
        cursor = _at(body, pagination.cursor_location)
        next_cursor = None if cursor in (None, "", _ABSENT) else str(cursor)
    else:
        raise malformed(f"{url} returned a JSON {type(body).__name__}, expected an object with records")
    if not isinstance(items, list):
        raise malformed(f"{url}: {where!r} is a {type(items).__name__}, not a list")
    records: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    for item in items:
        reason = check_record(item, source.contract, source.key)
        if reason is None:
            records.append(item)
        else:
            dead.append(DeadLetter(item, reason, url, fetched_at))
    return Page(url, fetched_at, records, dead, len(items), next_cursor)


def iter_pages(
    client: HttpClient,
    source: HttpSource,
    params: Mapping[str, str],
    *,
    max_pages: int = DEFAULT_MAX_PAGES,
) -> Iterator[Page]:
    """Fetch the source's pages in order (``none``: one request; ``page``: 1, 2, … until a short page;
    ``cursor``: until the API returns no next cursor).

    Raises:
        DataError: a page is malformed, or the API repeats a cursor or exceeds ``max_pages``.
        ServiceError, ConfigError: from :meth:`HttpClient.get`.
    """
    base, static = split_url(source.url)
    pagination = source.pagination
    query = {**static, **params}
    if pagination.style != "none":
        query[pagination.size_param] = str(pagination.page_size)
    seen_cursors: set[str] = set()
    for number in range(1, max_pages + 1):
        if pagination.style == "page":
            query[pagination.page_param] = str(number)
        response = client.get(base, query)
        url = str(getattr(response, "url", None) or _show(base, query))
        page = parse_page(response, source, datetime.now(UTC), url)
        yield page
        if pagination.style == "none":
            return
        if pagination.style == "page":
            if page.raw_count < pagination.page_size:
                return
            continue
        if page.next_cursor is None:
            return
        if page.next_cursor in seen_cursors:
            raise DataError(f"{url} returned cursor {page.next_cursor!r} twice: the API's pagination loops")
        seen_cursors.add(page.next_cursor)
        query[pagination.cursor_param] = page.next_cursor
    raise DataError(f"{source.name}: more than {max_pages} pages; raise max_pages if that is expected")


@dataclass(frozen=True)
class PullTargets:
    """Where a pull writes: the bronze table, its dead-letter table and the cursor state file."""

    bronze: str
    dead_letter: str
    state: Path

    @classmethod
    def from_settings(cls, settings: Settings, source: HttpSource) -> PullTargets:
        return cls(
            bronze=settings.table_path("bronze", source.bronze),
            dead_letter=settings.table_path("bronze", f"{source.bronze}_dead_letter"),
            state=settings.workspace / "state" / f"{source.name}.json",
        )


def read_cursor(path: Path) -> str | None:
    """The incremental cursor saved by the last successful pull (None on the first run).

    Raises:
        ConfigError: the state file is not the JSON this module writes.
    """
    try:
        state = read_json(path)
        if state is None:
            return None
        cursor = state["cursor"]
    except (DataError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the pull state {path} is unreadable ({exc}): delete it to pull from the start"
        ) from exc
    return None if cursor is None else str(cursor)


def write_cursor(path: Path, cursor: str, source: str) -> None:
    """Persist ``cursor`` atomically and durably (:func:`lakehouse.state.write_json`)."""
    write_json(path, {"source": source, "cursor": cursor, "updated_at": datetime.now(UTC).isoformat()})


def _newest(current: Any, value: Any, field_name: str) -> Any:
    if value is None:
        return current
    if current is None:
        return value
    try:
        return value if value > current else current
    except TypeError as exc:
        raise DataError(
            f"incremental field {field_name!r} mixes types ({current!r}, {value!r}): it must be comparable"
        ) from exc


def _later(candidate: str, current: str) -> bool:
    """Whether cursor ``candidate`` is after ``current`` (numerically when both are numbers)."""
    try:
        return float(candidate) > float(current)
    except ValueError:
        return candidate > current


def write_dead_letters(path: str, letters: Sequence[DeadLetter], source: str, pull_id: str) -> int:
    """Append dead letters to their Delta table; returns how many were written."""
    if not letters:
        return 0
    rows = pa.Table.from_pylist(
        [
            {
                "record": json.dumps(letter.record, separators=(",", ":"), default=str),
                "reason": letter.reason,
                "source": source,
                "request_url": letter.url,
                "fetched_at": letter.fetched_at,
                "pull_id": pull_id,
            }
            for letter in letters
        ],
        schema=DEAD_LETTER,
    )
    delta_append(path, rows)
    return len(letters)


@dataclass(frozen=True)
class PullReport:
    """What one pull of one source did."""

    source: str
    pull_id: str
    pages: int
    requests: int
    retries: int
    waits: list[float]
    failures: list[str]
    received: int
    written: int
    duplicates: int
    dead_letters: list[DeadLetter]
    cursor_before: str | None
    cursor_after: str | None
    flushes: list[FlushReport]


def auth_headers(source: HttpSource) -> dict[str, str]:
    """The request headers of a source: user agent plus its auth header (``${VAR}`` read from the env)."""
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if source.auth is not None:
        headers[source.auth.header] = str(expand_variables(source.auth.value, Path(REGISTRY_FILE)))
    return headers


def pull_source(
    source: HttpSource,
    settings: Settings | None = None,
    *,
    targets: PullTargets | None = None,
    session: HttpGetter | None = None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    writer: Writer = delta_append,
    max_pages: int = DEFAULT_MAX_PAGES,
) -> PullReport:
    """Pull what is new from one HTTP source into its bronze table (see the module docstring).

    Args:
        source: the registry entry (``kind: http``).
        settings: the environment (paths); needed unless ``targets`` is given.
        targets: override where bronze, dead letters and the cursor state live (tests).
        session: the HTTP session (default a new ``requests.Session``).
        policy: the retry policy (default from the source's ``max_retries``).
        sleep, now, clock, rng: injectable waits, wall clock, monotonic clock and jitter.
        writer: how the delivery stream appends a batch (default delta-rs append).
        max_pages: a guard against endless pagination.

    Returns:
        The pull's counts, waits, dead letters, flushes and cursors.

    Raises:
        ConfigError: neither ``settings`` nor ``targets`` given; credentials refused; unreadable state.
        ServiceError: the API kept failing after the retries, or bronze could not be written.
        DataError: a page is malformed (the message names its URL).
    """
    if targets is None:
        if settings is None:
            raise ConfigError("pull_source needs settings (or explicit targets) to know where to write")
        targets = PullTargets.from_settings(settings, source)
    policy = policy or RetryPolicy(max_retries=source.max_retries)
    own_session = session is None
    http = session if session is not None else requests.Session()
    client = HttpClient(
        http,
        headers=auth_headers(source),
        timeout_s=source.timeout_s,
        policy=policy,
        sleep=sleep,
        now=now,
        rng=rng,
    )
    pull_id = str(uuid.uuid4())
    cursor_before = read_cursor(targets.state)
    params: dict[str, str] = {}
    if cursor_before is not None and source.incremental_param:
        params[source.incremental_param] = cursor_before
    stream = DeliveryStream(
        targets.bronze, source.name, source.key, source.flush_records, source.flush_seconds, clock, writer
    )
    newest: Any = None
    pages = received = 0
    dead: list[DeadLetter] = []
    try:
        for page in iter_pages(client, source, params, max_pages=max_pages):
            pages += 1
            received += page.raw_count
            dead.extend(page.dead_letters)
            for record in page.records:
                stream.put(record, url=page.url, fetched_at=page.fetched_at)
                if source.incremental_field:
                    newest = _newest(newest, record.get(source.incremental_field), source.incremental_field)
            stream.poll()
    except BaseException as failure:
        # Deliver what was fetched (dedupe makes the re-pull harmless) and the dead letters so far, with the
        # body of the page that could not be read, but keep the old cursor.
        if isinstance(failure, MalformedPage):
            dead.append(failure.letter)
        try:
            stream.close()
        except Exception:  # the original error is the one to report
            log.exception("flushing %s after a failed pull also failed", source.name)
        try:
            write_dead_letters(targets.dead_letter, dead, source.name, pull_id)
        except Exception:
            log.exception("writing the dead letters of %s after a failed pull also failed", source.name)
        raise
    finally:
        if own_session and isinstance(http, requests.Session):
            http.close()
    flushes = stream.close()
    write_dead_letters(targets.dead_letter, dead, source.name, pull_id)
    cursor_after = cursor_before
    if newest is not None and (cursor_before is None or _later(str(newest), cursor_before)):
        # Only now: every record up to `newest` is in bronze (the stream's last flush succeeded).
        cursor_after = str(newest)
        write_cursor(targets.state, cursor_after, source.name)
    report = PullReport(
        source=source.name,
        pull_id=pull_id,
        pages=pages,
        requests=client.stats.requests,
        retries=client.stats.retries,
        waits=list(client.stats.waits),
        failures=list(client.stats.failures),
        received=received,
        written=stream.written,
        duplicates=stream.duplicates,
        dead_letters=dead,
        cursor_before=cursor_before,
        cursor_after=cursor_after,
        flushes=flushes,
    )
    log.info(
        "pulled %s: %d pages, %d records, %d written, %d duplicates, %d dead letters, cursor %s → %s",
        source.name,
        pages,
        received,
        report.written,
        report.duplicates,
        len(dead),
        cursor_before,
        cursor_after,
    )
    return report


def http_sources(registry: Registry, name: str | None = None) -> list[HttpSource]:
    """The registry's ``http`` sources (or the one named), in file order.

    Raises:
        ConfigError: ``name`` is unknown or is not an http source.
    """
    if name:
        source = registry.get(name)
        if not isinstance(source, HttpSource):
            raise ConfigError(f"source {name!r} is of kind {getattr(source, 'kind', '?')!r}, not http")
        return [source]
    return [source for source in registry.sources.values() if isinstance(source, HttpSource)]


def pull_all(
    settings: Settings, name: str | None = None, registry: Registry | None = None
) -> list[PullReport]:
    """Pull every ``http`` source of the registry (or the one named); one report per source."""
    registry = registry or load_registry(settings)
    return [pull_source(source, settings) for source in http_sources(registry, name)]
