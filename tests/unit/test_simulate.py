"""The clickstream simulator: determinism, realism, ground-truth flaws, pacing and the producer's errors."""

from __future__ import annotations

import itertools
import json
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.partitioner.default import murmur2

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError, ServiceError
from lakehouse.simulate import (
    DEFAULT_START,
    KINDS,
    MALFORMED_CASES,
    Flaws,
    Pacer,
    ProduceReport,
    SimulatedEvent,
    event_time_ms,
    generate_events,
    produce,
    simulate_to_kafka,
)
from lakehouse.simulate import clickstream as simulator
from lakehouse.simulate.event_contract import CHANNELS, COUNTRY_CURRENCY, EVENT_TYPES, PLATFORMS, TOPIC

pytestmark = pytest.mark.unit

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
V1_FIELDS = (
    "schema_version", "event_id", "event_type", "ts", "user_id", "session_id", "platform", "device",
    "client_ip", "country", "channel", "page", "product_id", "search_query", "quantity", "price", "revenue", "currency",
    "order_id",
)  # fmt: skip
V2_FIELDS = (
    "schema_version", "event_id", "event_type", "event_time", "user_id", "session_id", "platform", "device",
    "client_ip", "country", "channel", "page", "product_id", "search_query", "quantity", "price", "amount", "order_id",
    "consent",
)  # fmt: skip


@cache
def stream(count: int, seed: int = 7, days: int = 14, run: int = 0) -> tuple[SimulatedEvent, ...]:
    return tuple(generate_events(count, seed=seed, days=days, run=run))


def parse(event: SimulatedEvent) -> Any:
    return json.loads(event.value)


def time_of(payload: dict[str, Any]) -> int | None:
    """The event time in ms as silver would read it, or None when it cannot be read."""
    if payload.get("schema_version") == 2:
        text = payload.get("event_time")
        if not isinstance(text, str):
            return None
        try:
            moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    ts = payload.get("ts")
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def revenue_of(payload: dict[str, Any]) -> Any:
    if payload.get("schema_version") == 2:
        return (payload.get("amount") or {}).get("value")
    return payload.get("revenue")


def currency_of(payload: dict[str, Any]) -> Any:
    if payload.get("schema_version") == 2:
        return (payload.get("amount") or {}).get("currency")
    return payload.get("currency")


def quarantine_reason(value: bytes) -> str | None:
    """Silver's validation rules, as the contract states them (None: the payload is valid)."""
    try:
        payload = json.loads(value)
    except ValueError:
        return "malformed_json"
    if not isinstance(payload, dict):
        return "malformed_json"
    if payload.get("schema_version") not in (1, 2):
        return "unsupported_schema_version"
    for name in ("event_id", "user_id", "event_type"):
        if not payload.get(name):
            return f"missing_{name}"
    if payload["event_type"] not in EVENT_TYPES:
        return "unknown_event_type"
    if time_of(payload) is None:
        return "bad_timestamp"
    revenue = revenue_of(payload)
    if revenue is not None and revenue < 0:
        return "negative_revenue"
    if payload["event_type"] == "purchase" and revenue is None:
        return "purchase_without_revenue"
    return None


@dataclass
class SilverOutcome:
    rows: set[str] = field(default_factory=set)
    quarantined: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0


def run_silver(events: tuple[SimulatedEvent, ...], partitions: int | None = None) -> SilverOutcome:
    """Validate, watermark (newest event time seen − 1 h) and dedupe by event_id, in stream order.

    With ``partitions`` the newest event time is kept per Kafka partition (murmur2 of the key, as the
    producer assigns them), as a consumer that orders by offset within each partition would.
    """
    outcome = SilverOutcome()
    newest: dict[int, int] = defaultdict(lambda: -(2**63))
    for event in events:
        reason = quarantine_reason(event.value)
        if reason:
            outcome.quarantined[reason] += 1
            continue
        payload = parse(event)
        moment = time_of(payload)
        assert moment is not None
        partition = (murmur2(event.key) & 0x7FFFFFFF) % partitions if partitions else 0
        if payload["event_id"] in outcome.rows:
            outcome.duplicates += 1
        elif moment < newest[partition] - HOUR_MS:
            outcome.quarantined["late_beyond_watermark"] += 1
        else:
            outcome.rows.add(payload["event_id"])
            newest[partition] = max(newest[partition], moment)
    return outcome


def running_newest(events: tuple[SimulatedEvent, ...]) -> list[int | None]:
    """For each event, the newest readable event time among the events emitted before it."""
    result: list[int | None] = []
    high: int | None = None
    for event in events:
        result.append(high)
        if event.kind != "malformed":
            moment = time_of(parse(event))
            assert moment is not None
            high = moment if high is None else max(high, moment)
    return result


# --- determinism ------------------------------------------------------------------------------------------


def test_same_arguments_give_byte_identical_streams() -> None:
    first = list(generate_events(3_000, seed=5, days=4))
    again = list(generate_events(3_000, seed=5, days=4))
    assert first == again
    assert len(first) == 3_000


def test_different_seed_or_run_gives_a_different_stream() -> None:
    base = [event.value for event in generate_events(500, seed=5)]
    assert base != [event.value for event in generate_events(500, seed=6)]
    fresh = {event.event_id for event in generate_events(500, seed=5, run=1)} - {None}
    assert fresh.isdisjoint(event.event_id for event in generate_events(500, seed=5))


def test_a_later_run_covers_the_following_days_with_the_same_users() -> None:
    first, second = stream(2_000, days=3), stream(2_000, days=3, run=1)
    times_first = [time_of(parse(e)) for e in first if e.kind == "valid"]
    times_second = [time_of(parse(e)) for e in second if e.kind == "valid"]
    boundary = DEFAULT_START + timedelta(days=3)
    boundary_ms = (boundary - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert max(t for t in times_first if t is not None) < boundary_ms
    assert min(t for t in times_second if t is not None) > boundary_ms
    homes = {parse(e)["user_id"]: parse(e)["country"] for e in first if e.kind == "valid"}
    shared = [e for e in second if e.kind == "valid" and parse(e)["user_id"] in homes]
    assert shared
    assert all(homes[parse(e)["user_id"]] == parse(e)["country"] for e in shared)


# --- counts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [10_000, 20_000])
def test_counts_by_kind_follow_the_flaw_rates(count: int) -> None:
    flaws = Flaws()
    kinds = Counter(event.kind for event in stream(count))
    assert sum(kinds.values()) == count
    expected = {
        "duplicate": count * flaws.duplicate_rate,
        "late": count * flaws.late_rate,
        "very_late": count * flaws.very_late_rate,
        "malformed": count * flaws.malformed_rate,
    }
    for kind, wanted in expected.items():
        assert abs(kinds[kind] - wanted) <= 1, kind
    assert kinds["valid"] == count - sum(kinds[kind] for kind in expected)
    assert set(kinds) == set(KINDS)


def test_no_flaws_gives_a_clean_stream() -> None:
    events = list(generate_events(2_000, flaws=Flaws.none()))
    assert {event.kind for event in events} == {"valid"}
    assert all(quarantine_reason(event.value) is None for event in events)
    assert len({event.event_id for event in events}) == 2_000


def test_zero_events_is_an_empty_stream() -> None:
    assert list(generate_events(0)) == []


# --- the payloads -----------------------------------------------------------------------------------------


def test_valid_events_carry_the_contract_fields() -> None:
    events = [e for e in stream(10_000) if e.kind in ("valid", "late", "very_late")]
    for event in events:
        payload = parse(event)
        assert quarantine_reason(event.value) is None
        assert tuple(payload) == (V1_FIELDS if payload["schema_version"] == 1 else V2_FIELDS)
        assert payload["event_id"] == event.event_id
        assert uuid.UUID(payload["event_id"]).version == 4
        assert re.fullmatch(r"u-\d{6}", payload["user_id"])
        assert event.key == payload["user_id"].encode()
        assert payload["event_type"] in EVENT_TYPES
        assert payload["platform"] in PLATFORMS
        assert payload["channel"] in CHANNELS
        assert currency_of(payload) == COUNTRY_CURRENCY[payload["country"]]
        device = payload["device"]
        if payload["platform"] == "web":
            assert device["type"] in ("desktop", "mobile", "tablet")
            assert device["os"] in ("Windows", "macOS", "Linux", "Android", "iOS")
            assert device["app_version"] is None
        else:
            assert device["type"] in ("mobile", "tablet")
            assert device["os"] == ("iOS" if payload["platform"] == "ios" else "Android")
            assert re.fullmatch(r"\d+\.\d+\.\d+", device["app_version"])
        if payload["event_type"] in ("product_view", "add_to_cart"):
            assert re.fullmatch(r"p-\d{4}", payload["product_id"])
            assert payload["price"] > 0
        if payload["event_type"] == "purchase":
            assert revenue_of(payload) > 0
            assert payload["quantity"] >= 1
            assert payload["order_id"].startswith("o-")
        if payload["country"] == "JP" and payload["price"] is not None:
            assert payload["price"] == int(payload["price"])


def test_the_stream_looks_like_real_traffic() -> None:
    events = [parse(e) for e in stream(20_000) if e.kind == "valid"]
    users = {p["user_id"] for p in events}
    assert 20_000 / 15 * 0.6 < len(users) <= 20_000 / 15
    platforms_per_user: dict[str, set[str]] = defaultdict(set)
    for p in events:
        platforms_per_user[p["user_id"]].add(p["platform"])
    assert any(len(used) == 2 for used in platforms_per_user.values())
    assert {p["platform"] for p in events} == set(PLATFORMS)
    assert {p["channel"] for p in events} == set(CHANNELS)
    assert len({p["device"]["app_version"] for p in events if p["platform"] != "web"}) >= 3
    products = {p["product_id"] for p in events if p["product_id"]}
    assert 100 < len(products) <= 200
    prices: dict[tuple[str, str], set[float]] = defaultdict(set)
    for p in events:
        if p["event_type"] == "product_view":
            prices[(p["product_id"], currency_of(p))].add(p["price"])
    assert all(len(seen) == 1 for seen in prices.values())  # a product has one price per currency
    hours = Counter(time_of(p) // HOUR_MS % 24 for p in events)  # type: ignore[operator]
    by_hour = [hours[h] for h in range(24)]
    assert max(by_hour) > 2 * min(by_hour)  # a daily rhythm, not a flat line


def test_purchase_revenue_is_the_sum_of_the_cart() -> None:
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in stream(20_000):
        if event.kind in ("valid", "late", "very_late"):
            payload = parse(event)
            if payload["session_id"]:
                sessions[payload["session_id"]].append(payload)
    checked = 0
    for payloads in sessions.values():
        purchases = [p for p in payloads if p["event_type"] == "purchase"]
        if not purchases:
            continue
        cart = sum(p["quantity"] * p["price"] for p in payloads if p["event_type"] == "add_to_cart")
        units = sum(p["quantity"] for p in payloads if p["event_type"] == "add_to_cart")
        assert revenue_of(purchases[0]) == pytest.approx(cart, abs=0.51)
        assert purchases[0]["quantity"] == units
        checked += 1
    assert checked > 50


def test_v1_before_the_switch_and_v2_after() -> None:
    events = stream(10_000)
    switch = int(Flaws().schema_v2_from * len(events))
    for position, event in enumerate(events):
        if event.kind == "duplicate" or quarantine_reason(event.value) == "malformed_json":
            continue
        payload = parse(event)
        assert payload["schema_version"] == (1 if position < switch else 2), position
        if payload["schema_version"] == 2 and payload["event_type"] != "purchase":
            assert payload["amount"]["value"] is None


@pytest.mark.parametrize(("switch", "versions"), [(1.0, {1}), (0.0, {2})])
def test_the_switch_point_can_be_moved(switch: float, versions: set[int]) -> None:
    events = generate_events(1_000, flaws=Flaws(schema_v2_from=switch, malformed_rate=0.0))
    assert {parse(event)["schema_version"] for event in events} == versions


def test_v2_event_time_is_iso_utc_with_milliseconds() -> None:
    payload = next(parse(e) for e in stream(10_000) if e.kind == "valid" and b'"schema_version":2' in e.value)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", payload["event_time"])
    assert event_time_ms(payload) == time_of(payload)
    with pytest.raises(DataError, match="quarantine"):
        event_time_ms({"schema_version": 1, "ts": "yesterday"})


# --- the flaws --------------------------------------------------------------------------------------------


def test_duplicates_resend_an_earlier_valid_or_late_record_byte_for_byte() -> None:
    events = stream(10_000)
    seen: dict[tuple[bytes, bytes], str] = {}
    immediate = 0
    for position, event in enumerate(events):
        if event.kind == "duplicate":
            assert seen.get((event.key, event.value)) in ("valid", "late")
            immediate += events[position - 1].value == event.value
        elif event.kind in ("valid", "late"):
            seen[(event.key, event.value)] = event.kind
    duplicates = sum(e.kind == "duplicate" for e in events)
    assert 0 < immediate < duplicates  # some right after the original, some later in the stream


def test_out_of_order_events_sit_where_the_watermark_puts_them() -> None:
    events = stream(20_000)
    for event, newest in zip(events, running_newest(events), strict=True):
        if event.kind == "malformed":
            moment = time_of(parse(event)) if quarantine_reason(event.value) != "malformed_json" else None
            assert moment is None or newest is None or moment <= newest  # cannot move a watermark
            continue
        moment = time_of(parse(event))
        assert moment is not None
        behind = 0 if newest is None else newest - moment
        if event.kind == "valid":
            assert behind <= 0
        elif event.kind == "late":
            assert 2 * MINUTE_MS <= behind <= 50 * MINUTE_MS
        elif event.kind == "very_late":
            assert 3 * HOUR_MS <= behind <= 13 * HOUR_MS
        else:
            assert behind <= 55 * MINUTE_MS


def test_malformed_events_cover_every_case_and_are_all_rejected() -> None:
    cases: Counter[str] = Counter()
    for event in stream(10_000):
        if event.kind != "malformed":
            continue
        reason = quarantine_reason(event.value)
        assert reason is not None
        try:
            payload = json.loads(event.value)
        except ValueError:
            cases["truncated_json"] += 1
            continue
        if isinstance(payload, list):
            assert quarantine_reason(json.dumps(payload[0]).encode()) is None  # an otherwise fine event
            cases["json_array"] += 1
        elif "event_id" not in payload:
            assert event.event_id is None
            cases["missing_event_id"] += 1
        elif payload["event_type"] == "hover":
            cases["unknown_event_type"] += 1
        elif payload.get("ts", payload.get("event_time")) == "yesterday":
            cases["unparseable_time"] += 1
        else:
            assert payload["event_type"] == "purchase"
            assert revenue_of(payload) < 0
            cases["negative_revenue"] += 1
    assert set(cases) == set(MALFORMED_CASES)
    assert max(cases.values()) - min(cases.values()) <= 1


@pytest.mark.parametrize(("count", "seed", "days"), [(20_000, 7, 14), (3_000, 11, 5), (10_000, 3, 2)])
def test_silver_reconciles_exactly_with_the_ground_truth(count: int, seed: int, days: int) -> None:
    events = stream(count, seed=seed, days=days)
    kinds = Counter(event.kind for event in events)
    for partitions in (None, 2, 3):
        outcome = run_silver(events, partitions)
        assert len(outcome.rows) == kinds["valid"] + kinds["late"], partitions
        assert outcome.quarantined["late_beyond_watermark"] == kinds["very_late"], partitions
        assert sum(outcome.quarantined.values()) == kinds["malformed"] + kinds["very_late"], partitions
        assert outcome.duplicates == kinds["duplicate"], partitions


# --- sessions and conversion ------------------------------------------------------------------------------


def test_sessions_of_one_user_are_hours_apart_and_events_within_minutes() -> None:
    per_user: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    for event in stream(20_000):
        if event.kind in ("valid", "late"):
            payload = parse(event)
            moment = time_of(payload)
            assert moment is not None
            per_user[payload["user_id"]].append((moment, payload["session_id"]))
    gaps = 0
    for visits in per_user.values():
        visits.sort()
        for (before, session_before), (after, session_after) in itertools.pairwise(visits):
            gap = after - before
            assert gap <= 10 * MINUTE_MS or gap > 2 * HOUR_MS
            if session_before and session_after:
                assert (session_before == session_after) == (gap <= 10 * MINUTE_MS)
            gaps += gap > 30 * MINUTE_MS
    assert gaps > 1_000


def _conversion(
    events: tuple[SimulatedEvent, ...], attribute: Callable[[dict[str, Any]], str]
) -> dict[str, float]:
    sessions: dict[str, tuple[str, bool]] = {}
    for event in events:
        if event.kind != "valid":
            continue
        payload = parse(event)
        key = payload["session_id"]
        if key is None:
            continue
        bought = sessions.get(key, ("", False))[1] or payload["event_type"] == "purchase"
        sessions[key] = (attribute(payload), bought)
    totals: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    for group, bought in sessions.values():
        totals[group] += 1
        converted[group] += bought
    return {group: converted[group] / totals[group] for group in totals}


def test_conversion_depends_on_channel_and_platform() -> None:
    events = stream(60_000)
    by_channel = _conversion(events, lambda p: p["channel"])
    assert by_channel["email"] > 1.5 * by_channel["social"]
    assert by_channel["paid_search"] > by_channel["organic"]
    by_device = _conversion(events, lambda p: f"{p['platform']}/{p['device']['type']}")
    assert by_device["web/desktop"] > 1.4 * by_device["web/mobile"]
    assert 0.02 < sum(by_channel.values()) / len(by_channel) < 0.25


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [{"count": -1}, {"count": 10, "days": 0}, {"count": 10, "run": -1}],
)
def test_bad_arguments_are_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        generate_events(**arguments)


@pytest.mark.parametrize(
    "arguments",
    [{"late_rate": -0.1}, {"schema_v2_from": 1.5}, {"duplicate_rate": 0.5, "malformed_rate": 0.5}],
)
def test_bad_flaws_are_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=r"Flaws\.|flaw rates"):
        Flaws(**arguments)


def test_more_sessions_than_the_days_can_hold_is_refused() -> None:
    one_user = simulator._users(seed=1, count=1)
    with pytest.raises(ConfigError, match="raise days"):
        simulator._sessions(random.Random(1), one_user, needed=3_000, window_start=0, days=1)


def test_naive_start_is_taken_as_utc() -> None:
    aware = list(generate_events(50, start=datetime(2024, 1, 1, tzinfo=UTC)))
    naive = list(generate_events(50, start=datetime(2024, 1, 1)))
    assert aware == naive


# --- pacing -----------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_spaces_events_at_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, clock=clock, sleep=clock.sleep)
    for _ in range(11):
        pacer.wait()
    assert clock.now - 100.0 == pytest.approx(0.1)  # 11 events at 100/s: the first at once, 10 gaps
    assert clock.slept == pytest.approx([0.01] * 10)


def test_pacer_batches_waits_too_short_to_sleep() -> None:
    clock = FakeClock()
    pacer = Pacer(10_000.0, clock=clock, sleep=clock.sleep, min_sleep=0.002)
    for _ in range(1_001):
        pacer.wait()
    assert clock.now - 100.0 == pytest.approx(0.1, abs=0.002)
    assert len(clock.slept) < 100
    assert min(clock.slept) >= 0.002


def test_pacer_counts_the_time_spent_sending() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    pacer.wait()
    clock.now += 0.04  # sending took 40 ms of the 100 ms slot
    assert pacer.wait() == pytest.approx(0.06)


def test_pacer_does_not_burst_after_falling_behind() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep, max_lag=1.0)
    pacer.wait()
    clock.now += 5.0  # a stalled broker
    assert pacer.wait() == 0.0
    assert pacer.wait() == pytest.approx(0.1)


def test_pacer_at_rate_zero_never_waits() -> None:
    clock = FakeClock()
    pacer = Pacer(0, clock=clock, sleep=clock.sleep)
    assert all(pacer.wait() == 0.0 for _ in range(100))
    assert clock.slept == []


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ConfigError, match="rate"):
        Pacer(-1.0)


# --- producing --------------------------------------------------------------------------------------------


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self._error = error

    def add_errback(self, callback: Callable[[Exception], None]) -> FakeFuture:
        if self._error is not None:
            callback(self._error)
        return self


class FakeProducer:
    def __init__(self, bootstrap_servers: str, fail_at: int | None = None, flush_error: bool = False) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.records: list[tuple[str, bytes, bytes]] = []
        self.fail_at = fail_at
        self.flush_error = flush_error
        self.flushed = False
        self.closed = False

    def send(self, topic: str, key: bytes, value: bytes) -> FakeFuture:
        self.records.append((topic, key, value))
        failed = self.fail_at is not None and len(self.records) > self.fail_at
        return FakeFuture(KafkaTimeoutError("Batch expired") if failed else None)

    def flush(self, timeout: float | None = None) -> None:
        if self.flush_error:
            raise KafkaTimeoutError("Timeout after waiting for 60 secs.")
        self.flushed = True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


@pytest.fixture
def producers(monkeypatch: pytest.MonkeyPatch) -> list[FakeProducer]:
    made: list[FakeProducer] = []

    def connect(bootstrap_servers: str) -> FakeProducer:
        made.append(FakeProducer(bootstrap_servers))
        return made[-1]

    monkeypatch.setattr(simulator, "_connect", connect)
    return made


def test_produce_sends_every_record_and_reports_by_kind(producers: list[FakeProducer]) -> None:
    events = list(generate_events(1_000, seed=3))
    report = produce(events, bootstrap_servers="broker:9092", topic="clicks")
    (producer,) = producers
    assert producer.records == [("clicks", event.key, event.value) for event in events]
    assert producer.flushed and producer.closed
    assert report.sent == 1_000
    assert report.by_kind == dict(Counter(event.kind for event in events))
    assert report.events_per_second > 0


def test_a_failed_send_is_a_service_error(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer("broker:9092", fail_at=10)
    monkeypatch.setattr(simulator, "_connect", lambda servers: producer)
    with pytest.raises(ServiceError, match=r"topic 'clicks'.*Batch expired.*lakehouse up"):
        produce(generate_events(100), bootstrap_servers="broker:9092", topic="clicks")
    assert len(producer.records) == 11
    assert producer.closed


def test_a_flush_timeout_is_a_service_error(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer("broker:9092", flush_error=True)
    monkeypatch.setattr(simulator, "_connect", lambda servers: producer)
    with pytest.raises(ServiceError, match=r"topic 'clicks'.*Timeout"):
        produce(generate_events(10), bootstrap_servers="broker:9092", topic="clicks")
    assert producer.closed


def test_simulate_to_kafka_takes_its_defaults_from_settings(
    settings: Settings, producers: list[FakeProducer]
) -> None:
    report = simulate_to_kafka(settings)
    (producer,) = producers
    assert producer.bootstrap_servers == settings.kafka.bootstrap_servers
    assert report.sent == settings.simulator.events
    expected = generate_events(
        settings.simulator.events, seed=settings.simulator.seed, days=settings.simulator.days
    )
    assert producer.records == [(TOPIC, event.key, event.value) for event in expected]
    again = simulate_to_kafka(settings, count=100, seed=1, run=2)
    assert again.sent == 100
    assert (
        producers[1].records[0][2]
        == next(generate_events(100, seed=1, run=2, days=settings.simulator.days)).value
    )


def test_an_unreachable_broker_fails_fast_with_what_to_do() -> None:
    began = time.monotonic()
    with pytest.raises(ServiceError, match="lakehouse up"):
        produce(generate_events(10), bootstrap_servers="127.0.0.1:1", topic="clicks")
    assert time.monotonic() - began < 15  # not kafka-python's 30-second bootstrap wait


def test_the_kafka_client_itself_fails_fast_when_bootstrap_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # Skip the TCP pre-check so the KafkaProducer constructor meets the closed port itself.
    from lakehouse import kafka_clients

    monkeypatch.setattr(kafka_clients, "require_broker", lambda servers: None)
    monkeypatch.setattr(simulator, "_BOOTSTRAP_TIMEOUT_MS", 500)
    with pytest.raises(ServiceError, match="lakehouse up"):
        produce(generate_events(10), bootstrap_servers="127.0.0.1:1", topic="clicks")


def test_report_is_a_frozen_value() -> None:
    report = ProduceReport(sent=1, by_kind={"valid": 1}, seconds=1.0, events_per_second=1.0)
    with pytest.raises(AttributeError):
        report.sent = 2  # type: ignore[misc]


def test_a_drift_scenario_is_a_new_cohort_of_its_own_mix() -> None:
    from lakehouse.cli import SCENARIO_NAMES
    from lakehouse.simulate.clickstream import SCENARIOS

    assert set(SCENARIO_NAMES) == set(SCENARIOS)
    clean = Flaws(duplicate_rate=0, late_rate=0, very_late_rate=0, malformed_rate=0, schema_v2_from=0.0)

    def events(scenario: str | None) -> list[dict[str, Any]]:
        made = generate_events(3_000, seed=7, run=1, flaws=clean, scenario=scenario)
        return [json.loads(e.value) for e in made]

    baseline, campaign = events(None), events("mobile_campaign")
    assert all(e["user_id"].startswith("u-mobile-campaign-r1-") for e in campaign)
    assert {e["channel"] for e in campaign} <= {"social", "referral"}
    assert {e["platform"] for e in campaign} <= {"android", "ios"}
    assert {e["country"] for e in campaign} <= {"IN", "BR"}

    def purchase_share(stream: list[dict[str, Any]]) -> float:
        kinds = Counter(e["event_type"] for e in stream)
        return kinds["purchase"] / kinds["page_view"]

    assert purchase_share(campaign) < purchase_share(baseline) / 2  # they rarely buy
    # the same window as run 1's: later than run 0, like any other run
    assert min(e["event_time"] for e in campaign)[:10] == min(e["event_time"] for e in baseline)[:10]
    assert events("mobile_campaign") == campaign  # deterministic
    with pytest.raises(ConfigError, match="unknown scenario 'heatwave'"):
        generate_events(10, scenario="heatwave")
