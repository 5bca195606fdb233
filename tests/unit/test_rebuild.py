"""Data-aware rebuild decisions and the run archive, on crafted task lists, Delta logs and records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.rebuild import (
    Check,
    ProbeContext,
    TaskRecord,
    TaskSpec,
    code_fingerprint,
    collect_inputs,
    decide,
    delta_version,
    downstream_of,
    http_check,
    path_fingerprint,
    read_record,
    record_failure,
    record_success,
    task_sources,
    topological,
)
from lakehouse.runs import (
    TableWrite,
    archive_run,
    find_runs,
    run_lineage,
    table_identity,
    table_writes,
)
from lakehouse.sources.registry import Registry, load_registry

pytestmark = pytest.mark.unit


@pytest.fixture
def lake(settings: Settings, tmp_path: Path) -> Settings:
    """Settings whose workspace is a fresh temporary folder."""
    return settings.model_copy(update={"workspace": tmp_path / "workspace"})


def _commit(table: str | Path, version: int) -> None:
    log = Path(table) / "_delta_log"
    log.mkdir(parents=True, exist_ok=True)
    (log / f"{version:020d}.json").write_text("{}\n")


def _notebook(path: Path, code: str, outputs: list[object] | None = None) -> str:
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "x: int = 1", "outputs": []},
        {"cell_type": "code", "metadata": {}, "source": code, "outputs": outputs or [], "execution_count": 3},
    ]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return str(path)


def _record(task: str, **fields: object) -> TaskRecord:
    return TaskRecord.model_validate(
        {"task": task, "status": "success", "at": datetime.now(UTC).isoformat(), "code": "c", **fields}
    )


def test_tasks_come_after_their_upstream_and_a_cycle_is_named() -> None:
    tasks = [
        TaskSpec("gold", "g", ("silver",)),
        TaskSpec("silver", "s", ("bronze",)),
        TaskSpec("bronze", "b"),
    ]
    assert [t.name for t in topological(tasks)] == ["bronze", "silver", "gold"]
    assert downstream_of(tasks, ["bronze"]) == {"silver", "gold"}
    with pytest.raises(ConfigError, match="cycle"):
        topological([TaskSpec("a", "a", ("b",)), TaskSpec("b", "b", ("a",))])
    with pytest.raises(ConfigError, match="unknown upstream"):
        topological([TaskSpec("a", "a", ("nope",))])


def test_the_code_fingerprint_follows_code_and_params_not_outputs(tmp_path: Path) -> None:
    source = _notebook(tmp_path / "nb.ipynb", "print(1)")
    task = TaskSpec("t", source, params={"gap_minutes": 30})
    first = code_fingerprint(task)
    _notebook(tmp_path / "nb.ipynb", "print(1)", outputs=[{"output_type": "stream", "text": "1"}])
    assert code_fingerprint(task) == first  # an executed or re-saved copy is the same code
    assert code_fingerprint(TaskSpec("t", source, params={"gap_minutes": 45})) != first
    declaration = tmp_path / "events.yaml"
    declaration.write_text("key: [event_id]\n")
    declared = TaskSpec("t", source, params={"declaration": "events.yaml"})
    before = code_fingerprint(declared, tmp_path)
    declaration.write_text("key: [event_id, source]\n")
    assert code_fingerprint(declared, tmp_path) != before  # a declaration a parameter names is code too
    _notebook(tmp_path / "nb.ipynb", "print(2)")
    assert code_fingerprint(task) != first
    with pytest.raises(ConfigError, match="cannot read"):
        code_fingerprint(TaskSpec("t", str(tmp_path / "missing.ipynb")))


def test_delta_versions_come_from_the_log_and_other_products_from_their_files(tmp_path: Path) -> None:
    table = tmp_path / "lake" / "bronze" / "clickstream"
    assert delta_version(table) is None and path_fingerprint(table) is None
    for version in range(3):
        _commit(table, version)
    (table / "_delta_log" / "00000000000000000002.checkpoint.parquet").write_bytes(b"")
    assert delta_version(table) == 2 and path_fingerprint(table) == {"delta": 2}
    (table / "_delta_log" / "_last_checkpoint").write_text('{"version": 7, "size": 3}')
    assert delta_version(table) == 7  # older JSON commits may have been cleaned up
    metrics = tmp_path / "metrics.json"
    metrics.write_text("{}")
    assert "file" in path_fingerprint(metrics)
    state = tmp_path / "state"
    (state / "a.json").parent.mkdir()
    (state / "a.json").write_text("1")
    before = path_fingerprint(state)
    (state / "a.json").write_text("12")
    assert path_fingerprint(state) != before


def test_the_decision_names_why_a_task_runs_or_is_skipped() -> None:
    same = {"table:bronze/clickstream": Check({"delta": 12})}
    record = _record("silver", inputs={"table:bronze/clickstream": {"delta": 12}})
    assert decide(None, code="c", inputs={}).reasons == ["never built"]
    assert decide(record, code="c", inputs={}, force=True).reasons == ["--force"]
    skipped = decide(record, code="c", inputs=same)
    assert not skipped.run and skipped.reasons == ["inputs unchanged"]
    moved = {"table:bronze/clickstream": Check({"delta": 14}, "bronze/clickstream v12 -> v14")}
    assert decide(record, code="c", inputs=moved).reasons == ["bronze/clickstream v12 -> v14"]
    assert decide(record, code="other", inputs=same).reasons == ["its code, parameters or products changed"]
    assert decide(record, code="c", inputs={**same, "source:new_api": Check(1)}).reasons == [
        "new input new_api"
    ]
    assert decide(record, code="c", inputs=same, missing_products=["table"]).reasons == [
        "product(s) missing: table"
    ]
    failed = record.model_copy(update={"status": "failed", "failed_run_id": "r1"})
    assert decide(failed, code="c", inputs=same).reasons == ["failed in an earlier build (run r1)"]


def test_records_are_written_after_a_success_and_a_failure_keeps_the_last_success(lake: Settings) -> None:
    assert read_record(lake, "bronze") is None
    record_success(lake, "bronze", run_id="r1", code="c", inputs={"source:x": Check({"data": 1})})
    failed = record_failure(lake, "bronze", run_id="r2")
    assert failed.status == "failed" and failed.failed_run_id == "r2"
    again = read_record(lake, "bronze")
    assert again is not None and again.inputs == {"source:x": {"data": 1}} and again.run_id == "r1"
    assert record_failure(lake, "never-succeeded", run_id="r3").code is None


def test_a_task_ingests_the_sources_its_parameters_name_by_kind(settings: Settings) -> None:
    registry = load_registry(settings)
    kafka = {s.name for s in task_sources(registry, {"source_kinds": "kafka,postgres_cdc,mqtt"})}
    assert kafka == {s.name for s in registry.sources.values() if s.kind in ("kafka", "postgres_cdc", "mqtt")}
    assert [s.name for s in task_sources(registry, {"source_kinds": "http", "source": "fx_rates"})] == [
        "fx_rates"
    ]
    topic = registry.kafka_ingest()
    one = next(iter(topic))
    assert [s.bronze for s in task_sources(registry, {"source_kinds": "kafka,mqtt", "topic": one})] == [
        topic[one]
    ]
    assert task_sources(registry, {"gap_minutes": 30}) == []  # a task without source_kinds reads no source
    with pytest.raises(ConfigError, match="unknown source kind"):
        task_sources(registry, {"source_kinds": "kafka,ftp"})
    with pytest.raises(ConfigError, match="ingests only"):
        registry.of_kinds("kafka", allowed=["http"])


def _http_registry(refresh: str | None) -> Registry:
    entry = {"kind": "http", "url": "http://127.0.0.1:1/x", "bronze": "rates"}
    if refresh is not None:
        entry["refresh"] = refresh
    return Registry.model_validate({"sources": {"rates": entry}})


def test_an_http_source_is_pulled_when_its_refresh_elapsed(lake: Settings) -> None:
    now = datetime(2024, 10, 1, 12, tzinfo=UTC)
    hourly = _http_registry("1h")
    ctx = ProbeContext(lake, hourly, now=now)
    source = hourly.sources["rates"]
    assert http_check(ctx, source, (now - timedelta(minutes=10)).isoformat()).reason is None
    late = http_check(ctx, source, (now - timedelta(minutes=75)).isoformat())
    assert late.reason == "rates: refresh 1h elapsed (last pull 1h15m ago)"
    assert late.value == now.isoformat()
    always = _http_registry(None)
    reason = http_check(ProbeContext(lake, always, now=now), always.sources["rates"], now.isoformat()).reason
    assert reason is not None and "every build" in reason


def test_a_refresh_that_is_no_duration_is_a_registry_error(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  rates: {kind: http, url: 'http://x', bronze: rates, refresh: hourly}\n")
    with pytest.raises(ConfigError, match=r"sources.rates.http.refresh.*not a duration"):
        load_registry(settings, path)


def test_inputs_are_the_upstream_tables_the_task_reads_and_never_its_own(lake: Settings) -> None:
    bronze_a, bronze_b = lake.table_path("bronze", "a"), lake.table_path("bronze", "b")
    silver = lake.table_path("silver", "a")
    for table in (bronze_a, bronze_b, silver):
        _commit(table, 0)
    registry = Registry.model_validate({"sources": {}})
    upstream = TaskSpec("bronze", "b.ipynb", products={"nb": "/tmp/b.ipynb", "a": bronze_a})
    # bronze's last run also wrote bronze/b (lineage), which silver's last run did not read
    records = {
        "bronze": _record("bronze", writes={"bronze.b": 0}),
        "silver": _record(
            "silver", reads=["bronze.a"], inputs={"table:bronze/a": {"delta": 0}}, writes={"silver.a": 0}
        ),
    }
    task = TaskSpec("silver", "s.ipynb", ("bronze",), products={"nb": "/tmp/s.ipynb", "table": silver})
    ctx = ProbeContext(lake, registry)
    assert set(collect_inputs(ctx, task, {"bronze": upstream}, records)) == {"table:bronze/a"}
    _commit(bronze_a, 1)
    _commit(bronze_b, 1)
    checks = collect_inputs(ctx, task, {"bronze": upstream}, records)
    assert checks["table:bronze/a"].reason == "bronze/a v0 -> v1"
    # without a record of what it read, every table upstream writes is an input
    unread = {**records, "silver": _record("silver")}
    assert set(collect_inputs(ctx, task, {"bronze": upstream}, unread)) == {
        "table:bronze/a",
        "table:bronze/b",
    }
    # a task that writes a table its upstream writes too does not count it as an input
    shared = TaskSpec("silver", "s.ipynb", ("bronze",), products={"table": bronze_a})
    assert "table:bronze/a" not in collect_inputs(ctx, shared, {"bronze": upstream}, unread)


def test_order_only_upstream_is_no_input_and_a_watched_file_is(lake: Settings) -> None:
    # A training task follows the gold table it reads (order only: new rows alone do not retrain it) and
    # watches the retrain request a later monitor writes (a feedback edge).
    gold = lake.table_path("gold", "sessions")
    _commit(gold, 0)
    request = lake.workspace / "ml" / "m" / "retrain.json"
    registry = Registry.model_validate({"sources": {}})
    upstream = TaskSpec("gold", "g.ipynb", products={"nb": "/tmp/g.ipynb", "table": gold})
    params = {"order_only_": ["gold"], "watch_": {"retrain": str(request)}}
    task = TaskSpec("train", "t.ipynb", ("gold",), params=params, products={"nb": "/tmp/t.ipynb"})
    ctx = ProbeContext(lake, registry)
    first = collect_inputs(ctx, task, {"gold": upstream}, {"gold": None, "train": None})
    assert set(first) == {"watch:ml/m/retrain.json"} and first["watch:ml/m/retrain.json"].value is None
    record = _record("train", inputs={key: check.value for key, check in first.items()})
    records = {"gold": None, "train": record}
    _commit(gold, 1)  # new rows: not an input
    assert (
        decide(record, code="c", inputs=collect_inputs(ctx, task, {"gold": upstream}, records)).run is False
    )
    request.parent.mkdir(parents=True)
    request.write_text('{"reason": "drift"}')  # the monitor asks for a retrain
    decision = decide(record, code="c", inputs=collect_inputs(ctx, task, {"gold": upstream}, records))
    assert decision.run and decision.reasons == ["ml/m/retrain.json was rewritten by a later task"]
    # the watched file is an input, not code: the fingerprint does not follow its content
    notebook = _notebook(lake.workspace / "t.ipynb", "print(1)")
    watched = TaskSpec("train", notebook, params=params)
    before = code_fingerprint(watched)
    request.write_text('{"reason": "drift again"}')
    assert code_fingerprint(watched) == before


def test_runs_are_archived_and_found_by_run_id_and_by_table_version(lake: Settings, tmp_path: Path) -> None:
    executed = Path(_notebook(tmp_path / "executed.ipynb", "print(1)"))
    started = datetime(2024, 10, 1, 12, tzinfo=UTC)
    first = archive_run(
        lake,
        run_id="11111111-aaaa-4000-8000-000000000000",
        task="silver-events",
        status="success",
        started=started,
        ended=started + timedelta(seconds=30),
        executed=executed,
        tables=[TableWrite(table="silver.events", first_version=3, version=4)],
        reasons=["bronze/clickstream v12 -> v14"],
    )
    assert first.notebook == str(
        lake.workspace / "runs" / "2024-10-01" / first.run_id / "silver-events.ipynb"
    )
    assert Path(first.notebook).read_text() == executed.read_text()
    executed.write_text("overwritten by the next run")
    second = archive_run(
        lake,
        run_id="22222222-bbbb-4000-8000-000000000000",
        task="silver-events",
        status="failed",
        started=started + timedelta(hours=1),
        ended=started + timedelta(hours=1, seconds=5),
        executed=executed,
        tables=[TableWrite(table="silver.events", first_version=5, version=5)],
        error="QualityError: rule failed",
    )
    assert Path(first.notebook).read_text() != "overwritten by the next run"  # the audit record stays
    assert [r.run_id for r in find_runs(lake, run_id="1111")] == [first.run_id]
    assert [r.run_id for r in find_runs(lake, table="silver/events", version=4)] == [first.run_id]
    assert [r.run_id for r in find_runs(lake, table="silver.events", version=5)] == [second.run_id]
    assert [r.run_id for r in find_runs(lake, table="silver/events")] == [second.run_id, first.run_id]
    assert find_runs(lake, table="silver/events", version=9) == []
    with pytest.raises(ConfigError, match="needs --table"):
        find_runs(lake, version=4)
    with pytest.raises(ConfigError, match="is not a table"):
        table_identity("events")


def test_written_versions_are_what_each_table_gained_during_the_run() -> None:
    writes = table_writes({"a.x": 3, "a.y": 5, "a.z": None}, {"a.x": 5, "a.y": 5, "a.z": 0, "a.w": None})
    assert writes == [
        TableWrite(table="a.x", first_version=4, version=5),
        TableWrite(table="a.z", first_version=0, version=0),
    ]


def test_a_runs_lineage_is_read_from_the_events_after_its_start(lake: Settings) -> None:
    events = lake.reports / "lineage" / "openlineage.jsonl"
    events.parent.mkdir(parents=True)

    def event(run: str, state: str, version: int | None) -> str:
        symlink = {"symlinks": {"identifiers": [{"name": "silver.events"}]}}
        delta = {"delta": {"version": version}} if version is not None else {}
        return json.dumps(
            {
                "eventType": state,
                "run": {"runId": run},
                "inputs": [
                    {"facets": {"symlinks": {"identifiers": [{"name": "bronze.clickstream"}]}}},
                    {"facets": {"symlinks": {"identifiers": [{"name": "source.clickstream"}]}}},
                ],
                "outputs": [{"facets": {**symlink, **delta}}],
            }
        )

    events.write_text(event("old", "COMPLETE", 1) + "\n")
    offset = events.stat().st_size
    with events.open("a") as out:
        out.write(event("new", "START", None) + "\nnot json\n" + event("new", "COMPLETE", 2) + "\n")
    lineage = run_lineage(lake, "new", offset)
    assert lineage.states == ["START", "COMPLETE"]
    assert lineage.reads == {"bronze.clickstream"} and lineage.writes == {"silver.events": 2}
    assert run_lineage(lake, "old", offset).states == []


def test_deciding_a_build_imports_neither_gx_nor_ploomber(settings: Settings) -> None:
    """A no-op build must stay under 5 s: its path (render the declared DAG, load the cached tasks) stays light.

    Importing the silver engine pulled in Great Expectations (~5 s) once; this catches any such import.
    """
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lakehouse.config import load_settings\n"
        "from lakehouse import cli, dag, declared_dag\n"
        f"settings = load_settings({settings.env_name!r})\n"
        "declared_dag.render(settings)\n"
        "assert dag.load_tasks(settings)\n"
        "heavy = sorted(m for m in ('great_expectations', 'ploomber') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    # The first run may parse pipeline.yaml with Ploomber (a build caches the task list); the next must not.
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=settings.root)
        assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""
