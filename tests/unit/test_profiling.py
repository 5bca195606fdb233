"""Profile reports of small Delta tables: written, bounded in size, reproducible samples, and no PII inside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakehouse import profiling
from lakehouse.config import Settings, load_settings
from lakehouse.errors import ConfigError, DataError

pytestmark = pytest.mark.unit

PLANTED_EMAIL = "planted.person@example.org"
PLANTED_NAME = "Zebediah Quarrington"
PLANTED_IP = "203.0.113.77"
# The reports are minimal: far below this whatever the table's size (a full report is tens of MB).
MAX_REPORT_BYTES = 2_000_000


def customers(count: int = 300) -> pd.DataFrame:
    start = datetime(2024, 11, 1, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "customer_id": range(count),
            "name": [f"Customer {index}" for index in range(count)],
            "email": [f"customer{index}@shop.test" for index in range(count)],
            "country": [("DE", "FR", "JP")[index % 3] for index in range(count)],
            "created_at": [start + timedelta(hours=index) for index in range(count)],
            "payload": [f'{{"id": {index}, "ip": "10.0.0.{index % 250}"}}' for index in range(count)],
        }
    )
    frame.loc[7, "email"] = PLANTED_EMAIL
    frame.loc[7, "name"] = PLANTED_NAME
    frame.loc[8, "payload"] = f'{{"contact": "{PLANTED_EMAIL}", "ip": "{PLANTED_IP}"}}'
    frame.loc[9, "email"] = None
    return frame


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "pipeline.yaml").write_text("", encoding="utf-8")
    (tmp_path / "env.yaml").write_text(f"env_name: local\nworkspace: {tmp_path / 'ws'}\n", encoding="utf-8")
    return load_settings("local", root=tmp_path)


@pytest.fixture
def project() -> Settings:
    """The project's own settings (its catalog), for what the catalog declares."""
    return load_settings("test", root=Path(__file__).resolve().parents[2])


@pytest.fixture
def lake(settings: Settings) -> Settings:
    write_deltalake(settings.table_path("silver", "retail_customers"), customers(), mode="overwrite")
    big = pd.DataFrame({"n": range(12_000), "kind": [("a", "b", "c")[n % 3] for n in range(12_000)]})
    write_deltalake(settings.table_path("bronze", "retail_orders"), big)
    return settings


def test_report_is_written_bounded_and_pii_free(lake: Settings) -> None:
    result = profiling.profile_table(lake, "silver.retail_customers", pii=("name", "email"))

    assert result.path == lake.reports / "profiles" / "silver.retail_customers.html"
    text = result.path.read_text(encoding="utf-8")
    assert "silver.retail_customers" in text
    assert result.total_rows == result.sampled_rows == 300
    assert 10_000 < result.size_bytes < MAX_REPORT_BYTES
    # the planted PII is neither in its own column nor inside a free-text payload
    for secret in (PLANTED_EMAIL, PLANTED_NAME, PLANTED_IP, "customer12@shop.test", "10.0.0.3"):
        assert secret not in text
    assert "@shop.test" not in text
    # the masked columns are still profiled: present, described as PII, with their distinct count
    assert (
        profiling.PII_MARKER.replace("<", "&lt;").replace(">", "&gt;") in text or profiling.PII_MARKER in text
    )
    assert "299 distinct non-null values" in text  # one email is null


def test_catalog_default_masks_pii_without_being_told(lake: Settings) -> None:
    # no explicit pii: the catalog (or, without one, the built-in list) names silver.retail_customers' PII
    result = profiling.profile_table(lake, "silver.retail_customers")
    assert set(result.pii_columns) >= {"email"}
    assert PLANTED_EMAIL not in result.path.read_text(encoding="utf-8")


def test_sample_is_bounded_and_reproducible(lake: Settings) -> None:
    path = lake.table_path("bronze", "retail_orders")
    first = profiling.sample_table(path, rows=500, seed=1)
    again = profiling.sample_table(path, rows=500, seed=1)
    other = profiling.sample_table(path, rows=500, seed=2)

    assert first.total_rows == 12_000
    assert len(first.frame) == 500
    assert first.frame["n"].is_unique
    assert first.frame["n"].tolist() == again.frame["n"].tolist()
    assert first.frame["n"].tolist() != other.frame["n"].tolist()
    # spread over the table, not its first 500 rows
    assert first.frame["n"].max() > 6_000


def test_profile_tables_skips_missing_tables_and_writes_an_index(lake: Settings) -> None:
    results = profiling.profile_tables(
        lake,
        tables=["silver.retail_customers", "bronze.retail_orders", "silver.events"],
        sample_rows=1_000,
        pii={"silver.retail_customers": ("name", "email")},
    )

    assert [r.table for r in results] == ["silver.retail_customers", "bronze.retail_orders"]
    assert results[1].sampled_rows == 1_000 and results[1].total_rows == 12_000
    index = (lake.reports / "profiles" / "index.html").read_text(encoding="utf-8")
    assert 'href="silver.retail_customers.html"' in index
    assert 'href="bronze.retail_orders.html"' in index
    assert "silver.events" in index and "No table yet" in index
    assert PLANTED_EMAIL not in index


def test_empty_lake_gets_an_index_that_says_so(settings: Settings) -> None:
    assert profiling.profile_tables(settings, layers=("silver",)) == []
    index = (settings.reports / "profiles" / "index.html").read_text(encoding="utf-8")
    assert "No table has been profiled yet" in index


def test_silver_s_reconciliation_is_the_engine_s_audit_table(settings: Settings) -> None:
    # One audit table reconciles every declared silver table (by name): no per-table reconciliation tables.
    silver = profiling.layer_tables(settings, ("silver",))
    assert silver == ["audit.silver_batches"]  # nothing declared nor landed yet
    audit = pd.DataFrame(
        {"table": ["silver.events", "silver.fx_rates"], "input_rows": [10, 3], "applied": [9, 3]}
    )
    write_deltalake(settings.table_path("audit", "silver_batches"), audit)
    [result] = profiling.profile_tables(settings, layers=("silver",))
    assert (result.table, result.total_rows) == ("audit.silver_batches", 2)
    assert "input_rows" in result.path.read_text(encoding="utf-8")


def test_every_declared_table_and_its_quarantine_is_profiled(project: Settings) -> None:
    # The project's catalog: each declared silver table with its quarantine, no list kept by hand.
    silver = profiling.layer_tables(project, ("silver",))
    contracts = sorted(p.stem for p in (project.root / "catalog" / "silver").glob("*.yaml"))
    assert contracts and all(f"silver.{name}" in silver for name in contracts)
    assert all(f"silver.{name}_quarantine" in silver for name in contracts)
    assert silver[-1] == "audit.silver_batches" and not any(t.startswith("bronze.") for t in silver)
    with pytest.raises(ConfigError, match="cannot profile layer 'audit'"):
        profiling.layer_tables(project, ("audit",))


def test_a_table_the_lake_has_without_a_contract_is_named_not_profiled(settings: Settings) -> None:
    # Landed before anyone wrote its contract: nothing says which columns are PII, so no report shows them.
    write_deltalake(settings.table_path("bronze", "partner_feed"), customers())
    assert profiling.layer_tables(settings, ("bronze",)) == []
    assert profiling.uncatalogued_tables(settings, ("bronze", "silver")) == ["bronze.partner_feed"]
    assert profiling.profile_tables(settings, layers=("bronze",)) == []
    assert not (settings.reports / "profiles" / "bronze.partner_feed.html").exists()
    index = (settings.reports / "profiles" / "index.html").read_text(encoding="utf-8")
    assert "without a catalog contract" in index and "bronze.partner_feed" in index
    assert PLANTED_EMAIL not in index and PLANTED_NAME not in index


def test_scrub_text_replaces_emails_and_ips_only() -> None:
    assert profiling.scrub_text(f"mail {PLANTED_EMAIL} from {PLANTED_IP}") == "mail <email> from <ipv4>"
    assert profiling.scrub_text("app 5.2.0 build 1.2.3.4.5") == "app 5.2.0 build 1.2.3.4.5"
    assert profiling.scrub_text(42) == 42


def test_bad_inputs_raise_the_packages_errors(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no Delta table"):
        profiling.sample_table(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"not '<layer>\.<name>'"):
        profiling.profile_table(settings, "events")
    with pytest.raises(ConfigError, match="cannot profile layer"):
        profiling.profile_tables(settings, layers=("platinum",))
    with pytest.raises(ConfigError, match="at least 1"):
        profiling.sample_table(tmp_path, rows=0)
    assert profiling.parse_layers(" bronze, silver ,") == ("bronze", "silver")
    with pytest.raises(ConfigError):
        profiling.parse_layers(" , ")


def test_nested_and_decimal_columns_are_profiled(settings: Settings) -> None:
    table = pa.table(
        {
            "failed_rules": pa.array([["not_null:email"], ["range:price", "not_null:id"], None]),
            "amount": pa.array([Decimal("1.50"), Decimal("2.25"), None], type=pa.decimal128(10, 2)),
        }
    )
    write_deltalake(settings.table_path("silver", "events_quarantine"), table)
    result = profiling.profile_table(settings, "silver.events_quarantine", pii=())
    assert result.sampled_rows == 3
    assert "failed_rules" in result.path.read_text(encoding="utf-8")


def test_bytes_that_are_not_utf8_are_profiled_as_escaped_text(settings: Settings) -> None:
    """Bronze keeps payload bytes as they arrived (``value_bytes``); a profile shows them, it never fails."""
    table = pa.table(
        {
            "value": ["caf\ufffd", "ok", None],
            "value_bytes": pa.array([b"caf\xe9 \x00\xff", None, None], type=pa.binary()),
        }
    )
    write_deltalake(settings.table_path("bronze", "bytes"), table)
    result = profiling.profile_table(settings, "bronze.bytes", pii=())
    assert result.sampled_rows == 3
    assert profiling._arrow_for_pandas(table).column("value_bytes").to_pylist() == [
        "caf\\xe9 \x00\\xff",
        None,
        None,
    ]


CONTRACT = """\
table: silver.retail_customers
owner: retail-data
description: Customers.
classification: pii
columns:
  - {name: customer_id, type: long}
  - {name: name, type: string, classification: pii, pii: name, treatment: tokenize}
  - {name: email, type: string, classification: pii, pii: email, treatment: tokenize}
  - {name: country, type: string}
  - {name: created_at, type: timestamp}
  - {name: payload, type: string, classification: pii, pii: ip, treatment: tokenize}
"""


def test_the_catalogs_pii_tags_are_the_default(lake: Settings) -> None:
    contract = lake.root / "catalog" / "silver" / "retail_customers.yaml"
    contract.parent.mkdir(parents=True)
    contract.write_text(CONTRACT, encoding="utf-8")

    assert profiling.pii_columns(lake)["silver.retail_customers"] == ("name", "email", "payload")
    result = profiling.profile_table(lake, "silver.retail_customers")
    assert result.pii_columns == ("name", "email", "payload")
    text = result.path.read_text(encoding="utf-8")
    assert "10.0.0." not in text and PLANTED_EMAIL not in text
    assert "distinct non-null values" in text


def test_an_empty_table_gets_a_schema_page(settings: Settings) -> None:
    empty = pa.table({"reason": pa.array([], pa.string()), "batch_id": pa.array([], pa.int64())})
    write_deltalake(settings.table_path("silver", "fx_rates_quarantine"), empty)
    [result] = profiling.profile_tables(settings, tables=["silver.fx_rates_quarantine"])
    assert (result.total_rows, result.sampled_rows) == (0, 0)
    text = result.path.read_text(encoding="utf-8")
    assert "no rows" in text and "batch_id" in text
