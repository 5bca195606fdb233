"""One case of gold.revenue_daily, shared by its unit test (classic Spark) and the FX source's integration
test (bronze → silver → gold over Spark Connect): daily KPIs in local currencies and what each is worth in
EUR at the day's ECB rate, or the last rate before it (weekends). ``tests/`` is on ``sys.path`` through its
``conftest.py``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

DAILY_KPIS = [
    (date(2024, 11, 1), "DE", "EUR", 100.0),
    (date(2024, 11, 1), "US", "USD", 108.85),
    (date(2024, 11, 2), "US", "USD", 217.7),  # Saturday: Friday's rate
    (date(2024, 11, 3), "JP", "JPY", 16554.0),  # Sunday: Friday's rate
    (date(2024, 11, 4), "GB", "GBP", 84.063),
    (date(2024, 11, 4), "IN", "INR", 91.718),  # two platforms of one country-day are summed
    (date(2024, 11, 4), "IN", "INR", 91.718),
    (date(2024, 11, 4), "BR", None, 0.0),  # no purchase: currency from the country
]

# (day, country) → (rate per EUR used, revenue in EUR)
IN_EUR = {
    ("2024-11-01", "DE"): (1.0, 100.0),
    ("2024-11-01", "US"): (1.0885, 100.0),
    ("2024-11-02", "US"): (1.0885, 200.0),
    ("2024-11-03", "JP"): (165.54, 100.0),
    ("2024-11-04", "GB"): (0.84063, 100.0),
    ("2024-11-04", "IN"): (91.718, 2.0),
    ("2024-11-04", "BR"): (6.3344, 0.0),
}


def assert_revenue_in_eur(got: dict[tuple[str, str], Any]) -> None:
    """``got`` (gold.revenue_daily's rows by (day, country)) holds :data:`IN_EUR`, reported in EUR."""
    assert set(got) == set(IN_EUR)
    for key, (rate, eur) in IN_EUR.items():
        assert got[key]["rate_per_eur"] == rate, key
        assert got[key]["revenue_eur"] == pytest.approx(eur, rel=1e-9), key
        assert got[key]["revenue_reporting"] == pytest.approx(eur, rel=1e-9), key
        assert got[key]["reporting_currency"] == "EUR", key
    assert got[("2024-11-04", "BR")]["currency"] == "BRL"
    assert got[("2024-11-04", "IN")]["revenue"] == pytest.approx(2 * 91.718)
