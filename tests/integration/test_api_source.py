"""The third-party API path end to end: the real ECB rates served by fx_api (with faults) → HTTP connector
→ buffered delivery → bronze (delta-rs) → silver fx_rates → gold revenue in a reporting currency (Spark)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.errors import DataError
from lakehouse.gold import models
from lakehouse.governance.catalog import load_catalog
from lakehouse.silver import engine
from lakehouse.simulate.fx_api import Faults, RunningServer, load_ecb_rates, start_server
from lakehouse.sources.firehose import BRONZE_HTTP, delta_append
from lakehouse.sources.http import PullTargets, RetryPolicy, pull_source
from lakehouse.sources.registry import HttpAuth, HttpPagination, HttpSource
from project_files import copy_declarations
from revenue_cases import DAILY_KPIS, assert_revenue_in_eur

pytestmark = pytest.mark.integration

FIRST_SINCE, FIRST_UNTIL, SECOND_UNTIL = "2024-10-31", "2024-11-30", "2024-12-06"
TIMEOUT_S = 0.5


class Sleeps(list[float]):
    """Records the waits the connector asks for instead of sleeping (the server does not enforce them)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def expected_keys(since: str, until: str) -> set[str]:
    return {f"{r.date}|{r.currency}" for r in load_ecb_rates() if since < r.date <= until}


def fx_source(url: str, until: str, style: str = "cursor", page_size: int = 100) -> HttpSource:
    return HttpSource(
        name="fx_rates",
        kind="http",
        url=f"{url}?since={FIRST_SINCE}&until={until}",
        bronze="fx_rates",
        key=["date", "currency"],
        ordering="date",
        contract={"date": "date", "currency": "string", "rate_per_eur": "double"},
        auth=HttpAuth(value="Bearer ${LAKEHOUSE_FX_TOKEN:-demo-token}"),
        pagination=HttpPagination(style=style, page_size=page_size),  # type: ignore[arg-type]
        incremental_param="since",
        incremental_field="date",
        timeout_s=TIMEOUT_S,
        max_retries=4,
        flush_records=250,
        flush_seconds=60.0,
    )


@pytest.fixture()
def faulty_server() -> Iterator[RunningServer]:
    # 429 on calls 1-2, 500 on every 5th call, every 7th call slower than the client's timeout.
    faults = Faults(throttle_first=2, retry_after="1", fail_every=5, slow_every=7, slow_seconds=TIMEOUT_S * 3)
    with start_server(faults=faults) as server:
        yield server


def bronze_rows(path: str) -> list[dict[str, Any]]:
    return DeltaTable(path).to_pyarrow_table().to_pylist()


def test_pull_lands_every_rate_once_despite_faults_then_only_new_days(
    faulty_server: RunningServer, tmp_path: Path
) -> None:
    targets = PullTargets(str(tmp_path / "bronze"), str(tmp_path / "dead"), tmp_path / "state.json")
    sleeps = Sleeps()
    first = pull_source(fx_source(faulty_server.url, FIRST_UNTIL), targets=targets, sleep=sleeps)

    statuses = faulty_server.statuses
    assert statuses[:2] == [429, 429] and 500 in statuses
    assert any("Timeout" in failure for failure in first.failures), first.failures
    assert sleeps[:2] == [1.0, 1.0]  # Retry-After honoured
    assert all(0 <= wait <= RetryPolicy().ceiling(4) for wait in sleeps[2:])
    assert first.pages == 7 and first.dead_letters == []

    rows = bronze_rows(targets.bronze)
    keys = [row["dedupe_key"] for row in rows]
    assert len(keys) == len(set(keys)) == first.written == 630
    assert set(keys) == expected_keys(FIRST_SINCE, FIRST_UNTIL)
    assert {len(f.batch_id) for f in first.flushes} == {36} and sum(f.written for f in first.flushes) == 630
    assert json.loads(next(r["record"] for r in rows if r["dedupe_key"] == "2024-11-01|USD")) == {
        "date": "2024-11-01",
        "currency": "USD",
        "rate_per_eur": 1.0885,
    }
    assert (
        first.cursor_after == "2024-11-29" and json.loads(targets.state.read_text())["cursor"] == "2024-11-29"
    )

    # A week later: the persisted cursor asks only for days after 2024-11-29.
    second = pull_source(fx_source(faulty_server.url, SECOND_UNTIL), targets=targets, sleep=Sleeps())
    assert second.cursor_before == "2024-11-29" and second.cursor_after == "2024-12-06"
    assert second.received == second.written == 150 and second.duplicates == 0
    new_batches = {f.batch_id for f in second.flushes}
    new_rows = [row for row in bronze_rows(targets.bronze) if row["batch_id"] in new_batches]
    assert {row["dedupe_key"] for row in new_rows} == expected_keys("2024-11-29", SECOND_UNTIL)
    assert all("since=2024-11-29" in row["request_url"] for row in new_rows)
    assert len(bronze_rows(targets.bronze)) == 780


def test_page_pagination_against_the_server(faulty_server: RunningServer, tmp_path: Path) -> None:
    targets = PullTargets(str(tmp_path / "bronze"), str(tmp_path / "dead"), tmp_path / "state.json")
    source = fx_source(faulty_server.url, "2024-11-08", style="page", page_size=40)
    report = pull_source(source, targets=targets, sleep=Sleeps())
    keys = [row["dedupe_key"] for row in bronze_rows(targets.bronze)]
    assert len(keys) == len(set(keys)) == report.written == len(expected_keys(FIRST_SINCE, "2024-11-08"))
    assert report.pages == report.written // 40 + 1  # the last page is short (or empty)


def _with_flawed_rows(path: str) -> None:
    """Bronze rows the connector could have landed from a sloppier API: bad date, bad rate, broken JSON and a
    lower-case currency (a different dedupe key, the same rate once cleaned)."""
    flawed = [
        ('{"date":"2024-11-31","currency":"USD","rate_per_eur":1.1}', "2024-11-31|USD"),
        ('{"date":"2024-11-05","currency":"XTS","rate_per_eur":-1}', "2024-11-05|XTS"),
        ("{not json", "broken"),
        ('{"date":"2024-11-01","currency":"usd","rate_per_eur":1.0885}', "2024-11-01|usd"),
    ]
    now = datetime.now(UTC)
    rows = [
        {
            "record": r,
            "dedupe_key": k,
            "source": "fx_rates",
            "request_url": "test",
            "fetched_at": now,
            "batch_id": "t",
        }
        for r, k in flawed
    ]
    delta_append(path, pa.Table.from_pylist(rows, schema=BRONZE_HTTP))


def _project(settings: Settings, root: Path) -> Settings:
    """A copy of the project's declarations with its own lake under ``root``."""
    copy_declarations(settings.root, root / "project")
    quality = settings.quality.model_copy(update={"data_docs": False})
    return settings.model_copy(
        update={"root": root / "project", "workspace": root / "ws", "quality": quality}
    )


def _set_params(project: Settings, **params: Any) -> None:
    path = project.root / "catalog" / "gold" / "revenue_daily.yaml"
    document = yaml.safe_load(path.read_text())
    document["model"]["params"].update(params)
    path.write_text(yaml.safe_dump(document))


def _revenue(spark: Any, project: Settings, kpis: list[tuple[Any, ...]]) -> dict[tuple[str, str], Any]:
    """Build gold.revenue_daily over these (date, country, currency, revenue) daily KPIs."""
    columns = load_catalog(project).contract("gold.daily_kpis").columns
    frame = spark.createDataFrame(kpis, "date date, country string, currency string, revenue double")
    frame = frame.select(
        *[F.col(c.name) if c.name in frame.columns else F.lit(0).cast(c.type).alias(c.name) for c in columns]
    )
    frame.write.format("delta").mode("overwrite").save(project.table_path("gold", "daily_kpis"))
    models.build_model(spark, project, "gold.revenue_daily")
    table = spark.read.format("delta").load(project.table_path("gold", "revenue_daily"))
    return {(str(r["date"]), r["country"]): r for r in table.collect()}


def test_silver_and_gold_convert_revenue_at_the_days_rate(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    with start_server() as server:
        targets = PullTargets(str(tmp_path / "bronze"), str(tmp_path / "dead"), tmp_path / "state.json")
        pull_source(fx_source(server.url, SECOND_UNTIL, page_size=1000), targets=targets, sleep=Sleeps())
    _with_flawed_rows(targets.bronze)
    # The declared silver.fx_rates (catalog/silver/fx_rates.yaml), reading and writing this test's tables.
    declared = engine.silver_table(stack, "silver.fx_rates")
    tables = dataclasses.replace(
        declared,
        path=str(tmp_path / "silver"),
        quarantine=str(tmp_path / "quarantine"),
        audit=str(tmp_path / "audit"),
        checkpoints=str(tmp_path / "checkpoints"),
        input_paths={"fx_rates": targets.bronze},
    )

    report = engine.build_table(spark, stack, "silver.fx_rates", table=tables, quality=False).total
    assert (report.input_rows, report.applied, report.quarantined, report.duplicates) == (784, 780, 3, 1)
    assert engine.check_table(spark, tables)["applied"] == 780
    reasons = {r["reason"] for r in spark.read.format("delta").load(tables.quarantine).collect()}
    assert reasons == {"invalid_date", "non_positive_rate", "malformed_json"}
    again = engine.build_table(spark, stack, "silver.fx_rates", table=tables, quality=False).total
    assert again.input_rows == 0  # nothing new in bronze: the checkpoint remembers
    rates = spark.read.format("delta").load(tables.path)
    assert rates.groupBy("date", "currency").count().where("count > 1").count() == 0
    usd = rates.where((F.col("date") == "2024-11-01") & (F.col("currency") == "USD")).first()
    assert usd is not None and usd["rate_per_eur"] == 1.0885

    # The declared gold.revenue_daily (catalog/gold/revenue_daily.yaml + models/gold/revenue_daily.sql), in a
    # copy of the project whose lake holds these rates and these daily KPIs.
    project = _project(stack, tmp_path)
    rates.write.format("delta").save(project.table_path("silver", "fx_rates"))
    kpis = DAILY_KPIS
    assert_revenue_in_eur(_revenue(spark, project, kpis))

    _set_params(project, reporting_currency="USD")
    in_usd = {key: r["revenue_reporting"] for key, r in _revenue(spark, project, kpis).items()}
    assert in_usd[("2024-11-03", "JP")] == pytest.approx(100.0 * 1.0885)  # Sunday: Friday's USD rate
    assert in_usd[("2024-11-04", "GB")] == pytest.approx(100.0 * 1.0904)

    with pytest.raises(DataError, match="USD on 2024-12-20"):  # raise_error in the SQL, over Spark Connect
        _revenue(spark, project, [(date(2024, 12, 20), "US", "USD", 10.0)])
