"""The Arrow schema of the demo's gold.sessions table (catalog/gold/sessions.yaml), for tests that write a
small hand-made one: the serving queries' unit tests and the KPI dashboard's browser tests. ``tests/`` is on
``sys.path`` through its ``conftest.py``.
"""

from __future__ import annotations

import pyarrow as pa

SESSIONS_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("user_id", pa.string()),
        ("session_start", pa.timestamp("us", tz="UTC")),
        ("session_end", pa.timestamp("us", tz="UTC")),
        ("session_date", pa.date32()),
        ("duration_s", pa.float64()),
        ("events", pa.int64()),
        ("page_views", pa.int64()),
        ("product_views", pa.int64()),
        ("searches", pa.int64()),
        ("add_to_carts", pa.int64()),
        ("checkouts", pa.int64()),
        ("purchases", pa.int64()),
        ("revenue", pa.float64()),
        ("currency", pa.string()),
        ("platform", pa.string()),
        ("device_type", pa.string()),
        ("os", pa.string()),
        ("app_version", pa.string()),
        ("country", pa.string()),
        ("channel", pa.string()),
        ("converted", pa.bool_()),
    ]
)
