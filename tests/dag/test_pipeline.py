"""The whole DAG on the test environment: built from Kafka to a model, incremental, four ways to run."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from lakehouse.cli import main
from lakehouse.config import Settings
from lakehouse.dag import build, plan, ploomber_env
from lakehouse.silver import engine
from lakehouse.simulate import simulate_to_kafka

pytestmark = pytest.mark.dag

# Downstream of the Kafka-backed bronze task: re-run when Kafka has new records.
NOTEBOOKS = [
    "bronze/ingest_events",
    "silver/events",
    "gold/sessions",
    "gold/daily_kpis",
    "gold/funnel",
    "gold/revenue_daily",
    "gold/user_history",
    "ml/features_materialize",
    "ml/score_conversion_propensity",
    "ml/monitor_conversion_propensity",
    "quality/profile_tables",
    "quality/check_governance",
]
EVERY_NOTEBOOK = [
    *NOTEBOOKS,
    "bronze/pull_apis",
    "silver/fx_rates",
    "gold/fx_monthly",
    "silver/telemetry",
    "gold/device_offline",
    "ml/features_apply",
    "ml/train_conversion_propensity",
]
DOWNSTREAM_OF_CLICKSTREAM = [
    "bronze-ingest-events",
    "silver-events",
    "gold-sessions",
    "gold-daily-kpis",
    "gold-funnel",
    "gold-revenue-daily",
    "gold-user-history",
    "ml-features-materialize",
    "ml-score-conversion-propensity",
    "ml-monitor-conversion-propensity",
    "quality-profile-tables",
    "governance-check-catalog",
]
# Retrains only when the monitor asks (drift or a quality drop), never because rows are new.
TRAIN = "ml-train-conversion-propensity"


def _executed(settings: Settings) -> dict[str, float]:
    return {nb: (settings.workspace / "notebooks" / f"{nb}.ipynb").stat().st_mtime for nb in EVERY_NOTEBOOK}


@pytest.fixture(scope="module")
def built(stack: Settings, spark: Any) -> dict[str, Any]:
    from lakehouse.simulate.retail import ensure_seeded

    started = datetime.now(UTC)
    report = simulate_to_kafka(stack)
    ensure_seeded(stack, stack.postgres.seed_limit or None)  # as `make demo` does before its first build
    build(stack)
    return {"report": report, "executed": _executed(stack), "started": started}


def test_the_dag_builds_every_product(stack: Settings, built: dict[str, Any]) -> None:
    for nb in NOTEBOOKS:
        assert (stack.workspace / "notebooks" / f"{nb}.ipynb").is_file(), nb
    for layer, table in [
        ("bronze", "clickstream"),
        ("silver", "events"),
        ("gold", "sessions"),
        ("gold", "daily_kpis"),
    ]:
        assert (Path(stack.table_path(layer, table)) / "_delta_log").is_dir(), table
    metrics = json.loads((stack.workspace / "ml" / "conversion_propensity" / "metrics.json").read_text())
    assert 0.5 < metrics["metrics"]["roc_auc"] <= 1.0
    assert metrics["champion_version"] is not None


def test_the_ml_loop_ends_with_a_champion_predictions_monitoring_and_online_features(
    stack: Settings, built: dict[str, Any]
) -> None:
    from deltalake import DeltaTable

    from lakehouse.ml import features, monitoring, training

    spec = training.load_model_spec(stack, "conversion_propensity")
    champion = monitoring.champion(stack, spec)
    assert champion is not None
    # the champion scored its held-out window: every session from its cut-off on, once
    predictions = monitoring.predictions(stack, spec.registered_name)
    sessions = DeltaTable(stack.table_path("gold", "sessions")).to_pandas()
    held_out = sessions[pd.to_datetime(sessions["session_end"], utc=True) >= champion.cutoff]
    assert len(predictions) == len(held_out) > 0
    assert predictions["entity_key"].is_unique and predictions["prediction"].between(0, 1).all()
    # each scored window was monitored, with an Evidently report kept as a product
    windows = monitoring.monitoring_history(stack, spec.registered_name)
    assert set(windows["batch_id"]) == set(predictions["batch_id"])
    assert all(Path(report).is_file() for report in windows["report"])
    # the views' newest rows were materialized to Redis and read back as the gold table holds them
    done = {row["view"]: row for row in json.loads(features.materialize_report_path(stack).read_text())}
    assert done["session_activity"]["skipped"] is None and done["user_history"]["skipped"] is None
    newest = sessions.sort_values("session_end").iloc[-1]
    online = features.online_features(
        stack,
        [{"session_id": newest["session_id"]}],
        ["session_activity:page_views", "session_activity:channel"],
    )
    assert online["page_views"].iloc[0] == newest["page_views"]
    assert online["channel"].iloc[0] == newest["channel"]
    # an on-demand feature is computed from what Redis holds, by its declared expression
    ratio = features.online_features(
        stack, [{"session_id": newest["session_id"]}], ["session_ratios:cart_rate"]
    )
    if newest["page_views"]:
        assert ratio["cart_rate"].iloc[0] == pytest.approx(newest["add_to_carts"] / newest["page_views"])
    # the retail database reaches the feature store too: the newest customer row, from Redis
    assert done["customer_orders"]["skipped"] is None
    customers = DeltaTable(stack.table_path("gold", "customer_orders")).to_pandas()
    latest = customers.sort_values("as_of").iloc[-1]
    held = features.online_features(
        stack, [{"customer_id": int(latest["customer_id"])}], ["customer_orders:orders_to_date"]
    )
    assert (
        held["orders_to_date"].iloc[0]
        == customers[customers["customer_id"] == latest["customer_id"]]["orders_to_date"].max()
    )


def test_counts_reconcile_with_what_was_produced(stack: Settings, spark: Any, built: dict[str, Any]) -> None:
    kinds = built["report"].by_kind
    totals = engine.check_table(spark, engine.silver_table(stack, "silver.events"))  # raises unless balanced
    assert totals["input_rows"] == built["report"].sent
    assert totals["applied"] == kinds.get("valid", 0) + kinds.get("late", 0)
    assert totals["quarantined"] == kinds.get("malformed", 0) + kinds.get("very_late", 0)
    assert totals["duplicates"] == kinds.get("duplicate", 0)
    assert totals["late"] == kinds.get("very_late", 0)


def test_a_second_build_with_nothing_new_runs_nothing(stack: Settings, built: dict[str, Any]) -> None:
    report = build(stack)  # how long it takes: benchmarks/noop_build.py
    assert report.ran == [], "\n".join(o.line() for o in report.outcomes)
    assert set(report.skipped) == set(TASKS)
    assert _executed(stack) == built["executed"]
    # `lakehouse status` says the same: no table lags its inputs
    shown = CliRunner().invoke(main, ["--env", stack.env_name, "status"])
    assert shown.exit_code == 0, shown.output
    assert f"all {len(TASKS)} task(s) current" in shown.output


def test_new_events_of_a_drift_scenario_rerun_downstream_and_retrain_the_model(
    stack: Settings, spark: Any, built: dict[str, Any]
) -> None:
    events = engine.silver_table(stack, "silver.events")
    before = engine.check_table(spark, events)
    from mlflow.tracking import MlflowClient

    from lakehouse.ml import monitoring, training

    spec = training.load_model_spec(stack, "conversion_propensity")
    client = MlflowClient(tracking_uri=stack.mlflow_tracking_uri)
    versions_before = len(client.search_model_versions(f"name='{spec.registered_name}'"))
    started = datetime.now(UTC)
    # the next window's traffic is a social-media campaign's new mobile users (a drift)
    more = simulate_to_kafka(stack, count=300, run=1, scenario="mobile_campaign")
    # Before the build, the plan (what `lakehouse status` shows) says who lags and why, running nothing.
    planned = {o.task: o for o in plan(stack)}
    assert planned["bronze-ingest-events"].action == "behind"
    assert f"clickstream: {more.sent} records in Kafka" in planned["bronze-ingest-events"].reasons[0]
    waiting = {t for t, o in planned.items() if o.action == "waiting"}
    assert set(DOWNSTREAM_OF_CLICKSTREAM[1:]) <= waiting  # checked again once bronze ran
    assert set(planned) == set(TASKS)
    report = build(stack)
    assert set(report.ran) - {TRAIN} <= {t for t, o in planned.items() if o.action != "current"}, (
        "the plan missed a task"
    )
    # exactly the Kafka bronze task and what reads its clickstream table, directly or not
    assert set(report.ran) - {TRAIN} == set(DOWNSTREAM_OF_CLICKSTREAM), "\n".join(
        o.line() for o in report.outcomes
    )
    # the campaign's window drifted, asked for a retrain, and the same build retrained (its second pass)
    windows = monitoring.monitoring_history(stack, spec.registered_name)
    new = windows[windows["monitored_at"] >= pd.Timestamp(started)]
    assert new["retrain"].any(), new[["rows", "drift_share", "reason"]]
    assert "features drifted" in " ".join(new["reason"])
    assert TRAIN in report.ran, "\n".join(o.line() for o in report.outcomes)
    # a new version was registered as challenger, and became champion only if it beat the champion
    versions = client.search_model_versions(f"name='{spec.registered_name}'")
    assert len(versions) == versions_before + 1
    newest = str(max(int(v.version) for v in versions))
    decision = training.promotions(stack).iloc[-1]
    assert decision["challenger_version"] == newest
    champion = str(client.get_model_version_by_alias(spec.registered_name, "champion").version)
    assert (champion == newest) == bool(decision["promoted"])
    if decision["champion_value"] == decision["champion_value"]:  # there was a champion to compare with
        margin = spec.promotion.margin
        assert bool(decision["promoted"]) == (
            decision["challenger_value"] >= decision["champion_value"] + margin
        )
    assert f"clickstream: {more.sent} records in Kafka" in report.outcome("bronze-ingest-events").reasons[0]
    assert any("bronze/clickstream v" in r for r in report.outcome("silver-events").reasons)
    after = engine.check_table(spark, events)  # still balanced
    assert after["input_rows"] == before["input_rows"] + more.sent
    assert after["applied"] > before["applied"]
    executed = _executed(stack)
    assert all(executed[nb] > built["executed"][nb] for nb in NOTEBOOKS)


def _papermill(stack: Settings, tmp_path: Path, *params: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "papermill"),
        "notebooks/gold/build_model.ipynb",
        str(tmp_path / "out.ipynb"),
        "-p",
        "lakehouse_env",
        stack.env_name,
        *params,
    ]
    return subprocess.run(command, cwd=stack.root, env=ploomber_env(stack), capture_output=True, text=True)


def test_a_notebook_runs_alone_with_papermill(stack: Settings, built: dict[str, Any], tmp_path: Path) -> None:
    result = _papermill(stack, tmp_path, "-p", "table", "gold.sessions")
    assert result.returncode == 0, result.stderr[-3000:]
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert 'table = "gold.sessions"' in "".join(injected[0]["source"])


def _ploomber(stack: Settings, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    ploomber = str(Path(sys.executable).parent / "ploomber")
    command = [ploomber, *args, "--entry-point", str(stack.root / "pipeline.yaml")]
    env = {**ploomber_env(stack), "COLUMNS": "2000"}  # a table as wide as it needs: no wrapped names
    return subprocess.run(
        command, cwd=cwd or stack.root, env=env, capture_output=True, text=True, timeout=300
    )


def _task_names(stack: Settings) -> list[str]:
    import yaml

    spec = yaml.safe_load((stack.root / "pipeline.yaml").read_text())
    return [task["name"] for task in spec["tasks"]]


def test_ploomber_status_reports_every_task_built(stack: Settings, built: dict[str, Any]) -> None:
    result = _ploomber(stack, "status")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    for name in _task_names(stack):
        assert name in rows, f"{name} missing from `ploomber status`:\n{result.stdout[-3000:]}"
        assert "Has not been run" not in rows[name], rows[name]


def test_ploomber_plot_draws_every_task_and_edge(stack: Settings, tmp_path: Path) -> None:
    # networkx 3.6 renamed the key Ploomber 0.23.3 reads (KeyError: 'links'): networkx stays pinned below it.
    import yaml

    output = tmp_path / "dag.html"
    result = _ploomber(stack, "plot", "--backend", "d3", "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    html = output.read_text()
    # the d3 page embeds each node as {..., "id": name, ..., "parentIds": [upstream, ...]}
    drawn = {
        match.group(1): set(re.findall(r'"([^"]+)"', match.group(2) or ""))
        for match in re.finditer(r'"id": "([^"]+)", "label": [^{}]*?(?:"parentIds": \[([^\]]*)\])?\}', html)
    }
    spec = yaml.safe_load((stack.root / "pipeline.yaml").read_text())
    imported = yaml.safe_load((stack.root / spec["meta"]["import_tasks_from"]).read_text())  # declared tables
    tasks = [*spec["tasks"], *imported]
    names = [task["name"] for task in tasks]
    # an upstream may be a wildcard ("silver-*": every declared table's task), expanded as Ploomber does
    expected = {
        task["name"]: {name for up in task.get("upstream", []) for name in fnmatch.filter(names, up)}
        for task in tasks
    }
    assert drawn == expected
    default = _ploomber(stack, "plot", cwd=tmp_path)  # the README's form: the default backend
    assert default.returncode == 0, default.stderr[-3000:]
    assert (tmp_path / "pipeline.html").stat().st_size > 1000


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (("-p", "table", "45"), "parameter 'table' must be str"),
        (("-p", "tabel", "gold.sessions"), "unknown parameter(s) ['tabel']"),
    ],
)
def test_bad_parameters_stop_the_run_with_a_clear_message(
    stack: Settings, built: dict[str, Any], tmp_path: Path, params: tuple[str, ...], message: str
) -> None:
    result = _papermill(stack, tmp_path, *params)
    assert result.returncode != 0
    assert message in result.stderr + (tmp_path / "out.ipynb").read_text()


# Every task of pipeline.yaml, and what the DAG must leave behind for quality, lineage and governance.
TASKS = [
    "bronze-ingest-events",
    "bronze-pull-apis",
    "bronze-extract-retail",
    "silver-events",
    "silver-fx-rates",
    "silver-retail-customers",
    "silver-retail-orders",
    "silver-retail-order-items",
    "silver-retail-products",
    "silver-dim-customer",
    "silver-telemetry",
    "gold-sessions",
    "gold-daily-kpis",
    "gold-funnel",
    "gold-revenue-daily",
    "gold-fx-monthly",
    "gold-device-offline",
    "gold-user-history",
    "gold-customer-orders",
    "ml-train-conversion-propensity",
    "ml-score-conversion-propensity",
    "ml-monitor-conversion-propensity",
    "ml-features-apply",
    "ml-features-materialize",
    "quality-profile-tables",
    "governance-check-catalog",
]


def _dag_tables(stack: Settings, since: datetime) -> set[str]:
    """Every lake table a task of these DAG builds wrote, as lineage says (other tests leave their own)."""
    tables = set()
    for line in (stack.reports / "lineage" / "openlineage.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["job"]["name"] not in TASKS or datetime.fromisoformat(event["eventTime"]) < since:
            continue
        for dataset in event.get("outputs") or []:
            for identifier in dataset["facets"]["symlinks"]["identifiers"]:
                tables.add(identifier["name"])
    return tables


def test_every_table_is_catalogued_and_matches_its_contract(stack: Settings, built: dict[str, Any]) -> None:
    from lakehouse.governance.catalog import check_catalog, load_catalog

    catalog = load_catalog(stack)
    written = _dag_tables(stack, built["started"])
    assert {"bronze.clickstream", "silver.events", "silver.retail_customers", "gold.revenue_daily"} <= written
    uncatalogued = written - set(catalog.tables)
    assert not uncatalogued, f"tables without a contract: {sorted(uncatalogued)}"
    checked = check_catalog(stack, catalog=catalog)  # raises SchemaDriftError on drift
    assert {"bronze.clickstream", "silver.events", "gold.sessions", "audit.validation_results"} <= set(
        checked
    )


def test_every_table_with_a_suite_is_validated_at_its_current_version(
    stack: Settings, built: dict[str, Any]
) -> None:
    from lakehouse.quality import list_suites
    from lakehouse.quality.coverage import validation_coverage

    coverage = validation_coverage(stack)
    assert set(list_suites(stack)) >= _dag_tables(stack, built["started"])
    missing = coverage[coverage["last_validated"].isna()]["table"].tolist()
    assert not missing, f"never validated: {missing}"
    stale = coverage[
        coverage["previous_commit"].notna() & (coverage["last_validated"] <= coverage["previous_commit"])
    ]["table"].tolist()
    assert not stale, f"changed since their last validation: {stale}"


def test_quarantined_rows_carry_their_reasons_rules_and_run(stack: Settings, built: dict[str, Any]) -> None:
    from deltalake import DeltaTable

    quarantine = DeltaTable(stack.table_path("silver", "events_quarantine")).to_pandas()
    assert len(quarantine) > 0
    assert quarantine["reason"].notna().all()
    assert quarantine["failed_rules"].map(lambda rules: rules is not None and len(rules) > 0).all()
    assert quarantine["run_id"].notna().all() and quarantine["batch_id"].notna().all()
    assert quarantine["quarantined_at"].notna().all()


def test_every_task_is_traced_with_openlineage(stack: Settings, built: dict[str, Any]) -> None:
    from lakehouse.lineage import lineage_graph

    events = [
        json.loads(line)
        for line in (stack.reports / "lineage" / "openlineage.jsonl").read_text().splitlines()
        if line.strip()
    ]
    by_job: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_job.setdefault(event["job"]["name"], []).append(event)
    assert set(TASKS) <= set(by_job), f"untraced tasks: {sorted(set(TASKS) - set(by_job))}"
    for job in TASKS:
        states = [e["eventType"] for e in by_job[job]]
        assert "START" in states and "COMPLETE" in states and "FAIL" not in states, (job, states)
    complete = next(e for e in reversed(by_job["silver-events"]) if e["eventType"] == "COMPLETE")
    silver = next(d for d in complete["outputs"] if d["name"].endswith("/silver/events"))
    assert silver["facets"]["delta"]["version"] >= 1
    assert silver["facets"]["dataQualityMetrics"]["rowCount"] > 0
    assert {f["name"] for f in silver["facets"]["schema"]["fields"]} >= {"event_id", "client_ip"}
    edges = lineage_graph(stack)
    pairs = set(zip(edges["input"], edges["output"], strict=True))
    assert ("source.clickstream", "bronze.clickstream") in pairs
    assert ("bronze.clickstream", "silver.events") in pairs
    assert ("silver.events", "gold.sessions") in pairs
    assert ("gold.user_history", "gold.predictions") in pairs  # the model's scoring, traced like the rest


def test_profiles_and_data_docs_are_products_of_the_dag(stack: Settings, built: dict[str, Any]) -> None:
    profiles = stack.reports / "profiles"
    for table in ("bronze.clickstream", "silver.events", "silver.retail_customers"):
        report = profiles / f"{table}.html"
        assert report.is_file() and report.stat().st_size < 2_000_000, table
    docs = (stack.reports / "data_docs" / "index.html").read_text()
    assert "silver.events" in docs


def test_no_clear_pii_in_silver_or_gold(stack: Settings, built: dict[str, Any]) -> None:
    from lakehouse.governance.catalog import load_catalog
    from lakehouse.privacy.scanner import scan_tables

    guarded = {name for name, c in load_catalog(stack).tables.items() if not c.restricted}
    assert (
        _dag_tables(stack, built["started"]) & {"silver.events", "silver.retail_customers", "gold.sessions"}
        <= guarded
    )
    bronze = scan_tables(stack, ["bronze"])
    assert {"email", "ip"} <= set(bronze["kind"]), (
        "the demo data carries PII in bronze: the scanner must see it"
    )
    findings = scan_tables(stack, ["silver", "gold"])
    # A name alone (a tokenized `email` column) is no leak: values that look like PII are.
    leaks = findings[(findings["hit_rate"] > 0) & findings["table"].isin(guarded)]
    assert leaks.empty, leaks[["table", "column", "kind", "hit_rate"]].to_string()


def test_reports_hold_none_of_the_clear_pii_that_bronze_holds(stack: Settings, built: dict[str, Any]) -> None:
    from deltalake import DeltaTable

    payloads = DeltaTable(stack.table_path("bronze", "clickstream")).to_pandas(columns=["value"])["value"]
    ips = set()
    for value in payloads.head(3000):
        try:
            ips.add(json.loads(value).get("client_ip"))
        except (TypeError, ValueError, AttributeError):
            continue  # the simulator's malformed payloads
    ips -= {None}
    customers = DeltaTable(stack.table_path("bronze", "retail_customers")).to_pandas(
        columns=["email", "name"]
    )
    clear = {str(ip) for ip in ips} | set(customers["email"].head(500)) | set(customers["name"].head(500))
    assert len(clear) > 100, "bronze should hold clear PII to look for"
    reports = [*stack.reports.glob("profiles/*.html"), *stack.reports.glob("data_docs/**/*.html")]
    assert len(reports) > 10
    for report in reports:
        text = report.read_text(errors="replace")
        found = [value for value in clear if value in text]
        assert not found, f"{report.relative_to(stack.reports)} shows clear PII: {found[:3]}"


@pytest.fixture(scope="module")
def endpoint(stack: Settings, built: dict[str, Any]) -> Iterator[str]:
    """The conversion model's champion behind `mlflow models serve`, as `lakehouse demo` starts it."""
    from lakehouse.stack import ServiceManager

    manager = ServiceManager(stack, fresh=False)
    manager.start(["model-conversion-propensity"])
    yield manager.services()["model-conversion-propensity"].url
    manager.stop(["model-conversion-propensity"])


def test_online_scoring_reads_redis_and_asks_the_champions_endpoint(
    stack: Settings, built: dict[str, Any], endpoint: str
) -> None:
    import mlflow.pyfunc
    from deltalake import DeltaTable

    from lakehouse.ml import serving, training

    spec = training.load_model_spec(stack, "conversion_propensity")
    scorer = serving.OnlineScorer(stack, spec, url=endpoint)
    sessions = DeltaTable(stack.table_path("gold", "sessions")).to_pandas()
    recent = sessions.sort_values("session_end").tail(3)[["session_id", "user_id"]].to_dict("records")
    scored = scorer.score(recent)
    assert scored["session_id"].tolist() == [r["session_id"] for r in recent]
    assert scored["prediction"].between(0, 1).all()
    # the endpoint is the champion: the same inputs scored in process give the same probabilities
    inputs = scorer.features(recent)
    assert inputs["session_activity__page_views"].notna().all()  # the session's features came from Redis
    champion = mlflow.pyfunc.load_model(f"models:/{spec.registered_name}@champion")
    local = champion.predict(inputs[training.feature_columns(spec)])[:, 1]
    assert scored["prediction"].to_numpy() == pytest.approx(local, abs=1e-9)


def test_bad_scoring_requests_are_4xx_or_clear_errors(
    stack: Settings, built: dict[str, Any], endpoint: str
) -> None:
    from lakehouse.errors import ConfigError, DataError
    from lakehouse.ml import monitoring, serving, training

    spec = training.load_model_spec(stack, "conversion_propensity")
    scorer = serving.OnlineScorer(stack, spec, url=endpoint)
    inputs = scorer.features([{"session_id": "no-such-session", "user_id": "no-such-user"}])
    columns = training.feature_columns(spec)
    with pytest.raises(serving.ScoringRequestError, match="missing inputs") as missing:
        serving.invoke(endpoint, inputs[columns].drop(columns=["session_activity__channel"]))
    assert missing.value.status == 400
    with pytest.raises(serving.ScoringRequestError) as ill_typed:
        serving.invoke(endpoint, inputs[columns].assign(session_activity__page_views="many"))
    assert ill_typed.value.status == 400
    with pytest.raises(DataError, match=r"lacks \['user_id'\]"):
        scorer.score([{"session_id": "s"}])
    # a model version trained on other features is refused by name, before it could be served
    champion = monitoring.champion(stack, spec)
    assert champion is not None
    other = spec.model_copy(update={"features": (*spec.features[:-1],)})
    with pytest.raises(ConfigError, match="trained on other features") as refused:
        serving.check_signature(stack, other, champion.version)
    assert spec.features[-1].replace(":", "__") in str(refused.value)
