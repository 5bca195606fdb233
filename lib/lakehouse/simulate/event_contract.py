"""The demo's clickstream events as the simulator produces them: topic, vocabulary and payload versions.

Two payload versions are live on the topic, as in any real app whose clients update slowly:

``schema_version`` 1::

    {"schema_version": 1, "event_id": "<uuid>", "event_type": "page_view", "ts": 1730419200000,
     "user_id": "u-000123", "session_id": "<client session uuid>", "platform": "web",
     "device": {"type": "desktop", "os": "Windows", "app_version": null},
     "country": "DE", "channel": "organic", "page": "/", "product_id": null, "search_query": null,
     "quantity": null, "price": null, "revenue": null, "currency": "EUR", "order_id": null}

``schema_version`` 2 (the mid-stream change): ``ts`` (epoch ms) becomes ``event_time`` (ISO-8601 UTC),
``revenue`` + ``currency`` move into ``amount: {"value": .., "currency": ..}``, and ``consent`` is added::

    {"schema_version": 2, "event_id": ..., "event_type": "purchase",
     "event_time": "2024-11-01T10:00:00.123Z", ..., "amount": {"value": 59.9, "currency": "EUR"},
     "consent": {"analytics": true}}

Nothing downstream imports this: silver reads both versions as ``sources.yaml`` (the topic's ``payload``) and
``catalog/silver/events.yaml`` declare them, run by :mod:`lakehouse.silver.engine`; the processor's rules and
lookups are the ``processor`` section of the same source.
"""

from __future__ import annotations

from typing import Final

TOPIC: Final = "clickstream"

EVENT_TYPES: Final = ("page_view", "product_view", "search", "add_to_cart", "checkout", "purchase")
PLATFORMS: Final = ("web", "ios", "android")
CHANNELS: Final = ("organic", "paid_search", "social", "email", "direct", "referral")
# One currency per country: revenue is reported in the shopper's currency.
COUNTRY_CURRENCY: Final = {
    "DE": "EUR",
    "FR": "EUR",
    "NL": "EUR",
    "ES": "EUR",
    "GB": "GBP",
    "US": "USD",
    "CA": "CAD",
    "JP": "JPY",
    "BR": "BRL",
    "IN": "INR",
}
SUPPORTED_SCHEMA_VERSIONS: Final = (1, 2)
