"""OpenLineage run events: spec-valid START/COMPLETE/FAIL, Delta and data-quality facets, transports, graph."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.lineage import (
    LineageEmitter,
    events_file,
    identity_from_path,
    lineage_digraph,
    lineage_graph,
    lineage_run,
    spark_events_file,
    track_run,
)
from lakehouse.lineage.datasets import dataset_names
from lakehouse.lineage.spec import SpecValidator, find_spec_dir
from lakehouse.spark import OPENLINEAGE_LISTENER, openlineage_conf

pytestmark = pytest.mark.unit

# The spec's JSON Schema, kept as test data (no package ships it): tests/data/openlineage-spec/README.md.
SPEC_DIR = Path(__file__).resolve().parents[1] / "data" / "openlineage-spec"


@pytest.fixture()
def lake(settings: Settings, tmp_path: Path) -> Settings:
    """The test settings with a private workspace (lake, reports) under tmp_path."""
    return settings.model_copy(update={"workspace": tmp_path / "ws"})


@pytest.fixture(scope="module")
def validator() -> SpecValidator:
    spec = find_spec_dir((SPEC_DIR,))
    assert spec is not None, f"the OpenLineage spec is missing from {SPEC_DIR}"
    return SpecValidator(spec)


def _events(settings: Settings) -> list[dict[str, Any]]:
    return [json.loads(line) for line in events_file(settings).read_text().splitlines() if line.strip()]


def _write(settings: Settings, identity: str, frame: pd.DataFrame, mode: str = "append") -> str:
    path = dataset_names(settings, identity)[2]
    write_deltalake(path, frame, mode=mode)  # type: ignore[arg-type]
    return path


def _validation_rows(run_id: str, table: str, successes: list[bool]) -> pd.DataFrame:
    n = len(successes)
    return pd.DataFrame(
        {
            "run_id": [run_id] * n,
            "batch_id": list(range(n)),
            "table": [table] * n,
            "suite": [table] * n,
            "expectation": ["expect_column_values_to_not_be_null"] * n,
            "rule": ["not_null:user_id"] * n,
            "column": ["user_id"] * n,
            "action": ["quarantine"] * n,
            "success": successes,
            "element_count": [10] * n,
            "unexpected_count": [0 if ok else 2 for ok in successes],
            "unexpected_percent": [0.0 if ok else 20.0 for ok in successes],
            "engine": ["pandas"] * n,
            "validated_at": pd.to_datetime(["2026-01-01T00:00:00"] * n, utc=True),
            "details": ["{}"] * n,
        }
    )


def test_complete_carries_delta_schema_version_rowcount_and_assertions(lake: Settings) -> None:
    _write(lake, "bronze.clickstream", pd.DataFrame({"user_id": ["a", "b", "c"], "n": [1, 2, 3]}))
    out_path = _write(lake, "silver.events", pd.DataFrame({"user_id": ["a"], "score": [0.5]}))
    _write(lake, "silver.events", pd.DataFrame({"user_id": ["b", None], "score": [1.5, 2.5]}))
    run = track_run(lake, "silver-events", ["bronze.clickstream"], ["silver.events"])
    audit = lake.table_path("audit", "validation_results")
    write_deltalake(audit, _validation_rows(run.run_id, "silver.events", [True, False]))
    write_deltalake(audit, _validation_rows(str(uuid.uuid4()), "silver.events", [True]), mode="append")
    run.complete()

    start, complete = _events(lake)
    assert [start["eventType"], complete["eventType"]] == ["START", "COMPLETE"]
    assert start["run"]["runId"] == complete["run"]["runId"] == run.run_id
    output = complete["outputs"][0]
    assert (output["namespace"], output["name"]) == ("file", out_path)
    facets = output["facets"]
    assert facets["symlinks"]["identifiers"][0]["name"] == "silver.events"
    assert facets["delta"]["version"] == DeltaTable(out_path).version() == 1
    assert facets["version"]["datasetVersion"] == "1"
    assert facets["dataQualityMetrics"]["rowCount"] == 3
    assert [(f["name"], f["type"]) for f in facets["schema"]["fields"]] == [
        ("user_id", "string"),
        ("score", "double"),
    ]
    (assertion,) = facets["dataQualityAssertions"]["assertions"]
    # Two batches of this run, one failed: the rule failed; the other run's row is not counted.
    assert assertion["success"] is False
    assert assertion["params"]["batches"] == 2
    assert assertion["column"] == "user_id"
    assert complete["inputs"][0]["facets"]["dataQualityMetrics"]["rowCount"] == 3
    assert "dataQualityAssertions" not in complete["inputs"][0]["facets"]
    assert "schema" not in start["outputs"][0]["facets"]  # START is cheap: identity only


def test_missing_tables_and_audit_give_identity_only(lake: Settings) -> None:
    with lineage_run(lake, "gold-build-sessions", ["silver.events"], ["gold.sessions"]):
        pass
    complete = _events(lake)[-1]
    assert complete["eventType"] == "COMPLETE"
    assert set(complete["outputs"][0]["facets"]) == {"symlinks"}


def test_context_manager_emits_fail_with_error_and_reraises(lake: Settings) -> None:
    with pytest.raises(ValueError, match="bad batch"):
        with lineage_run(lake, "gold-build-sessions", ["silver.events"], ["gold.sessions"]):
            raise ValueError("bad batch")
    states = [event["eventType"] for event in _events(lake)]
    assert states == ["START", "FAIL"]
    error = _events(lake)[-1]["run"]["facets"]["errorMessage"]
    assert error["message"] == "ValueError: bad batch"
    assert "raise ValueError" in error["stackTrace"]


def test_fail_is_emitted_once_and_complete_after_fail_is_ignored(lake: Settings) -> None:
    run = track_run(lake, "silver-events", [], ["silver.events"])
    assert run.fail(RuntimeError("one")) is not None
    assert run.fail(RuntimeError("two")) is None
    assert run.complete() is None
    assert [event["eventType"] for event in _events(lake)] == ["START", "FAIL"]


def test_events_validate_against_the_openlineage_schema(lake: Settings, validator: SpecValidator) -> None:
    _write(lake, "silver.events", pd.DataFrame({"user_id": ["a"], "tags": [["x", "y"]]}))
    run = track_run(lake, "gold-build-sessions", ["silver.events"], ["gold.sessions"], notebook="nb.ipynb")
    write_deltalake(
        lake.table_path("audit", "validation_results"), _validation_rows(run.run_id, "silver.events", [True])
    )
    run.complete()
    with pytest.raises(KeyError):
        with lineage_run(lake, "gold-build-daily-kpis", ["gold.sessions"], ["gold.daily_kpis"]):
            raise KeyError("missing")
    events = _events(lake)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "START", "FAIL"]
    for event in events:
        assert validator.errors(event) == [], event["eventType"]


def test_the_validator_rejects_a_broken_event(lake: Settings, validator: SpecValidator) -> None:
    _write(lake, "silver.events", pd.DataFrame({"user_id": ["a"]}))
    track_run(lake, "job", [], ["silver.events"]).complete()
    event = _events(lake)[-1]
    event["run"]["runId"] = "not-a-uuid"
    event["outputs"][0]["facets"]["schema"]["fields"][0]["name"] = 5
    del event["eventTime"]
    errors = validator.errors(event)
    assert any("runId" in error for error in errors)
    assert any("eventTime" in error for error in errors)
    assert any("schema" in error for error in errors)


def test_parent_run_facet_from_the_environment(lake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = str(uuid.uuid4())
    monkeypatch.setenv("LAKEHOUSE_PARENT_RUN_ID", parent)
    monkeypatch.setenv("LAKEHOUSE_PARENT_JOB", "lakehouse-dag")
    track_run(lake, "bronze-ingest-events", [], ["bronze.clickstream"]).complete()
    facet = _events(lake)[0]["run"]["facets"]["parent"]
    assert facet["run"]["runId"] == parent
    assert (facet["job"]["namespace"], facet["job"]["name"]) == (lake.lineage.namespace, "lakehouse-dag")


def test_events_name_the_installed_version_of_the_workbench(lake: Settings) -> None:
    # The distribution is lakehouse-workbench (the import package is lakehouse): every event used to say "0".
    from importlib.metadata import version

    track_run(lake, "bronze-ingest-events", [], ["bronze.clickstream"]).complete()
    engine = _events(lake)[0]["run"]["facets"]["processing_engine"]
    assert engine["version"] == version("lakehouse-workbench") != "0"
    assert engine["name"] == "lakehouse"


def test_a_malformed_table_identity_is_refused(lake: Settings) -> None:
    with pytest.raises(ConfigError, match="layer"):
        track_run(lake, "job", ["clickstream"], [])
    with pytest.raises(ConfigError):
        track_run(lake, "job", [], ["platinum.events"])


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, str], dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append((self.path, dict(self.headers), json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], dict[str, Any]]]]]:
    """A Marquez-compatible receiver of POST /api/v1/lineage on a free loopback port."""
    received: ClassVar[list[tuple[str, dict[str, str], dict[str, Any]]]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def _http(settings: Settings, url: str, api_key: str | None = None) -> Settings:
    lineage = settings.lineage.model_copy(update={"transport": "http", "url": url, "api_key": api_key})
    return settings.model_copy(update={"lineage": lineage})


def test_http_transport_posts_each_event(lake: Settings, receiver: Any) -> None:
    url, received = receiver
    settings = _http(lake, url, api_key="secret-key")
    run = track_run(settings, "silver-events", ["bronze.clickstream"], ["silver.events"])
    run.complete()
    assert [path for path, _, _ in received] == ["/api/v1/lineage", "/api/v1/lineage"]
    assert [body["eventType"] for _, _, body in received] == ["START", "COMPLETE"]
    assert received[0][2]["run"]["runId"] == run.run_id
    assert received[0][1].get("Authorization") == "Bearer secret-key"
    assert not events_file(settings).exists()  # delivered: nothing falls back to the file


def test_http_down_keeps_the_event_in_the_file(lake: Settings, receiver: Any) -> None:
    url, _ = receiver
    dead = url.rsplit(":", 1)[0] + ":9"  # discard port on loopback: nothing listens
    settings = _http(lake, dead)
    emitter = LineageEmitter(settings)
    run = track_run(settings, "silver-events", [], ["silver.events"])
    run.emitter = emitter
    run.complete()  # must not raise
    assert [event["eventType"] for event in _events(settings)] == ["START", "COMPLETE"]


def test_http_without_url_is_a_config_error(lake: Settings) -> None:
    with pytest.raises(ConfigError, match=r"lineage\.url"):
        LineageEmitter(_http(lake, ""))


def test_graph_joins_notebook_and_spark_events(lake: Settings) -> None:
    track_run(
        lake, "silver-events", ["bronze.clickstream"], ["silver.events", "silver.events_quarantine"]
    ).complete()
    with pytest.raises(RuntimeError):
        with lineage_run(lake, "gold-build-sessions", ["silver.events"], ["gold.sessions"]):
            raise RuntimeError("x")
    # A Spark listener event names tables by path: the graph maps them back to their identity.
    spark_file = spark_events_file(lake)
    namespace, sessions, _ = dataset_names(lake, "gold.sessions")
    spark_event = {
        "eventType": "COMPLETE",
        "eventTime": "2030-01-01T00:00:00Z",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "lakehouse", "name": "connect.execute_save_into_data_source_command"},
        "inputs": [{"namespace": namespace, "name": sessions}],
        "outputs": [{"namespace": "file", "name": "/elsewhere/table"}],
    }
    spark_file.write_text(json.dumps(spark_event) + "\nnot json\n")
    edges = lineage_graph(lake)
    rows = {(r.job, r.input, r.output, r.state) for r in edges.itertuples()}
    assert ("silver-events", "bronze.clickstream", "silver.events", "COMPLETE") in rows
    assert ("silver-events", "bronze.clickstream", "silver.events_quarantine", "COMPLETE") in rows
    assert ("gold-build-sessions", "silver.events", "gold.sessions", "FAIL") in rows
    assert (
        "connect.execute_save_into_data_source_command",
        "gold.sessions",
        "file:/elsewhere/table",
        "COMPLETE",
    ) in rows
    graph = lineage_digraph(lake, edges)
    assert graph.nodes["job:gold-build-sessions"]["kind"] == "job"
    assert graph.nodes["silver.events"]["kind"] == "dataset"
    assert graph.has_edge("silver.events", "job:gold-build-sessions")
    assert graph.has_edge("job:gold-build-sessions", "gold.sessions")


def test_empty_graph_has_the_edge_columns(lake: Settings) -> None:
    edges = lineage_graph(lake)
    assert edges.empty
    assert list(edges.columns) == ["job", "input", "output", "state", "event_time", "run_id", "source"]


def test_identity_from_path(lake: Settings) -> None:
    namespace, name, _ = dataset_names(lake, "silver.retail_orders")
    assert identity_from_path(lake, namespace, name) == "silver.retail_orders"
    assert identity_from_path(lake, namespace, name + "/part-0001.parquet") == "silver.retail_orders"
    assert identity_from_path(lake, "s3://bucket", "silver/retail_orders") is None
    assert identity_from_path(lake, namespace, "/tmp/other") is None


def test_spark_listener_conf_follows_the_switch(lake: Settings, tmp_path: Path) -> None:
    jars = [tmp_path / "delta-spark_4.2_2.13-4.4.0.jar", tmp_path / "openlineage-spark_2.13-1.53.0.jar"]
    conf = openlineage_conf(lake, jars)
    assert conf["spark.extraListeners"] == OPENLINEAGE_LISTENER
    assert conf["spark.openlineage.transport.location"] == str(spark_events_file(lake))
    assert conf["spark.openlineage.namespace"] == lake.lineage.namespace
    off = lake.model_copy(update={"lineage": lake.lineage.model_copy(update={"spark_listener": False})})
    assert openlineage_conf(off, jars) == {}
    assert openlineage_conf(lake, jars[:1]) == {}  # no listener jar: Spark starts without it


def test_assertions_of_an_input_table_go_to_its_input_facets(lake: Settings) -> None:
    _write(lake, "silver.events", pd.DataFrame({"user_id": ["a"]}))
    run = track_run(lake, "gold-build-sessions", ["silver.events"], ["gold.sessions"])
    rows = _validation_rows(run.run_id, "silver.events", [True])
    write_deltalake(lake.table_path("audit", "validation_results"), rows)
    run.complete()
    source = _events(lake)[-1]["inputs"][0]
    assert source["inputFacets"]["dataQualityAssertions"]["assertions"][0]["success"] is True
    assert "dataQualityAssertions" not in source["facets"]


def test_sources_are_named_by_their_system(lake: Settings, validator: SpecValidator) -> None:
    pg = lake.postgres
    assert dataset_names(lake, "source.clickstream") == (
        f"kafka://{lake.kafka.bootstrap_servers.split(',')[0]}",
        "clickstream",
        "",
    )
    assert dataset_names(lake, "source.retail_orders")[:2] == (
        f"postgres://{pg.host}:{pg.port}",
        f"{pg.database}.public.orders",
    )
    namespace, name, _ = dataset_names(lake, "source.fx_rates")
    assert namespace.startswith("http://127.0.0.1:") and name == "/v1/rates"
    with pytest.raises(ConfigError, match="not in the source registry"):
        dataset_names(lake, "source.no_such_source")
    with lineage_run(lake, "bronze-ingest", inputs=["source.clickstream"], outputs=["bronze.clickstream"]):
        pass
    events = _events(lake)
    assert [e["inputs"][0]["name"] for e in events] == ["clickstream", "clickstream"]
    graph = lineage_graph(lake)
    assert ("source.clickstream", "bronze.clickstream") in set(
        zip(graph["input"], graph["output"], strict=True)
    )
    for event in events:
        assert validator.errors(event) == [], event["eventType"]
