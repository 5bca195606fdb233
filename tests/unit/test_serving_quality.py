"""The quality dashboard's readers on small hand-made Delta tables, lineage events and catalog contracts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from deltalake import write_deltalake

from lakehouse.config import Settings, load_settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.privacy.tokenize import token
from lakehouse.serving import quality
from quality_builders import T0, lineage_event, result, write_results

pytestmark = pytest.mark.unit

KEY = "unit-test-key"
PLANTED_EMAIL = "leaky.customer@example.org"
NOT_NULL = "expect_column_values_to_not_be_null:event_id"
IN_SET = "expect_column_values_to_be_in_set:event_type"
BETWEEN = "expect_column_values_to_be_between:price"
RESULTS = [
    # run-1 on silver.events: 2 batches, not_null fails in both (3 + 4 rows), in_set passes
    result("run-1", 0, "silver.events", NOT_NULL, False, 3, 0),
    result("run-1", 0, "silver.events", IN_SET, True, 0, 0),
    result("run-1", 1, "silver.events", NOT_NULL, False, 4, 1),
    result("run-1", 1, "silver.events", IN_SET, True, 0, 1),
    # run-2 on silver.events, later: only the price range fails
    result("run-2", 0, "silver.events", NOT_NULL, True, 0, 60),
    result("run-2", 0, "silver.events", IN_SET, True, 0, 60),
    result("run-2", 0, "silver.events", BETWEEN, False, 9, 60),
    # silver.telemetry: everything passes
    result("run-3", 0, "silver.telemetry", "expect_column_values_to_not_be_null:device_id", True, 0, 30),
]

CONTRACTS = {
    "silver/events_quarantine.yaml": """\
table: silver.events_quarantine
owner: web-analytics
description: Clickstream rows set aside.
classification: pii
freshness_sla: 1h
columns:
  - {name: value, type: string, classification: pii, pii: email, treatment: keep}
  - {name: reason, type: string}
  - {name: failed_rules, type: array<string>}
  - {name: batch_id, type: long}
  - {name: run_id, type: string}
  - {name: quarantined_at, type: timestamp}
""",
    "silver/events.yaml": """\
table: silver.events
owner: web-analytics
description: Clean clickstream events.
classification: internal
freshness_sla: 30d
columns:
  - {name: event_id, type: string}
""",
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "pipeline.yaml").write_text("", encoding="utf-8")
    (tmp_path / "env.yaml").write_text(
        f"env_name: local\nworkspace: {tmp_path / 'ws'}\nprivacy:\n  tokenization_key: {KEY}\n",
        encoding="utf-8",
    )
    return load_settings("local", root=tmp_path)


def write_quarantine(settings: Settings) -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            "value": [f'{{"email": "{PLANTED_EMAIL}"}}', '{"event_id": null}', '{"x": 1}', "not json"],
            "reason": ["not_null:event_id", "not_null:event_id", "in_set:event_type", None],
            "failed_rules": [
                ["not_null:event_id"],
                ["not_null:event_id", "in_set:event_type"],
                ["in_set"],
                [],
            ],
            "batch_id": [0, 0, 1, 1],
            "run_id": ["run-1"] * 4,
            "quarantined_at": [T0 + timedelta(minutes=m) for m in (0, 1, 2, 3)],
            "note": [f"contact {PLANTED_EMAIL} at 192.0.2.10", None, "ok", "ok"],
        }
    )
    write_deltalake(settings.table_path("silver", "events_quarantine"), rows)
    return rows


@pytest.fixture
def workspace(settings: Settings) -> Settings:
    write_results(settings, RESULTS)
    write_quarantine(settings)
    write_deltalake(settings.table_path("bronze", "odd_quarantine"), pd.DataFrame({"reason": ["schema"] * 2}))
    write_deltalake(settings.table_path("silver", "events"), pd.DataFrame({"event_id": ["e1", "e2"]}))
    return settings


def write_catalog(settings: Settings) -> None:
    for relative, text in CONTRACTS.items():
        path = settings.root / "catalog" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_validation_results_per_run_and_table(workspace: Settings) -> None:
    results = quality.load_validation_results(workspace)
    assert len(results) == len(RESULTS)
    assert quality.validated_tables(results) == ["silver.events", "silver.telemetry"]

    runs = quality.validation_runs(results)
    assert runs[["table", "run_id"]].values.tolist() == [
        ["silver.events", "run-1"],
        ["silver.telemetry", "run-3"],
        ["silver.events", "run-2"],
    ]
    by_run = runs.set_index("run_id")
    assert by_run.loc["run-1", "expectations"] == 4 and by_run.loc["run-1", "failed"] == 2
    assert by_run.loc["run-1", "success_rate"] == pytest.approx(0.5)
    assert by_run.loc["run-2", "success_rate"] == pytest.approx(2 / 3)
    assert by_run.loc["run-3", "success_rate"] == 1.0
    assert by_run.loc["run-1", "validated_at"] == pd.Timestamp(T0 + timedelta(minutes=1))
    assert quality.validation_runs(results, "silver.telemetry")["run_id"].tolist() == ["run-3"]


def test_failing_rules_of_the_latest_run_and_of_a_given_run(workspace: Settings) -> None:
    results = quality.load_validation_results(workspace)
    assert quality.latest_run(results, "silver.events") == "run-2"

    latest = quality.failing_rules(results, "silver.events")
    assert latest["rule"].tolist() == [BETWEEN]
    assert latest.iloc[0]["unexpected_count"] == 9

    earlier = quality.failing_rules(results, "silver.events", run_id="run-1")
    assert earlier["rule"].tolist() == [NOT_NULL]
    row = earlier.iloc[0]
    assert (row["failed_batches"], row["unexpected_count"], row["column"]) == (2, 7, "event_id")
    assert row["action"] == "quarantine"

    assert quality.failing_rules(results, "silver.telemetry").empty
    assert quality.failing_rules(results, "gold.nothing").empty


def test_quarantine_counts_per_table_and_reason(workspace: Settings) -> None:
    assert quality.quarantine_tables(workspace) == ["bronze.odd_quarantine", "silver.events_quarantine"]
    counts = quality.quarantine_counts(workspace)
    assert counts.values.tolist() == [
        ["bronze.odd_quarantine", "schema", 2],
        ["silver.events_quarantine", "not_null:event_id", 2],
        ["silver.events_quarantine", "(none)", 1],
        ["silver.events_quarantine", "in_set:event_type", 1],
    ]


def test_quarantine_samples_never_show_clear_pii(workspace: Settings) -> None:
    write_catalog(workspace)
    samples = quality.quarantine_samples(workspace, "silver.events_quarantine", limit=10)

    assert len(samples) == 4
    assert samples["batch_id"].tolist() == [1, 1, 0, 0]  # newest first
    assert len(quality.quarantine_samples(workspace, "silver.events_quarantine", limit=3)) == 3
    text = samples.to_csv()
    assert PLANTED_EMAIL not in text and "192.0.2.10" not in text
    # the catalog's pii column is tokenized (same token as the privacy module gives), others scrubbed
    assert samples["value"].iloc[3] == token(f'{{"email": "{PLANTED_EMAIL}"}}', KEY)
    assert samples["note"].iloc[3] == "contact <email> at <ipv4>"
    assert samples["failed_rules"].iloc[1] == "in_set"


def test_explicit_pii_columns_and_a_missing_key_still_mask(workspace: Settings) -> None:
    samples = quality.quarantine_samples(workspace, "silver.events_quarantine", pii=("value",))
    assert samples["value"].map(len).eq(64).all()  # tokens
    masked = quality.mask_frame(pd.DataFrame({"email": [PLANTED_EMAIL, None]}), ["email"], key="")
    assert masked["email"].tolist()[0] == quality.PII_MARKER and masked["email"].isna().tolist()[1]
    assert PLANTED_EMAIL not in samples.to_csv()


def test_freshness_against_the_catalogs_sla(workspace: Settings) -> None:
    write_catalog(workspace)
    now = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=2)
    report = quality.freshness(workspace, now=now).set_index("table")
    # written seconds ago + 2 h: past the 1 h SLA of the quarantine, within the 30 d of events
    assert not report.loc["silver.events_quarantine", "ok"]
    assert report.loc["silver.events", "ok"]
    assert report.loc["silver.events_quarantine", "sla_seconds"] == 3600
    assert 7200 <= report.loc["silver.events", "age_seconds"] < 7200 + 600


def test_freshness_without_catalog_lists_lake_tables(workspace: Settings) -> None:
    report = quality.freshness(workspace)
    assert "audit.validation_results" in set(report["table"])
    assert report["sla_seconds"].isna().all() and report["last_commit"].notna().all()


def test_lineage_graph_from_jsonl(workspace: Settings) -> None:
    folder = workspace.reports / "lineage"
    folder.mkdir(parents=True)
    lines = [
        lineage_event("START", "silver-events", "r1", ["bronze.clickstream"], [], 0),
        lineage_event("COMPLETE", "silver-events", "r1", ["bronze.clickstream"], ["silver.events"], 1),
        lineage_event("COMPLETE", "gold-build-sessions", "r2", ["silver.events"], ["gold.sessions"], 2),
        "this line is not JSON",
    ]
    (folder / "openlineage.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    edges = quality.lineage_edges(workspace)
    assert sorted(map(tuple, edges[["job", "input", "output"]].values.tolist())) == [
        ("gold-build-sessions", "silver.events", "gold.sessions"),
        ("silver-events", "bronze.clickstream", "silver.events"),
    ]
    graph = quality.lineage_network(workspace, edges)
    assert set(graph.edges) == {
        ("bronze.clickstream", "job:silver-events"),
        ("job:silver-events", "silver.events"),
        ("silver.events", "job:gold-build-sessions"),
        ("job:gold-build-sessions", "gold.sessions"),
    }
    # laid out left to right in dependency order
    x = {node: graph.nodes[node]["pos"][0] for node in graph}
    assert x["bronze.clickstream"] < x["job:silver-events"] < x["silver.events"] < x["gold.sessions"]


def test_catalog_frame_lists_columns_with_pii_tags(workspace: Settings) -> None:
    assert quality.catalog_frame(workspace).empty
    write_catalog(workspace)
    catalog = quality.catalog_frame(workspace)
    value = catalog[(catalog["table"] == "silver.events_quarantine") & (catalog["column"] == "value")].iloc[0]
    assert (value["classification"], value["pii"], value["treatment"]) == ("pii", "email", "keep")
    assert value["owner"] == "web-analytics"
    tables = quality.catalog_tables(catalog).set_index("table")
    assert tables.loc["silver.events_quarantine", "pii_columns"] == "value"
    assert tables.loc["silver.events", "pii_columns"] == ""
    assert tables.loc["silver.events_quarantine", "columns"] == 6
    assert tables.loc["silver.events_quarantine", "freshness_sla"] == "1h"


def test_empty_workspace_gives_empty_frames(settings: Settings) -> None:
    results = quality.load_validation_results(settings)
    assert results.empty and list(results.columns) == list(quality.VALIDATION_COLUMNS)
    assert quality.validation_runs(results).empty
    assert quality.failing_rules(results, "silver.events").empty
    assert quality.quarantine_tables(settings) == []
    assert quality.quarantine_counts(settings).empty
    assert quality.quarantine_samples(settings, "silver.events_quarantine").empty
    assert quality.freshness(settings).empty
    assert quality.lineage_edges(settings).empty
    assert quality.lineage_network(settings).number_of_nodes() == 0
    assert quality.catalog_frame(settings).empty
    assert quality.catalog_tables(quality.catalog_frame(settings)).empty


def test_bad_inputs(settings: Settings) -> None:
    write_deltalake(settings.table_path("audit", "validation_results"), pd.DataFrame({"run_id": ["r"]}))
    with pytest.raises(DataError, match="lack columns"):
        quality.load_validation_results(settings)
    with pytest.raises(ConfigError, match="not '<layer>"):
        quality.quarantine_samples(settings, "events_quarantine")


def test_freshness_status_reads_plainly() -> None:
    report = pd.DataFrame(
        {
            "table": ["a.ok", "b.late", "c.missing", "d.nosla"],
            "last_commit": pd.to_datetime([T0, T0, None, T0], utc=True),
            "age_seconds": [120.0, 7200.0, float("nan"), 30.0],
            "sla_seconds": [3600.0, 3600.0, 3600.0, float("nan")],
            "ok": [True, False, False, None],
        }
    )
    optional = pd.DataFrame(
        {
            "table": ["e.rt"],
            "last_commit": pd.to_datetime([None], utc=True),
            "age_seconds": [float("nan")],
            "sla_seconds": [60.0],
            "ok": [False],
            "optional": [True],
        }
    )
    shown = quality.freshness_status(pd.concat([report.assign(optional=False), optional], ignore_index=True))
    assert shown["table"].tolist() == ["b.late", "c.missing", "a.ok", "d.nosla", "e.rt"]
    assert shown["status"].tolist() == ["LATE", "missing", "within SLA", "no SLA", "not built (optional)"]
    assert quality.freshness_status(report)["status"].tolist()[1] == "missing"  # no optional column at all
    assert shown.iloc[0][["age", "sla", "last_commit"]].tolist() == [
        "2.0 h",
        "1.0 h",
        "2024-11-01 12:00:00 UTC",
    ]
    assert quality.freshness_status(report.iloc[0:0]).empty


def test_lineage_layout_frames() -> None:
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_node("a", kind="dataset", label="a", pos=(0.0, 0.0))
    graph.add_node("job:j", kind="job", label="j", pos=(1.0, 0.0))
    graph.add_edge("a", "job:j")
    nodes, links = quality.lineage_layout(graph)
    assert nodes.values.tolist() == [[0.0, 0.0, "a", "dataset", "a"], [1.0, 0.0, "job:j", "job", "j"]]
    assert links.values.tolist() == [["a", "job:j"]]
