"""The governance catalog without services: contracts load (or fail naming file and field), drift, freshness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml
from deltalake import write_deltalake

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.governance.catalog import (
    SchemaDriftError,
    check_catalog,
    check_schema,
    freshness_report,
    load_catalog,
    load_contract,
    scaffold_contract,
)

pytestmark = pytest.mark.unit

DAG_TABLES = {
    "bronze": "clickstream fx_rates iot_telemetry retail_cdc retail_customers retail_orders retail_order_items "
    "retail_products",
    "silver": "events events_quarantine telemetry telemetry_quarantine "
    "fx_rates fx_rates_quarantine retail_customers retail_orders "
    "retail_order_items retail_products retail_customers_quarantine retail_orders_quarantine "
    "retail_order_items_quarantine retail_products_quarantine dim_customer dim_customer_quarantine",
    "gold": "sessions daily_kpis funnel revenue_daily rt_events_per_minute rt_sessions_per_minute rt_device_minute "
    "device_offline",
    "audit": "validation_results erasures silver_batches",
}

PEOPLE = {
    "table": "silver.people",
    "owner": "test",
    "description": "One row per person.",
    "classification": "pii",
    "freshness_sla": "1h",
    "subjects": [{"kind": "customer", "column": "id"}],
    "columns": [
        {"name": "id", "type": "long", "classification": "confidential"},
        {"name": "email", "type": "string", "classification": "pii", "pii": "email", "treatment": "tokenize"},
        {"name": "joined", "type": "timestamp"},
    ],
}


def _write(root: Path, document: dict[str, object]) -> Path:
    layer, name = str(document["table"]).split(".")
    path = root / layer / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_every_dag_table_has_a_valid_contract(settings: Settings) -> None:
    catalog = load_catalog(settings)
    expected = {f"{layer}.{name}" for layer, names in DAG_TABLES.items() for name in names.split()}
    assert expected <= set(catalog.tables)
    assert catalog.tables["silver.events"].column("client_ip").treatment == "tokenize"
    for name in ("silver.retail_customers", "silver.dim_customer"):
        assert {c.name: c.treatment for c in catalog.tables[name].pii_columns()} == {
            "name": "tokenize",
            "email": "tokenize",
        }
    kinds = {s.kind for c in catalog.tables.values() for s in c.subjects}
    assert kinds == {"customer", "user"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"owner": ""}, r"people\.yaml: owner: String should have at least 1 character"),
        (
            {"columns": [{"name": "email", "type": "varchar"}]},
            r"columns\[email\]\.type: Value error, unknown Delta type",
        ),
        (
            {"columns": [{"name": "email", "type": "string", "classification": "pii", "pii": "email"}]},
            r"columns\[email\]: Value error, column 'email' is pii: email but has no treatment",
        ),
        (
            {
                "columns": [
                    {
                        "name": "email",
                        "type": "string",
                        "classification": "pii",
                        "pii": "email",
                        "treatment": "keep",
                    }
                ]
            },
            "keep is allowed only in bronze",
        ),
        ({"freshness_sla": "soon"}, "freshness_sla: Value error, not a duration"),
        ({"classification": "internal"}, "classification internal is below its most sensitive column"),
        ({"table": "silver.other"}, "field table is 'silver.other', the file says 'silver.people'"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_contract_errors_name_the_file_and_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    path = _write(tmp_path, PEOPLE)
    path.write_text(yaml.safe_dump({**PEOPLE, **change}), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_contract(path)
    assert str(path) in str(info.value)


def test_drift_is_detected_on_a_delta_table(settings: Settings, tmp_path: Path) -> None:
    catalog_root = tmp_path / "catalog"
    _write(catalog_root, PEOPLE)
    contract = load_catalog(settings, root=catalog_root).contract("silver.people")
    table = str(tmp_path / "people")
    rows = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "email": pa.array(["t1", "t2"]),
            "joined": pa.array([datetime(2024, 1, 1, tzinfo=UTC)] * 2, pa.timestamp("us", tz="UTC")),
        }
    )
    write_deltalake(table, rows)
    assert check_schema(contract, table) == []
    drifted = str(tmp_path / "people_drifted")
    write_deltalake(
        drifted,
        pa.table({"id": pa.array([1], pa.int32()), "email": pa.array(["t"]), "nickname": pa.array(["x"])}),
    )
    assert check_schema(contract, drifted) == [
        "silver.people.id: expected long, found integer",
        "silver.people.joined: expected timestamp, found no such column",
        "silver.people.nickname: expected no such column, found string (not in the contract)",
    ]
    assert check_schema(contract, str(tmp_path / "absent")) == [
        f"silver.people: no Delta table at {tmp_path / 'absent'}"
    ]


def test_check_catalog_raises_schema_drift(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"workspace": tmp_path / "workspace"})
    catalog_root = tmp_path / "catalog"
    _write(catalog_root, PEOPLE)
    catalog = load_catalog(settings, root=catalog_root)
    assert check_catalog(settings, catalog=catalog) == []  # not built yet: skipped
    write_deltalake(settings.table_path("silver", "people"), pa.table({"id": pa.array([1], pa.int64())}))
    with pytest.raises(
        SchemaDriftError, match=r"silver\.people\.email: expected string, found no such column"
    ) as info:
        check_catalog(settings, catalog=catalog)
    assert isinstance(info.value, DataError)

    now = datetime.now(UTC)
    report = freshness_report(settings, catalog=catalog, now=now)
    assert list(report.columns) == ["table", "last_commit", "age_seconds", "sla_seconds", "ok"]
    row = report.iloc[0]
    assert row["table"] == "silver.people" and row["sla_seconds"] == 3600 and bool(row["ok"])
    assert abs((row["last_commit"] - pd.Timestamp(now)).total_seconds()) < 600
    late = freshness_report(settings, catalog=catalog, now=now + timedelta(hours=2))
    assert not bool(late.iloc[0]["ok"]) and late.iloc[0]["age_seconds"] > 3600

    draft = yaml.safe_load(scaffold_contract(settings, "silver.people"))
    assert draft["table"] == "silver.people" and draft["columns"] == [
        {
            "name": "id",
            "type": "long",
            "description": "TODO: what this column means",
            "classification": "internal",
        }
    ]


def test_a_drafted_bronze_contract_classifies_kept_bytes_as_their_text(
    settings: Settings, tmp_path: Path
) -> None:
    """``value_bytes`` holds the payloads ``value`` shows (when not UTF-8): the same PII, the same treatment."""
    settings = settings.model_copy(update={"workspace": tmp_path / "workspace"})
    payloads = [f'{{"email": "user{i}@example.org", "n": {i}}}' for i in range(20)]
    write_deltalake(
        settings.table_path("bronze", "signups"),
        pa.table(
            {
                "key": pa.array([f"k{i}" for i in range(20)]),
                "value": pa.array(payloads),
                "key_bytes": pa.array([None] * 20, pa.binary()),
                "value_bytes": pa.array([b"\xff" + payloads[0].encode()] + [None] * 19, pa.binary()),
            }
        ),
    )
    columns = {c["name"]: c for c in yaml.safe_load(scaffold_contract(settings, "bronze.signups"))["columns"]}
    assert columns["value"]["classification"] == "pii" and columns["value"]["pii"] == "email"
    assert {k: columns["value_bytes"][k] for k in ("type", "classification", "pii", "treatment")} == {
        "type": "binary",
        "classification": "pii",
        "pii": "email",
        "treatment": "keep",
    }
    assert columns["key_bytes"]["classification"] == columns["key"]["classification"] == "internal"
