"""The clickstream event contract shared by the simulator (producer) and silver (consumer).

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

Silver normalises both into :data:`SILVER_EVENTS` as ``catalog/silver/events.yaml`` declares (its ``build``
section and column expressions, run by :mod:`lakehouse.silver.engine`).
"""

from __future__ import annotations

from typing import Final

from pyspark.sql.types import (
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

TOPIC: Final = "clickstream"

EVENT_TYPES: Final = ("page_view", "product_view", "search", "add_to_cart", "checkout", "purchase")
# The funnel, in order; a session reaches a step when it has at least one event of that type.
FUNNEL: Final = ("page_view", "product_view", "add_to_cart", "checkout", "purchase")
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

_DEVICE = StructType(
    [
        StructField("type", StringType()),
        StructField("os", StringType()),
        StructField("app_version", StringType()),
    ]
)

# A superset of v1 and v2 used to parse the raw JSON; fields absent in a version come back null.
RAW_EVENT: Final = StructType(
    [
        StructField("schema_version", LongType()),
        StructField("event_id", StringType()),
        StructField("event_type", StringType()),
        StructField("ts", LongType()),
        StructField("event_time", StringType()),
        StructField("user_id", StringType()),
        StructField("session_id", StringType()),
        StructField("platform", StringType()),
        StructField("device", _DEVICE),
        StructField("client_ip", StringType()),
        StructField("country", StringType()),
        StructField("channel", StringType()),
        StructField("page", StringType()),
        StructField("product_id", StringType()),
        StructField("search_query", StringType()),
        StructField("quantity", LongType()),
        StructField("price", DoubleType()),
        StructField("revenue", DoubleType()),
        StructField("currency", StringType()),
        StructField(
            "amount", StructType([StructField("value", DoubleType()), StructField("currency", StringType())])
        ),
        StructField("order_id", StringType()),
        StructField("consent", StructType([StructField("analytics", BooleanType())])),
    ]
)

# Silver: typed, validated, one row per event_id.
SILVER_EVENTS: Final = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("event_type", StringType(), False),
        StructField("event_time", TimestampType(), False),
        StructField("event_date", DateType(), False),
        StructField("user_id", StringType(), False),
        StructField("client_session_id", StringType()),
        StructField("platform", StringType()),
        StructField("device_type", StringType()),
        StructField("os", StringType()),
        StructField("app_version", StringType()),
        StructField("country", StringType()),
        StructField("channel", StringType()),
        StructField("page", StringType()),
        StructField("product_id", StringType()),
        StructField("search_query", StringType()),
        StructField("quantity", IntegerType()),
        StructField("price", DoubleType()),
        StructField("revenue", DoubleType()),
        StructField("currency", StringType()),
        StructField("order_id", StringType()),
        StructField("schema_version", IntegerType(), False),
        StructField("source_partition", IntegerType(), False),
        StructField("source_offset", LongType(), False),
        StructField("ingested_at", TimestampType(), False),
        # Last, where Delta schema evolution (mergeSchema) puts a new column: an HMAC token
        # (lakehouse.privacy.tokenize), never the address itself.
        StructField("client_ip", StringType()),
    ]
)
