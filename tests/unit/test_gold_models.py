"""Gold models: SQL with ref() over declared tables, shaped by the contract, full or incremental."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.gold import models
from lakehouse.governance.catalog import load_catalog
from project_files import copy_declarations
from revenue_cases import DAILY_KPIS, assert_revenue_in_eur

pytestmark = pytest.mark.unit


@pytest.fixture
def project(settings: Settings, tmp_path: Path) -> Settings:
    root = tmp_path / "project"
    root.mkdir()
    copy_declarations(settings.root, root)
    quality = settings.quality.model_copy(update={"data_docs": False})
    return settings.model_copy(update={"root": root, "workspace": tmp_path / "ws", "quality": quality})


def _rates(spark: Any, project: Settings, rows: list[tuple[Any, ...]]) -> None:
    frame = spark.createDataFrame(
        rows, "date date, currency string, rate_per_eur double, fetched_at timestamp, batch_id string"
    )
    frame.write.format("delta").mode("overwrite").save(project.table_path("silver", "fx_rates"))


def test_a_sql_model_reads_its_refs_and_is_shaped_by_its_contract(spark: Any, project: Settings) -> None:
    model = models.gold_model(project, "gold.fx_monthly")
    sql, refs = models.render(project, model)
    assert refs == ["silver.fx_rates"] and project.table_path("silver", "fx_rates") in sql
    _rates(
        spark,
        project,
        [
            (date(2024, 11, 1), "USD", 1.08, None, "a"),
            (date(2024, 11, 4), "USD", 1.10, None, "a"),
            (date(2024, 12, 2), "USD", 1.05, None, "a"),
        ],
    )
    report = models.build_model(spark, project, "gold.fx_monthly", run_id="r")
    assert report.rows == 2
    rows = spark.read.format("delta").load(model.path).orderBy("month").collect()
    assert [(r["month"], r["fixings"], r["last_rate_per_eur"]) for r in rows] == [
        (date(2024, 11, 1), 2, 1.10),
        (date(2024, 12, 1), 1, 1.05),
    ]
    assert [f.name for f in spark.read.format("delta").load(model.path).schema.fields] == [
        c.name for c in model.contract.columns
    ]


def _declare(project: Settings, name: str, sql: str, **model: Any) -> None:
    (project.root / "models" / "gold" / f"{name}.sql").write_text(sql)
    contract = {
        "table": f"gold.{name}",
        "owner": "me",
        "description": "Mine.",
        "classification": "internal",
        "model": {"sql": f"models/gold/{name}.sql", **model},
        "columns": [{"name": "currency", "type": "string"}, {"name": "days", "type": "long"}],
    }
    (project.root / "catalog" / "gold" / f"{name}.yaml").write_text(yaml.safe_dump(contract))


def test_an_incremental_model_merges_by_its_unique_key(spark: Any, project: Settings) -> None:
    _declare(
        project,
        "days_per_currency",
        "SELECT currency, count(*) AS days FROM {{ ref('silver.fx_rates') }} GROUP BY currency",
        materialize="incremental",
        unique_key=["currency"],
    )
    _rates(spark, project, [(date(2024, 11, 1), "USD", 1.0, None, "a")])
    models.build_model(spark, project, "gold.days_per_currency")
    _rates(
        spark,
        project,
        [
            (date(2024, 11, 1), "USD", 1.0, None, "a"),
            (date(2024, 11, 2), "USD", 1.0, None, "a"),
            (date(2024, 11, 2), "JPY", 160.0, None, "a"),
        ],
    )
    assert models.build_model(spark, project, "gold.days_per_currency").rows == 2
    rows = (
        spark.read.format("delta")
        .load(project.table_path("gold", "days_per_currency"))
        .orderBy("currency")
        .collect()
    )
    assert [(r["currency"], r["days"]) for r in rows] == [("JPY", 1), ("USD", 2)]


def test_a_wrong_model_is_an_error_naming_its_file(spark: Any, project: Settings) -> None:
    _declare(project, "bad_ref", "SELECT * FROM {{ ref('silver.nowhere') }}")
    with pytest.raises(
        ConfigError, match=r"bad_ref\.sql: ref\('silver\.nowhere'\) names a table without a contract"
    ):
        models.upstream_tables(project, "gold.bad_ref")
    _declare(project, "bad_columns", "SELECT currency FROM {{ ref('silver.fx_rates') }}")
    _rates(spark, project, [(date(2024, 11, 1), "USD", 1.0, None, "a")])
    with pytest.raises(ConfigError, match=r"bad_columns\.sql: the model's result has no column \['days'\]"):
        models.build_model(spark, project, "gold.bad_columns")


def test_sql_literals_of_params() -> None:
    assert models.sql_literal("EUR") == "'EUR'"
    assert models.sql_literal("it's") == "'it\\'s'"  # a quote cannot end the literal
    assert models.sql_literal("a\\") == "'a\\\\'"
    assert (models.sql_literal(7), models.sql_literal(True), models.sql_literal(False)) == (
        "7",
        "TRUE",
        "FALSE",
    )
    assert models.sql_literal(0.5) == "CAST('0.5' AS DOUBLE)"
    assert models.sql_literal(["USD", "JPY"]) == "'USD', 'JPY'"
    assert models.sql_literal({"DE": "EUR"}) == "map('DE', 'EUR')"
    with pytest.raises(ConfigError, match="no SQL literal"):
        models.sql_literal(None)


def test_a_sql_model_reads_its_params(spark: Any, project: Settings) -> None:
    _declare(
        project,
        "days_of",
        "SELECT currency, count(*) AS days FROM {{ ref('silver.fx_rates') }}"
        " WHERE currency IN ({{ param('currencies') }}) AND rate_per_eur > {{ param('above') }}"
        " AND coalesce(element_at({{ param('names') }}, currency), '') <> {{ param('skip') }}"
        " GROUP BY currency",
        params={"currencies": ["USD", "JPY", "it's"], "above": 1.05, "names": {"JPY": "yen"}, "skip": "yen"},
    )
    _rates(
        spark,
        project,
        [
            (date(2024, 11, 1), "USD", 1.08, None, "a"),
            (date(2024, 11, 4), "USD", 1.01, None, "a"),  # not above 1.05
            (date(2024, 11, 1), "JPY", 165.0, None, "a"),  # named "yen": skipped
            (date(2024, 11, 1), "GBP", 0.84, None, "a"),  # not in the list
        ],
    )
    models.build_model(spark, project, "gold.days_of")
    rows = spark.read.format("delta").load(project.table_path("gold", "days_of")).collect()
    assert [(r["currency"], r["days"]) for r in rows] == [("USD", 1)]


def test_an_unknown_param_is_an_error_naming_the_file(project: Settings) -> None:
    _declare(project, "unknown_param", "SELECT {{ param('nope') }} AS currency", params={"yes": 1})
    with pytest.raises(
        ConfigError, match=r"unknown_param\.sql: param\('nope'\) is not in the model's params"
    ):
        models.upstream_tables(project, "gold.unknown_param")


def test_a_model_stops_its_build_with_raise_error(spark: Any, project: Settings) -> None:
    _declare(
        project,
        "guarded",
        "SELECT currency, count(*) AS days FROM {{ ref('silver.fx_rates') }} GROUP BY currency"
        " HAVING max(rate_per_eur) < 1000 OR raise_error(concat(currency, ' is off the scale'))",
    )
    _rates(spark, project, [(date(2024, 11, 1), "USD", 1.0, None, "a")])
    models.build_model(spark, project, "gold.guarded")
    _rates(
        spark,
        project,
        [(date(2024, 11, 1), "USD", 1.0, None, "a"), (date(2024, 11, 2), "XYZ", 5e6, None, "a")],
    )
    with pytest.raises(
        DataError, match=r"guarded\.sql stopped the build of gold\.guarded: XYZ is off the scale$"
    ):
        models.build_model(spark, project, "gold.guarded")
    rows = spark.read.format("delta").load(project.table_path("gold", "guarded")).collect()
    assert [(r["currency"], r["days"]) for r in rows] == [("USD", 1)]  # the table is left as it was


def test_a_transform_with_wrong_params_is_an_error_naming_its_contract(spark: Any, project: Settings) -> None:
    path = project.root / "catalog" / "gold" / "sessions.yaml"
    document = yaml.safe_load(path.read_text())
    document["model"]["params"]["gap_minutes"] = -1
    path.write_text(yaml.safe_dump(document))
    spark.createDataFrame([], "user_id string, event_time timestamp, event_id string").write.format(
        "delta"
    ).save(project.table_path("silver", "events"))
    with pytest.raises(ConfigError, match=r"sessions\.yaml: sessionize: params\.gap_minutes"):
        models.model_frame(spark, project, models.gold_model(project, "gold.sessions"))


# --- gold.revenue_daily: the FX conversion in SQL (models/gold/revenue_daily.sql) ---------------------

# ECB fixings (units per 1 EUR) on Friday 1 and Monday 4 November 2024; none on the weekend.
FIXINGS = [
    (date(2024, 11, 1), "USD", 1.0885),
    (date(2024, 11, 1), "JPY", 165.54),
    (date(2024, 11, 1), "GBP", 0.83950),
    (date(2024, 11, 1), "INR", 91.50),
    (date(2024, 11, 1), "BRL", 6.30),
    (date(2024, 11, 4), "USD", 1.0904),
    (date(2024, 11, 4), "JPY", 166.10),
    (date(2024, 11, 4), "GBP", 0.84063),
    (date(2024, 11, 4), "INR", 91.718),
    (date(2024, 11, 4), "BRL", 6.3344),
]


def _revenue_inputs(spark: Any, project: Settings, kpis: list[tuple[Any, ...]]) -> None:
    _rates(spark, project, [(*fixing, None, "a") for fixing in FIXINGS])
    columns = load_catalog(project).contract("gold.daily_kpis").columns
    frame = spark.createDataFrame(
        [(*row, "web", "organic") for row in kpis],
        "date date, country string, currency string, revenue double, platform string, channel string",
    )
    for column in columns:  # the other KPIs, as the contract types them
        if column.name not in frame.columns:
            frame = frame.withColumn(column.name, F.lit(0).cast(column.type))
    frame.select(*[c.name for c in columns]).write.format("delta").mode("overwrite").save(
        project.table_path("gold", "daily_kpis")
    )


def _set_params(project: Settings, table: str, **params: Any) -> None:
    path = project.root / "catalog" / "gold" / f"{table.split('.')[1]}.yaml"
    document = yaml.safe_load(path.read_text())
    document["model"]["params"].update(params)
    path.write_text(yaml.safe_dump(document))


def _revenue(spark: Any, project: Settings) -> dict[tuple[str, str], Any]:
    models.build_model(spark, project, "gold.revenue_daily", run_id="r")
    table = spark.read.format("delta").load(project.table_path("gold", "revenue_daily"))
    return {(str(r["date"]), r["country"]): r for r in table.collect()}


def test_revenue_is_converted_at_the_days_rate_or_the_last_one_before_it(
    spark: Any, project: Settings
) -> None:
    _revenue_inputs(spark, project, DAILY_KPIS)
    assert_revenue_in_eur(_revenue(spark, project))


def test_the_reporting_currency_is_a_param(spark: Any, project: Settings) -> None:
    _revenue_inputs(spark, project, DAILY_KPIS)
    _set_params(project, "gold.revenue_daily", reporting_currency=" usd ")
    in_usd = _revenue(spark, project)
    assert {r["reporting_currency"] for r in in_usd.values()} == {"USD"}
    assert in_usd[("2024-11-03", "JP")]["revenue_reporting"] == pytest.approx(100.0 * 1.0885)  # Friday's USD
    assert in_usd[("2024-11-04", "GB")]["revenue_reporting"] == pytest.approx(100.0 * 1.0904)
    assert in_usd[("2024-11-01", "US")]["revenue_reporting"] == pytest.approx(108.85)


def test_a_rate_older_than_the_carry_limit_stops_the_build(spark: Any, project: Settings) -> None:
    _revenue_inputs(spark, project, DAILY_KPIS)
    _revenue(spark, project)
    _revenue_inputs(spark, project, [*DAILY_KPIS, (date(2024, 12, 20), "US", "USD", 10.0)])
    with pytest.raises(DataError, match=r"no FX rate within 7 days for USD on 2024-12-20 \(reporting EUR\)"):
        _revenue(spark, project)
    # the table is left as it was; a day without revenue needs no rate
    assert len(spark.read.format("delta").load(project.table_path("gold", "revenue_daily")).collect()) == 7
    _revenue_inputs(spark, project, [*DAILY_KPIS, (date(2024, 12, 20), "US", "USD", 0.0)])
    late = _revenue(spark, project)[("2024-12-20", "US")]
    assert (late["rate_per_eur"], late["revenue_eur"], late["revenue_reporting"]) == (None, 0.0, 0.0)


def test_the_carry_limit_is_a_param(spark: Any, project: Settings) -> None:
    _revenue_inputs(spark, project, [(date(2024, 11, 3), "JP", "JPY", 16554.0)])  # Friday's rate: 2 days back
    _set_params(project, "gold.revenue_daily", max_carry_days=1)
    with pytest.raises(DataError, match="no FX rate within 1 days for JPY on 2024-11-03"):
        _revenue(spark, project)
    _set_params(project, "gold.revenue_daily", max_carry_days=2)
    assert _revenue(spark, project)[("2024-11-03", "JP")]["rate_per_eur"] == 165.54


def test_an_unknown_reporting_currency_stops_the_build(spark: Any, project: Settings) -> None:
    _revenue_inputs(spark, project, DAILY_KPIS)
    _set_params(project, "gold.revenue_daily", reporting_currency="XXX")
    with pytest.raises(DataError, match=r"no FX rate within 7 days for .*\(reporting XXX\)"):
        _revenue(spark, project)


# --- gold.customer_orders: the customer feature view's table (models/gold/customer_orders.sql) ------------


def test_customer_orders_sum_each_customers_days_as_known_the_midnight_after(
    spark: Any, project: Settings
) -> None:
    from datetime import datetime

    columns = load_catalog(project).contract("silver.retail_orders").columns
    orders = [  # order_id, customer_id, order_date, status, total_amount, _deleted
        (1, 7, date(2024, 1, 10), "delivered", "20.00", False),
        (2, 7, date(2024, 1, 10), "cancelled", "5.00", False),
        (3, 7, date(2024, 3, 1), "delivered", "30.00", False),
        (4, 7, date(2025, 2, 1), "placed", "45.00", False),
        (5, 7, date(2024, 3, 1), "delivered", "999.00", True),  # deleted in the shop: not counted
        (6, 8, date(2024, 3, 1), "delivered", "10.00", False),
    ]
    frame = spark.createDataFrame(
        [
            (*o[:4], o[4], "USD", datetime(2025, 1, 6), o[5], 1, "extract", datetime(2025, 1, 6))
            for o in orders
        ],
        ", ".join(f"{c.name} {'string' if c.name == 'total_amount' else c.type}" for c in columns),
    ).withColumn("total_amount", F.col("total_amount").cast("decimal(12,2)"))
    frame.write.format("delta").mode("overwrite").save(project.table_path("silver", "retail_orders"))

    report = models.build_model(spark, project, "gold.customer_orders", run_id="r")  # its suite passes too
    assert report.rows == 4
    table = spark.read.format("delta").load(project.table_path("gold", "customer_orders"))
    rows = {(r["customer_id"], r["day"]): r for r in table.collect()}
    first, second, third = (
        rows[(7, date(2024, 1, 10))],
        rows[(7, date(2024, 3, 1))],
        rows[(7, date(2025, 2, 1))],
    )
    assert first["as_of"] == datetime(2024, 1, 11)  # known once the day is over
    assert (first["orders_90d"], first["cancelled_orders_365d"], first["amount_365d"]) == (2, 1, 25.0)
    assert first["days_since_previous_order"] is None and first["days_since_first_order"] == 0
    # 51 days later: both windows still hold January; the deleted order is nowhere
    assert (second["orders_90d"], second["orders_365d"], second["amount_365d"]) == (3, 3, 55.0)
    assert second["average_order_amount_365d"] == pytest.approx(55.0 / 3)
    assert second["days_since_previous_order"] == 51
    # 2025-02-01: January 2024 is out of the 365 days (388 days back), March 2024 is in (337)
    assert (third["orders_90d"], third["orders_365d"], third["orders_to_date"]) == (1, 2, 4)
    assert third["days_since_first_order"] == 388
    assert rows[(8, date(2024, 3, 1))]["orders_to_date"] == 1
