"""A deterministic web/mobile clickstream simulator and its Kafka producer.

The generator builds a population of users (home country, acquisition channel, one or two platforms),
spreads their sessions over a number of days with an evening peak, walks each session down the funnel
(page_view → search / product_view → add_to_cart → checkout → purchase) with drop-off that depends on channel
and platform, sorts everything by event time and then injects the flaws a real stream has: duplicates,
late and very late events, malformed payloads and a mid-stream change of payload version.

Every emitted event carries its ground truth (:attr:`SimulatedEvent.kind`), so silver's result can be
reconciled exactly: ``silver rows = valid + late``, ``quarantine = malformed + very_late`` and
``duplicates removed = duplicate``.

Guarantees, in the order the events are emitted:

* a ``valid`` event is never older than the newest event time emitted before it;
* a ``late`` event is 2-50 minutes older than the newest event time emitted before it;
* a ``very_late`` event is at least 3 hours older than the newest event time emitted before it: it follows
  the same user's next event 3-12 hours later (same key, so this holds within its Kafka partition too);
* a ``duplicate`` re-sends the exact key and value bytes of an earlier ``valid`` or ``late`` event, at most
  55 minutes behind the newest event time emitted before it (so a 1-hour watermark never drops it);
* a ``malformed`` event is never newer than the newest event time emitted before it.

Example:
    >>> events = list(generate_events(1_000, seed=7))
    >>> sorted({event.kind for event in events})
    ['duplicate', 'late', 'malformed', 'valid', 'very_late']
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
import random
import time
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any, Final

from kafka.errors import KafkaError
from tqdm import tqdm

from lakehouse import kafka_clients
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError, ServiceError
from lakehouse.simulate.event_contract import CHANNELS, COUNTRY_CURRENCY, PLATFORMS, TOPIC

log = logging.getLogger(__name__)

KINDS: Final = ("valid", "duplicate", "late", "very_late", "malformed")
MALFORMED_CASES: Final = (
    "truncated_json",
    "json_array",
    "missing_event_id",
    "unknown_event_type",
    "unparseable_time",
    "negative_revenue",
)
DEFAULT_START: Final = datetime(2024, 11, 1, tzinfo=UTC)

_SECOND: Final = 1_000
_MINUTE: Final = 60 * _SECOND
_HOUR: Final = 60 * _MINUTE
_DAY: Final = 24 * _HOUR
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# Flaw geometry (ms). Late stays well inside a 1-hour watermark, very late well beyond it.
_LATE_MIN: Final = 2 * _MINUTE
_LATE_MAX: Final = 50 * _MINUTE
_VERY_LATE_MIN: Final = 3 * _HOUR
_VERY_LATE_MAX: Final = 12 * _HOUR
_DUPLICATE_MAX_BEHIND: Final = 55 * _MINUTE
# Two sessions of one user are at least this far apart (gold splits sessions on a 30-minute gap).
_SESSION_SEPARATION: Final = 2 * _HOUR
_WINDOW_MARGIN: Final = 30 * _MINUTE

# --- the world the users live in (illustrative numbers) ---------------------------------------------------

_COUNTRY_WEIGHT: Final = {
    "US": 0.25, "DE": 0.12, "GB": 0.10, "IN": 0.10, "FR": 0.08, "BR": 0.09,
    "JP": 0.08, "ES": 0.06, "CA": 0.06, "NL": 0.04,
}  # fmt: skip
_COUNTRY_UTC_OFFSET_MIN: Final = {
    "US": -300, "CA": -300, "BR": -180, "GB": 0, "DE": 60, "FR": 60, "NL": 60, "ES": 60,
    "IN": 330, "JP": 540,
}  # fmt: skip
# Units of the local currency per USD, and how many decimals a price has.
_CURRENCY_PER_USD: Final = {
    "USD": 1.0, "EUR": 0.92, "GBP": 0.79, "CAD": 1.36, "JPY": 150.0, "BRL": 5.0, "INR": 83.0,
}  # fmt: skip
_CURRENCY_DECIMALS: Final = {"JPY": 0}

_CHANNEL_WEIGHT: Final = {
    "organic": 0.30, "paid_search": 0.20, "social": 0.15, "email": 0.10, "direct": 0.15, "referral": 0.10,
}  # fmt: skip
# How much more (or less) likely than average a session from this channel is to go down the funnel.
_CHANNEL_INTENT: Final = {
    "organic": 0.95, "paid_search": 1.35, "social": 0.55, "email": 1.6, "direct": 1.15, "referral": 0.9,
}  # fmt: skip
_CHANNEL_BOUNCE: Final = {
    "organic": 1.0, "paid_search": 0.8, "social": 1.5, "email": 0.7, "direct": 0.9, "referral": 1.1,
}  # fmt: skip
_PLATFORM_WEIGHT: Final = {"web": 0.55, "ios": 0.25, "android": 0.20}


@dataclass(frozen=True)
class Scenario:
    """A change in who comes and how they behave, for the drift tests of a model (``--scenario``).

    It applies to a whole run: run ``n`` covers the ``days`` after run ``n - 1``, so ``--run 2 --scenario
    mobile_campaign`` is "from the start of the third window on". Its users are a new cohort (their ids say
    so), so their history starts with them.

    Attributes:
        name: how the CLI calls it.
        description: one line for ``lakehouse simulate --help``.
        channel_weight, platform_weight, country_weight: the cohort's mix (missing keys keep their weight
            out: a zero share).
        intent: multiplies every session's chance to go down the funnel (below 1: fewer carts and orders).
        bounce: multiplies the chance to leave after the landing page.
    """

    name: str
    description: str
    channel_weight: Mapping[str, float]
    platform_weight: Mapping[str, float]
    country_weight: Mapping[str, float]
    intent: float = 1.0
    bounce: float = 1.0


SCENARIOS: Final = {
    "mobile_campaign": Scenario(
        name="mobile_campaign",
        description="a social-media campaign brings new mobile users from India and Brazil who rarely buy",
        channel_weight={"social": 0.8, "referral": 0.2},
        platform_weight={"android": 0.7, "ios": 0.3},
        country_weight={"IN": 0.6, "BR": 0.4},
        intent=0.45,
        bounce=1.4,
    ),
}
_SECOND_PLATFORM_SHARE: Final = 0.25  # of users
_SECOND_PLATFORM_SESSIONS: Final = 0.3  # of such a user's sessions
_APP_VERSIONS: Final = ("4.8.0", "5.0.3", "5.1.0", "5.2.1", "5.3.0")
_APP_VERSION_WEIGHT: Final = (0.06, 0.14, 0.25, 0.35, 0.20)
# Old app builds never send a client session id (gold rebuilds sessions from the inactivity gap).
_NO_SESSION_ID_VERSIONS: Final = frozenset({"4.8.0"})
_CONSENT_SHARE: Final = 0.88

# Share of traffic by local hour of day: quiet at night, peak in the evening.
_DIURNAL: Final = (
    0.50, 0.30, 0.20, 0.15, 0.15, 0.20, 0.40, 0.70, 1.00, 1.10, 1.10, 1.20,
    1.30, 1.20, 1.10, 1.10, 1.20, 1.40, 1.70, 2.00, 2.10, 1.90, 1.40, 0.90,
)  # fmt: skip
_DIURNAL_CUM: Final = tuple(accumulate(_DIURNAL))

_BOUNCE: Final = 0.30
_CART: Final = 0.24
_CHECKOUT: Final = 0.62
_PURCHASE: Final = 0.72

_CATEGORIES: Final = {
    "electronics": ("headphones", "usb-c charger", "bluetooth speaker", "smartwatch"),
    "home": ("coffee maker", "bed sheets", "desk lamp", "storage box"),
    "fashion": ("sneakers", "rain jacket", "wool scarf", "backpack"),
    "beauty": ("face cream", "shampoo", "sunscreen", "perfume"),
    "sports": ("yoga mat", "running shoes", "water bottle", "dumbbells"),
    "toys": ("lego", "puzzle", "board game", "plush bear"),
    "books": ("cookbook", "thriller", "travel guide", "kids book"),
    "garden": ("garden hose", "plant pot", "seeds", "pruning shears"),
}
_CATEGORY_PRICE_USD: Final = {
    "electronics": 80.0, "home": 45.0, "fashion": 55.0, "beauty": 22.0,
    "sports": 35.0, "toys": 25.0, "books": 15.0, "garden": 20.0,
}  # fmt: skip
_CATALOG_SIZE: Final = 200
_CATALOG_SEED: Final = 20241101  # the catalog is the same for every seed: p-0042 always costs the same


@dataclass(frozen=True, slots=True)
class _Product:
    product_id: str
    category: str
    price_usd: float


def _build_catalog() -> tuple[tuple[_Product, ...], dict[str, tuple[list[_Product], list[float]]]]:
    rng = random.Random(_CATALOG_SEED)
    names = list(_CATEGORIES)
    products = []
    for number in range(1, _CATALOG_SIZE + 1):
        category = names[(number - 1) % len(names)]
        price = _CATEGORY_PRICE_USD[category] * rng.lognormvariate(0.0, 0.55)
        products.append(_Product(f"p-{number:04d}", category, round(max(price, 2.0)) - 0.01))
    by_category: dict[str, tuple[list[_Product], list[float]]] = {}
    for category in names:
        members = [product for product in products if product.category == category]
        rng.shuffle(members)
        # Zipf-like popularity: a few best sellers, a long tail.
        weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(members))]
        by_category[category] = (members, list(accumulate(weights)))
    return tuple(products), by_category


_PRODUCTS, _BY_CATEGORY = _build_catalog()


def _local_price(price_usd: float, currency: str) -> float:
    return float(round(price_usd * _CURRENCY_PER_USD[currency], _CURRENCY_DECIMALS.get(currency, 2)))


# --- public types -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flaws:
    """How dirty the simulated stream is. Rates are fractions of the requested event count.

    Attributes:
        duplicate_rate: events re-sent with the exact same key and value bytes (right after the original
            or later in the stream, always within the 1-hour watermark).
        late_rate: events emitted out of order, 2-50 minutes behind the newest event time already sent.
        very_late_rate: events 3-12 hours behind the newest event time already sent (beyond the watermark).
        malformed_rate: payloads silver must quarantine, an even mix of :data:`MALFORMED_CASES`.
        schema_v2_from: fraction of the stream after which clients send ``schema_version`` 2
            (0.0: all v2, 1.0: never).

    Example:
        >>> Flaws(duplicate_rate=0.05).late_rate
        0.03
    """

    duplicate_rate: float = 0.02
    late_rate: float = 0.03
    very_late_rate: float = 0.005
    malformed_rate: float = 0.01
    schema_v2_from: float = 0.5

    def __post_init__(self) -> None:
        for name in ("duplicate_rate", "late_rate", "very_late_rate", "malformed_rate", "schema_v2_from"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"Flaws.{name} must be a fraction between 0 and 1 (got {value!r})")
        flawed = self.duplicate_rate + self.late_rate + self.very_late_rate + self.malformed_rate
        if flawed >= 1.0:
            raise ConfigError(
                f"the flaw rates add up to {flawed:.3f}: keep their sum below 1 so some events stay valid"
            )

    @classmethod
    def none(cls, schema_v2_from: float = 0.5) -> Flaws:
        """A clean stream: no duplicates, late or malformed events.

        Both payload versions are legitimate, so the version switch stays (pass ``schema_v2_from=1.0``
        for a v1-only stream).
        """
        return cls(0.0, 0.0, 0.0, 0.0, schema_v2_from)


DEFAULT_FLAWS: Final = Flaws()


@dataclass(frozen=True, slots=True)
class SimulatedEvent:
    """One Kafka record of the simulated stream, with its ground truth.

    Attributes:
        key: the user id (UTF-8), so one user's events stay ordered in one partition.
        value: the payload, compact UTF-8 JSON (or deliberately broken bytes when ``kind`` is malformed).
        kind: one of :data:`KINDS` — what silver should do with it.
        event_id: the payload's event id (``None`` when the payload has none).
    """

    key: bytes
    value: bytes
    kind: str
    event_id: str | None


@dataclass(frozen=True)
class ProduceReport:
    """What :func:`produce` sent."""

    sent: int
    by_kind: dict[str, int]
    seconds: float
    events_per_second: float


# --- generation -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Device:
    platform: str
    type: str
    os: str
    app_version: str | None


@dataclass(frozen=True, slots=True)
class _User:
    user_id: str
    country: str
    currency: str
    channel: str
    devices: tuple[_Device, ...]
    consent: bool
    utc_offset_ms: int


@dataclass(slots=True)
class _Event:
    ts: int
    event_id: str
    event_type: str
    user: _User
    device: _Device
    session_id: str | None
    page: str
    product_id: str | None = None
    search_query: str | None = None
    quantity: int | None = None
    price: float | None = None
    revenue: float | None = None
    order_id: str | None = None


@dataclass(slots=True)
class _Step:
    offset_ms: int
    event_type: str
    page: str
    product_id: str | None = None
    search_query: str | None = None
    quantity: int | None = None
    price: float | None = None
    revenue: float | None = None
    order_id: str | None = None


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _device(rng: random.Random, platform: str) -> _Device:
    if platform == "web":
        kind = rng.choices(("desktop", "mobile", "tablet"), weights=(0.55, 0.35, 0.10))[0]
        if kind == "desktop":
            os_name = rng.choices(("Windows", "macOS", "Linux"), weights=(0.65, 0.28, 0.07))[0]
        elif kind == "mobile":
            os_name = rng.choices(("Android", "iOS"), weights=(0.6, 0.4))[0]
        else:
            os_name = rng.choices(("iOS", "Android"), weights=(0.6, 0.4))[0]
        return _Device("web", kind, os_name, None)
    kind = rng.choices(("mobile", "tablet"), weights=(0.8, 0.2) if platform == "ios" else (0.9, 0.1))[0]
    version = rng.choices(_APP_VERSIONS, weights=_APP_VERSION_WEIGHT)[0]
    return _Device(platform, kind, "iOS" if platform == "ios" else "Android", version)


def _users(seed: int, count: int, scenario: Scenario | None = None, run: int = 0) -> list[_User]:
    # The population depends on the seed only, so later runs (``run`` > 0) meet the same users again; a
    # scenario's cohort is new users of its own mix.
    rng = random.Random(f"lakehouse-users:{seed}" + (f":{scenario.name}:{run}" if scenario else ""))
    countries = {country: _COUNTRY_WEIGHT.get(country, 0.03) for country in COUNTRY_CURRENCY}
    channels = {channel: _CHANNEL_WEIGHT.get(channel, 0.1) for channel in CHANNELS}
    platforms = {platform: _PLATFORM_WEIGHT.get(platform, 0.1) for platform in PLATFORMS}
    prefix = "u-"
    if scenario is not None:
        countries = {c: scenario.country_weight[c] for c in countries if scenario.country_weight.get(c)}
        channels = {c: scenario.channel_weight[c] for c in channels if scenario.channel_weight.get(c)}
        platforms = {p: scenario.platform_weight[p] for p in platforms if scenario.platform_weight.get(p)}
        prefix = f"u-{scenario.name.replace('_', '-')}-r{run}-"
    users = []
    for number in range(1, count + 1):
        country = _pick(rng, countries)
        preferred = _pick(rng, platforms)
        devices = [_device(rng, preferred)]
        if rng.random() < _SECOND_PLATFORM_SHARE:
            other = _pick(rng, {p: w for p, w in platforms.items() if p != preferred})
            devices.append(_device(rng, other))
        users.append(
            _User(
                user_id=f"{prefix}{number:06d}",
                country=country,
                currency=COUNTRY_CURRENCY[country],
                channel=_pick(rng, channels),
                devices=tuple(devices),
                consent=rng.random() < _CONSENT_SHARE,
                utc_offset_ms=_COUNTRY_UTC_OFFSET_MIN.get(country, 0) * _MINUTE,
            )
        )
    return users


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _order_id(rng: random.Random) -> str:
    return f"o-{rng.getrandbits(48):012x}"


def _product(rng: random.Random, category: str) -> _Product:
    members, cumulative = _BY_CATEGORY[category]
    return rng.choices(members, cum_weights=cumulative)[0]


def _dwell(rng: random.Random, low: float, high: float) -> int:
    return int(rng.uniform(low, high) * _SECOND)


def _walk(rng: random.Random, user: _User, device: _Device, scenario: Scenario | None = None) -> list[_Step]:
    """One session down the funnel; offsets are ms from the session start."""
    intent = _CHANNEL_INTENT.get(user.channel, 1.0) * (scenario.intent if scenario else 1.0)
    if device.platform == "web":
        intent *= {"desktop": 1.1, "mobile": 0.55, "tablet": 0.9}[device.type]
    else:
        intent *= 1.15 if device.platform == "ios" else 1.0
    bounce = _BOUNCE * _CHANNEL_BOUNCE.get(user.channel, 1.0) * (1.25 if device.type == "mobile" else 1.0)
    bounce *= scenario.bounce if scenario else 1.0
    categories = list(_CATEGORIES)
    focus = rng.sample(categories, 2)
    landing = rng.choices(("/", f"/c/{focus[0]}", "/deals"), weights=(0.6, 0.3, 0.1))[0]
    steps = [_Step(0, "page_view", landing)]
    now = 0
    if rng.random() < min(bounce, 0.9):
        return steps

    viewed: list[_Product] = []

    def view(category: str, dwell_from: tuple[float, float]) -> None:
        nonlocal now
        product = _product(rng, category)
        now += _dwell(rng, *dwell_from)
        price = _local_price(product.price_usd, user.currency)
        steps.append(_Step(now, "product_view", f"/p/{product.product_id}", product.product_id, price=price))
        viewed.append(product)

    browse = 1
    while browse < 10 and rng.random() < 0.62:
        browse += 1
    for _ in range(browse):
        category = focus[0] if rng.random() < 0.7 else focus[1]
        roll = rng.random()
        if roll < 0.22:
            now += _dwell(rng, 3, 40)
            query = rng.choice(_CATEGORIES[category])
            steps.append(_Step(now, "search", "/search", search_query=query))
            view(category, (4, 30))
        elif roll < 0.88:
            view(category, (5, 150))
        else:
            now += _dwell(rng, 5, 60)
            steps.append(_Step(now, "page_view", f"/c/{category}"))

    if rng.random() >= min(_CART * intent, 0.9):
        return steps
    if not viewed:
        view(focus[0], (5, 60))
    lines = rng.sample(viewed, min(len(viewed), rng.choices((1, 2, 3), weights=(0.65, 0.25, 0.10))[0]))
    cart: list[tuple[int, float]] = []
    for product in lines:
        quantity = rng.choices((1, 2, 3), weights=(0.8, 0.15, 0.05))[0]
        price = _local_price(product.price_usd, user.currency)
        now += _dwell(rng, 5, 90)
        steps.append(
            _Step(now, "add_to_cart", f"/p/{product.product_id}", product.product_id, None, quantity, price)
        )
        cart.append((quantity, price))

    if rng.random() >= min(_CHECKOUT * math.sqrt(intent), 0.95):
        return steps
    units = sum(quantity for quantity, _ in cart)
    now += _dwell(rng, 10, 120)
    steps.append(_Step(now, "checkout", "/checkout", quantity=units))

    if rng.random() >= min(_PURCHASE * math.sqrt(intent), 0.97):
        return steps
    decimals = _CURRENCY_DECIMALS.get(user.currency, 2)
    revenue = float(round(sum(quantity * price for quantity, price in cart), decimals))
    now += _dwell(rng, 20, 240)
    steps.append(
        _Step(
            now,
            "purchase",
            "/checkout/confirmation",
            quantity=units,
            price=float(round(revenue / units, decimals)),  # average unit price of the order
            revenue=revenue,
            order_id=_order_id(rng),
        )
    )
    return steps


class _Calendar:
    """Places sessions in the window with an evening peak, keeping one user's sessions hours apart."""

    def __init__(self, rng: random.Random, window_start: int, days: int) -> None:
        self._rng = rng
        self._start = window_start
        self._days = days
        self._low = window_start + _WINDOW_MARGIN
        self._high = window_start + days * _DAY - _WINDOW_MARGIN
        self._busy: dict[str, list[tuple[int, int]]] = {}

    def place(self, user: _User, duration: int, attempts: int = 12) -> int | None:
        rng = self._rng
        busy = self._busy.setdefault(user.user_id, [])
        for _ in range(attempts):
            hour = rng.choices(range(24), cum_weights=_DIURNAL_CUM)[0]
            local = rng.randrange(self._days) * _DAY + hour * _HOUR + rng.randrange(_HOUR)
            begin = self._start + local - user.utc_offset_ms
            end = begin + duration
            if begin < self._low or end > self._high:
                continue
            if any(
                begin < other_end + _SESSION_SEPARATION and other_begin < end + _SESSION_SEPARATION
                for other_begin, other_end in busy
            ):
                continue
            busy.append((begin, end))
            return begin
        return None


def _sessions(
    rng: random.Random,
    users: list[_User],
    needed: int,
    window_start: int,
    days: int,
    scenario: Scenario | None = None,
) -> list[_Event]:
    """Exactly ``needed`` events from whole sessions (the last one cut short), sorted by event time."""
    activity = list(accumulate(min(rng.paretovariate(1.6), 15.0) for _ in users))
    calendar = _Calendar(rng, window_start, days)
    events: list[_Event] = []
    failures = 0
    while len(events) < needed:
        user = rng.choices(users, cum_weights=activity)[0]
        device = user.devices[0]
        if len(user.devices) > 1 and rng.random() < _SECOND_PLATFORM_SESSIONS:
            device = user.devices[1]
        steps = _walk(rng, user, device, scenario)
        begin = calendar.place(user, steps[-1].offset_ms)
        if begin is None:
            failures += 1
            if failures > 50 * len(users) + 1_000:
                raise ConfigError(
                    f"cannot fit {needed} events into {days} day(s) with users' sessions hours apart: "
                    "raise days or lower the event count"
                )
            continue
        session_id = None if device.app_version in _NO_SESSION_ID_VERSIONS else _uuid(rng)
        for step in steps[: needed - len(events)]:
            events.append(
                _Event(
                    ts=begin + step.offset_ms,
                    event_id=_uuid(rng),
                    event_type=step.event_type,
                    user=user,
                    device=device,
                    session_id=session_id,
                    page=step.page,
                    product_id=step.product_id,
                    search_query=step.search_query,
                    quantity=step.quantity,
                    price=step.price,
                    revenue=step.revenue,
                    order_id=step.order_id,
                )
            )
    events.sort(key=lambda event: event.ts)  # stable: a session's steps keep their order
    return events


def _iso(ts: int) -> str:
    seconds, millis = divmod(ts, _SECOND)
    moment = _EPOCH + timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


# Public IPv4 first octets per country (illustrative: real allocations, no private or reserved ranges).
_COUNTRY_IPV4: Final = {
    "US": (23, 24, 50, 64, 98), "CA": (24, 70, 142), "BR": (177, 179, 187, 189), "GB": (2, 51, 81, 86),
    "DE": (5, 46, 79, 91), "FR": (37, 78, 90, 92), "NL": (31, 77, 83), "ES": (37, 79, 88),
    "IN": (49, 103, 106, 117), "JP": (60, 106, 126, 133),
}  # fmt: skip
_IPV6_SHARE_PER_256: Final = 64  # about a quarter of clients reach us over IPv6


def client_ip(user_id: str, platform: str, country: str) -> str:
    """The client IP of a user's device: derived from the user (a hash, no random draw), so the simulator's
    seeded sequence and ground-truth counts do not depend on it and one user keeps one address per platform.

    Example:
        >>> client_ip("u-000001", "web", "DE") == client_ip("u-000001", "web", "DE")
        True
    """
    digest = hashlib.sha256(f"client-ip:{user_id}:{platform}".encode()).digest()
    if digest[0] < _IPV6_SHARE_PER_256:
        groups = [0x2A02, *(int.from_bytes(digest[i : i + 2], "big") for i in range(1, 8, 2))]
        return str(ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups) + "::" + f"{digest[9]:x}"))
    firsts = _COUNTRY_IPV4.get(country, (81,))
    first = firsts[digest[1] % len(firsts)]
    return f"{first}.{digest[2]}.{digest[3]}.{1 + digest[4] % 254}"


def _payload(event: _Event, version: int) -> dict[str, Any]:
    device = {"type": event.device.type, "os": event.device.os, "app_version": event.device.app_version}
    head: dict[str, Any] = {
        "schema_version": version,
        "event_id": event.event_id,
        "event_type": event.event_type,
    }
    if version == 1:
        head["ts"] = event.ts
    else:
        head["event_time"] = _iso(event.ts)
    body: dict[str, Any] = {
        "user_id": event.user.user_id,
        "session_id": event.session_id,
        "platform": event.device.platform,
        "device": device,
        "client_ip": client_ip(event.user.user_id, event.device.platform, event.user.country),
        "country": event.user.country,
        "channel": event.user.channel,
        "page": event.page,
        "product_id": event.product_id,
        "search_query": event.search_query,
        "quantity": event.quantity,
        "price": event.price,
    }
    if version == 1:
        tail: dict[str, Any] = {
            "revenue": event.revenue,
            "currency": event.user.currency,
            "order_id": event.order_id,
        }
    else:
        tail = {
            "amount": {"value": event.revenue, "currency": event.user.currency},
            "order_id": event.order_id,
            "consent": {"analytics": event.user.consent},
        }
    return head | body | tail


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Displacer:
    """Moves events out of order: each one is re-emitted right after a newer *anchor* event.

    Anchors stay in order and are never moved themselves, so the newest event time sent before a moved event
    is exactly its anchor's (a stream sorted by event time up to the anchor).
    """

    def __init__(self, rng: random.Random, events: list[_Event]) -> None:
        self._rng = rng
        self._events = events
        self._times = [event.ts for event in events]
        self.displaced = bytearray(len(events))
        self._anchored = bytearray(len(events))
        self.attached: dict[int, list[int]] = {}
        self._by_user: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            self._by_user.setdefault(event.user.user_id, []).append(index)

    def _candidates(self) -> list[int]:
        # Apps buffer events while offline, so out-of-order events come mostly from ios/android.
        order = list(range(len(self._events)))
        self._rng.shuffle(order)
        preferred = [i for i in order if self._events[i].device.platform != "web" or self._rng.random() < 0.3]
        chosen = set(preferred)
        return preferred + [i for i in order if i not in chosen]

    def _late_anchor(self, index: int) -> int | None:
        # Any newer event 2-50 minutes ahead: late, but well inside the 1-hour watermark.
        times = self._times
        anchor = bisect_left(times, times[index] + self._rng.randint(_LATE_MIN, _LATE_MAX), lo=index + 1)
        while anchor < len(times) and self.displaced[anchor]:
            anchor += 1
        if anchor >= len(times) or times[anchor] - times[index] > _LATE_MAX:
            return None  # a quiet stretch of the stream: the next newer event is too far ahead
        return anchor

    def _very_late_anchor(self, index: int) -> int | None:
        # The same user's next event 3-12 hours later (the app flushing its offline buffer when opened
        # again): same key, same partition, so the event is beyond the watermark in its partition too.
        times = self._times
        mine = self._by_user[self._events[index].user.user_id]
        at = bisect_left(mine, index + 1)
        while at < len(mine) and (
            times[mine[at]] < times[index] + _VERY_LATE_MIN or self.displaced[mine[at]]
        ):
            at += 1
        if at >= len(mine) or times[mine[at]] - times[index] > _VERY_LATE_MAX:
            return None
        return mine[at]

    def displace(self, wanted: int, very_late: bool) -> list[int]:
        """Move up to ``wanted`` events; returns the moved ones."""
        find = self._very_late_anchor if very_late else self._late_anchor
        moved: list[int] = []
        for index in self._candidates():
            if len(moved) == wanted:
                break
            if self.displaced[index] or self._anchored[index]:
                continue
            anchor = find(index)
            if anchor is None:
                continue
            self.displaced[index] = 1
            self._anchored[anchor] = 1
            self.attached.setdefault(anchor, []).append(index)
            moved.append(index)
        return moved


def _malformed(rng: random.Random, case: str, template: _Event, ts: int, version: int) -> SimulatedEvent:
    event_id = _uuid(rng)
    clone = _Event(
        ts=ts,
        event_id=event_id,
        event_type=template.event_type,
        user=template.user,
        device=template.device,
        session_id=template.session_id,
        page=template.page,
        product_id=template.product_id,
        search_query=template.search_query,
        quantity=template.quantity,
        price=template.price,
        revenue=template.revenue,
        order_id=template.order_id,
    )
    if case == "negative_revenue":
        product = _PRODUCTS[rng.randrange(len(_PRODUCTS))]
        price = _local_price(product.price_usd, template.user.currency)
        clone.event_type, clone.page = "purchase", "/checkout/confirmation"
        clone.product_id, clone.search_query = None, None
        clone.quantity, clone.price, clone.revenue = 1, price, -price
        clone.order_id = _order_id(rng)
    elif case == "unknown_event_type":
        clone.event_type = "hover"
        clone.quantity, clone.revenue, clone.order_id = None, None, None
    elif clone.order_id is not None:
        clone.order_id = _order_id(rng)  # a broken copy of a purchase must not share the real order id
    payload = _payload(clone, version)
    key = template.user.user_id.encode("utf-8")
    if case == "missing_event_id":
        del payload["event_id"]
        return SimulatedEvent(key, _dumps(payload), "malformed", None)
    if case == "unparseable_time":
        payload["ts" if version == 1 else "event_time"] = "yesterday"
    if case == "json_array":
        return SimulatedEvent(key, _dumps([payload]), "malformed", event_id)
    value = _dumps(payload)
    if case == "truncated_json":
        value = value[: rng.randint(len(value) // 3, len(value) - 2)]
    return SimulatedEvent(key, value, "malformed", event_id)


def _stream(
    count: int,
    seed: int,
    run: int,
    window_start: int,
    days: int,
    flaws: Flaws,
    scenario: Scenario | None = None,
) -> Iterator[SimulatedEvent]:
    rng = random.Random(f"lakehouse-clickstream:{seed}:{run}" + (f":{scenario.name}" if scenario else ""))
    duplicates = round(count * flaws.duplicate_rate)
    malformed = round(count * flaws.malformed_rate)
    late = round(count * flaws.late_rate)
    very_late = round(count * flaws.very_late_rate)
    needed = count - duplicates - malformed
    if needed <= 0:
        return
    users = _users(seed, max(1, round(count / 15)), scenario, run)
    events = _sessions(rng, users, needed, window_start, days, scenario)

    # Late and very late events leave their place and follow a newer anchor event.
    displacer = _Displacer(rng, events)
    kinds = ["valid"] * len(events)
    for kind, wanted in (("very_late", very_late), ("late", late)):
        moved = displacer.displace(wanted, very_late=kind == "very_late")
        for index in moved:
            kinds[index] = kind
        if len(moved) < wanted:
            log.warning(
                "only %d of %d %s events fit this stream (too short or too sparse); the rest stay valid",
                len(moved),
                wanted,
                kind,
            )
    displaced, attached = displacer.displaced, displacer.attached

    sequence: list[int] = []
    for index in range(len(events)):
        if not displaced[index]:
            sequence.append(index)
            sequence.extend(attached.get(index, ()))
    position = [0] * len(events)
    newest: list[int] = []  # newest event time sent up to and including each sequence position
    high = -(2**63)
    for slot, index in enumerate(sequence):
        position[index] = slot
        high = max(high, events[index].ts)
        newest.append(high)

    # Extra records slotted in after a sequence position: duplicates and malformed payloads.
    extras: dict[int, list[tuple[str, int]]] = {}
    originals = [index for index in range(len(events)) if kinds[index] in ("valid", "late")]
    picks: list[int] = []
    if duplicates and originals:
        picks = rng.sample(originals, min(duplicates, len(originals)))
        picks += rng.choices(originals, k=duplicates - len(picks))
    elif duplicates:
        log.warning("no valid event to duplicate in so short a stream: %d duplicates left out", duplicates)
    for index in picks:
        slot = position[index]
        if rng.random() >= 0.4:  # otherwise re-sent right after the original
            last = bisect_right(newest, events[index].ts + _DUPLICATE_MAX_BEHIND) - 1
            slot = slot + int((last - slot) * math.sqrt(rng.random()))
        extras.setdefault(slot, []).append(("duplicate", index))
    cases = [MALFORMED_CASES[i % len(MALFORMED_CASES)] for i in range(malformed)]
    rng.shuffle(cases)
    for number in range(len(cases)):
        extras.setdefault(rng.randrange(len(sequence)), []).append(("malformed", number))

    switch = math.ceil(flaws.schema_v2_from * count)
    resent = set(picks)
    sent: dict[int, bytes] = {}  # the bytes of originals that are re-sent later, and only those
    emitted = 0

    def version() -> int:
        return 1 if emitted < switch else 2

    for slot, index in enumerate(sequence):
        event = events[index]
        value = _dumps(_payload(event, version()))
        if index in resent:
            sent[index] = value
        yield SimulatedEvent(event.user.user_id.encode("utf-8"), value, kinds[index], event.event_id)
        emitted += 1
        for what, ref in extras.get(slot, ()):
            if what == "duplicate":
                original = events[ref]
                key = original.user.user_id.encode("utf-8")
                yield SimulatedEvent(key, sent[ref], "duplicate", original.event_id)
            else:
                yield _malformed(rng, cases[ref], event, newest[slot], version())
            emitted += 1


def generate_events(
    count: int,
    *,
    seed: int = 7,
    start: datetime = DEFAULT_START,
    days: int = 14,
    flaws: Flaws = DEFAULT_FLAWS,
    run: int = 0,
    scenario: str | None = None,
) -> Iterator[SimulatedEvent]:
    """A deterministic simulated clickstream of exactly ``count`` Kafka records, flaws included.

    The same arguments always give byte-identical records (a seeded ``random.Random``, no wall clock).
    Re-running with the same ``seed`` and ``run`` therefore re-sends the same event ids, which silver
    deduplicates; pass the next ``run`` for a fresh batch. Run ``n`` covers the ``days`` after run ``n - 1``
    (``start + n * days`` onwards) with the same user population, so its events are newer than anything a
    previous run produced and pass silver's watermark.

    Args:
        count: number of records, flawed ones included (``round(count * rate)`` of each flaw).
        seed: the random seed; also fixes the user population.
        start: the first day of run 0 (naive datetimes are taken as UTC).
        days: how many days of traffic one run spans.
        flaws: duplicate / late / very late / malformed rates and the schema switch point.
        run: the batch number, folded into the seed and the time window.
        scenario: a name of :data:`SCENARIOS`: this run's traffic is that scenario's cohort (a drift).

    Returns:
        An iterator of :class:`SimulatedEvent` in emission order (roughly event-time order).

    Raises:
        ConfigError: a negative count or run, fewer than one day, or more events than the days can hold.

    Example:
        >>> first = next(generate_events(100, seed=1))
        >>> first.kind, first.key.startswith(b"u-")
        ('valid', True)
    """
    if count < 0:
        raise ConfigError(f"count must be zero or more events (got {count})")
    if days < 1:
        raise ConfigError(f"days must be at least 1 (got {days})")
    if run < 0:
        raise ConfigError(f"run must be zero or more (got {run}): use 0 for the first batch")
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if scenario is not None and scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}: choose one of {sorted(SCENARIOS)}")
    window_start = (start - _EPOCH) // timedelta(milliseconds=1) + run * days * _DAY
    return _stream(count, seed, run, window_start, days, flaws, SCENARIOS[scenario] if scenario else None)


def event_time_ms(payload: dict[str, Any]) -> int:
    """The event time of a parsed v1 or v2 payload, in epoch milliseconds.

    Raises:
        DataError: the payload has no usable ``ts`` / ``event_time``.

    Example:
        >>> event_time_ms({"schema_version": 2, "event_time": "2024-11-01T10:00:00.123Z"})
        1730455200123
    """
    if payload.get("schema_version") == 2:
        text = payload.get("event_time")
        if isinstance(text, str):
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                return (moment - _EPOCH) // timedelta(milliseconds=1)
    else:
        ts = payload.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            return ts
    raise DataError("the payload has no parseable event time (ts or event_time): it belongs in quarantine")


# --- producing --------------------------------------------------------------------------------------------


class Pacer:
    """Paces a loop to ``rate`` iterations per second on a monotonic clock.

    Event ``k`` is released at ``start + k / rate``; short waits are skipped and made up later, so the
    average rate holds even when one sleep per event would be too coarse. A loop that falls more than
    ``max_lag`` seconds behind (a slow broker) restarts its schedule instead of bursting to catch up.
    A rate of 0 never waits.

    Example:
        >>> pacer = Pacer(100.0)
        >>> waited = pacer.wait()   # call once before each event
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        min_sleep: float = 0.002,
        max_lag: float = 1.0,
    ) -> None:
        if rate < 0 or math.isnan(rate):
            raise ConfigError(
                f"rate must be 0 (unlimited) or a positive number of events per second (got {rate})"
            )
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._min_sleep = min_sleep
        self._max_lag = max_lag
        self._due: float | None = None

    def wait(self) -> float:
        """Wait until the next event is due; returns the seconds slept (0 when none)."""
        if not self.interval:
            return 0.0
        now = self._clock()
        if self._due is None or now - self._due > self._max_lag:
            self._due = now
        delay = self._due - now
        self._due += self.interval
        if delay >= self._min_sleep:
            self._sleep(delay)
            return delay
        return 0.0


# Short so an unreachable broker fails in seconds, not kafka-python's default 30 s.
_BOOTSTRAP_TIMEOUT_MS = 5_000
_FLUSH_TIMEOUT_S = 60.0


def _unreachable(bootstrap_servers: str, why: object) -> ServiceError:
    return ServiceError(
        f"cannot produce to Kafka at {bootstrap_servers} ({why}): start the local broker with `lakehouse up` "
        "or fix kafka.bootstrap_servers in the environment file"
    )


def _send_failed(bootstrap_servers: str, topic: str, why: object) -> ServiceError:
    return ServiceError(
        f"sending to topic {topic!r} at {bootstrap_servers} failed ({why}): check that the broker is still "
        "up and the topic exists (`lakehouse up` starts the broker and creates the topics), then send again; "
        "records already sent are deduplicated downstream by event_id"
    )


def _connect(bootstrap_servers: str) -> Any:
    try:
        return kafka_clients.producer(
            bootstrap_servers,
            "lakehouse-simulator",
            linger_ms=20,
            compression_type=None,
            bootstrap_timeout_ms=_BOOTSTRAP_TIMEOUT_MS,
        )
    except ServiceError as exc:
        raise _unreachable(bootstrap_servers, exc) from exc


def produce(
    events: Iterable[SimulatedEvent],
    *,
    bootstrap_servers: str,
    topic: str,
    rate: float = 0,
    progress: bool = False,
    total: int | None = None,
) -> ProduceReport:
    """Send simulated events to a Kafka topic (idempotent producer, ``acks=all``) and flush.

    Record timestamps are left to the producer (send time): the event time lives in the payload, and an
    old event time as record timestamp would make the broker delete the records at once under retention.

    Args:
        events: the records to send, e.g. from :func:`generate_events`.
        bootstrap_servers: ``host:port[,host:port]`` of the brokers.
        topic: the topic to write to.
        rate: events per second; 0 sends as fast as the broker takes them.
        progress: show a tqdm progress bar (on stderr).
        total: the number of events, for the progress bar (taken from ``len(events)`` when it has one).

    Returns:
        How many records were sent, per kind, and how fast.

    Raises:
        ServiceError: no broker answers, or a send failed or timed out.
        ConfigError: ``rate`` is negative.

    Example:
        >>> report = produce(  # doctest: +SKIP
        ...     generate_events(1_000), bootstrap_servers="127.0.0.1:9092", topic="clickstream"
        ... )
    """
    pacer = Pacer(rate)
    if total is None and isinstance(events, Sized):
        total = len(events)
    producer = _connect(bootstrap_servers)
    failures: list[BaseException] = []
    by_kind: Counter[str] = Counter()
    began = time.monotonic()
    try:
        with tqdm(total=total, unit="event", desc=f"produce → {topic}", disable=not progress) as bar:
            for event in events:
                pacer.wait()
                try:
                    future = producer.send(topic, key=event.key, value=event.value)
                except KafkaError as exc:
                    raise _send_failed(bootstrap_servers, topic, exc) from exc
                future.add_errback(failures.append)
                if failures:
                    raise _send_failed(bootstrap_servers, topic, failures[0]) from failures[0]
                by_kind[event.kind] += 1
                bar.update(1)
            try:
                producer.flush(timeout=_FLUSH_TIMEOUT_S)
            except KafkaError as exc:
                raise _send_failed(bootstrap_servers, topic, exc) from exc
            if failures:
                raise _send_failed(bootstrap_servers, topic, failures[0]) from failures[0]
    finally:
        producer.close(timeout=5)
    seconds = time.monotonic() - began
    sent = sum(by_kind.values())
    report = ProduceReport(
        sent=sent,
        by_kind={kind: by_kind[kind] for kind in KINDS if by_kind[kind]},
        seconds=seconds,
        events_per_second=sent / seconds if seconds > 0 else 0.0,
    )
    log.info("sent %d events to %s in %.1f s (%s)", sent, topic, seconds, report.by_kind)
    return report


def simulate_to_kafka(
    settings: Settings,
    *,
    count: int | None = None,
    rate: float | None = None,
    seed: int | None = None,
    run: int = 0,
    scenario: str | None = None,
    progress: bool = False,
) -> ProduceReport:
    """Generate the configured clickstream and send it to the clickstream topic.

    Defaults come from ``settings.simulator`` (events, seed, days, rate) and ``settings.kafka``.

    Args:
        settings: the environment's settings.
        count: number of events (default ``settings.simulator.events``).
        rate: events per second, 0 = unlimited (default ``settings.simulator.rate``).
        seed: the random seed (default ``settings.simulator.seed``).
        run: the batch number; the same seed and run re-send the same events (silver dedupes them),
            the next run sends the following days with new event ids.
        scenario: a drift scenario of :data:`SCENARIOS` for this run (e.g. ``mobile_campaign``).
        progress: show a progress bar.

    Returns:
        The :class:`ProduceReport`.

    Raises:
        ServiceError: the broker is not running (start it with ``lakehouse up``) or a send failed.

    Example:
        >>> simulate_to_kafka(load_settings("local"), count=5_000, progress=True)  # doctest: +SKIP
    """
    simulator = settings.simulator
    count = simulator.events if count is None else count
    events = generate_events(
        count,
        seed=simulator.seed if seed is None else seed,
        days=simulator.days,
        run=run,
        scenario=scenario,
    )
    return produce(
        events,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=TOPIC,
        rate=simulator.rate if rate is None else rate,
        progress=progress,
        total=count,
    )
