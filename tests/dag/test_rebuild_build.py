"""Data-aware rebuilds: a task that failed after committing reruns with its downstream on the next build;
each run's executed notebook is archived and found by its run id and by the table version it wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lakehouse.config import Settings
from lakehouse.dag import BuildFailed, BuildReport, build, plan
from lakehouse.kafka_clients import producer
from lakehouse.rebuild import delta_version
from lakehouse.simulate import simulate_to_kafka

pytestmark = pytest.mark.dag

TOPIC = "iot.telemetry"  # the demo's MQTT source (sources.yaml): bronze/iot_telemetry → silver/telemetry
# What reads bronze/iot_telemetry, directly or not (pipeline.yaml and the declared tasks).
TELEMETRY_TASKS = [
    "bronze-ingest-events",
    "silver-telemetry",
    "gold-device-offline",
    "quality-profile-tables",
    "governance-check-catalog",
]


@pytest.fixture(scope="module")
def built(stack: Settings, spark: Any) -> None:
    from lakehouse.simulate.retail import ensure_seeded

    if not (Path(stack.table_path("bronze", "clickstream")) / "_delta_log").is_dir():
        simulate_to_kafka(stack)  # run alone: the DAG tests' data; after test_pipeline.py the lake is there
        ensure_seeded(stack, stack.postgres.seed_limit or None)
    build(stack)


def _send_tombstone(stack: Settings) -> tuple[int, int]:
    """A record without a value: bronze's `value_not_null` rule (action fail) fails after the commit."""
    client = producer(stack.kafka.bootstrap_servers, "test-rebuild")
    try:
        metadata = client.send(TOPIC, key=b"device-without-payload", value=None).get(timeout=30)
    finally:
        client.close()
    return metadata.partition, metadata.offset


@pytest.fixture(scope="module")
def failed_then_rebuilt(stack: Settings, built: None) -> dict[str, Any]:
    bronze = stack.table_path("bronze", "iot_telemetry")
    before = delta_version(bronze)
    partition, offset = _send_tombstone(stack)
    with pytest.raises(BuildFailed) as failure:
        build(stack)
    committed = delta_version(bronze)
    planned = {o.task: o for o in plan(stack)}
    rebuilt = build(stack)
    return {
        "failed": failure.value.report,
        "planned": planned,
        "rebuilt": rebuilt,
        "record": (partition, offset),
        "versions": (before, committed),
    }


def _lines(report: BuildReport) -> str:
    return "\n".join(o.line() for o in report.outcomes)


def test_a_task_that_failed_after_committing_reruns_with_its_downstream(
    stack: Settings, failed_then_rebuilt: dict[str, Any]
) -> None:
    from deltalake import DeltaTable

    failed, rebuilt = failed_then_rebuilt["failed"], failed_then_rebuilt["rebuilt"]
    partition, offset = failed_then_rebuilt["record"]
    before, committed = failed_then_rebuilt["versions"]
    assert failed.failed == ["bronze-ingest-events"], _lines(failed)
    assert "value_not_null" in (failed.outcome("bronze-ingest-events").error or ""), _lines(failed)
    assert failed.outcome("silver-telemetry").action == "blocked"
    assert committed is not None and before is not None and committed > before, (
        "bronze committed, then failed"
    )

    # Between the two builds silver lags what the failed run committed, and says so (`lakehouse status`).
    planned = failed_then_rebuilt["planned"]
    assert planned["bronze-ingest-events"].action == "behind"
    assert planned["bronze-ingest-events"].reasons[0].startswith("failed in an earlier build")
    assert planned["silver-telemetry"].action == "waiting"
    assert set(rebuilt.ran) <= {t for t, o in planned.items() if o.action != "current"}

    assert sorted(rebuilt.ran) == sorted(TELEMETRY_TASKS), _lines(rebuilt)
    assert rebuilt.outcome("bronze-ingest-events").reasons[0].startswith("failed in an earlier build")
    assert f"bronze/iot_telemetry v{before} -> v{committed}" in rebuilt.outcome("silver-telemetry").reasons
    quarantine = DeltaTable(stack.table_path("silver", "telemetry_quarantine")).to_pandas()
    routed = quarantine[(quarantine["partition"] == partition) & (quarantine["offset"] == offset)]
    assert routed["reason"].tolist() == ["malformed_json"], "silver saw what the failed bronze run committed"


def test_runs_are_found_by_run_id_and_by_the_table_version_they_wrote(
    stack: Settings, failed_then_rebuilt: dict[str, Any]
) -> None:
    from lakehouse.cli import main

    failed = failed_then_rebuilt["failed"].outcome("bronze-ingest-events")
    before, _ = failed_then_rebuilt["versions"]
    runner = CliRunner()
    by_id = runner.invoke(main, ["--env", stack.env_name, "runs", "find", "--run-id", failed.run_id])
    assert by_id.exit_code == 0, by_id.output
    assert "failed" in by_id.output and "bronze-ingest-events" in by_id.output
    assert f"bronze.iot_telemetry v{before + 1}" in by_id.output  # what the failed run committed
    archived = Path(by_id.output.split("notebook: ")[1].split()[0])
    assert archived.is_file() and failed.run_id in str(archived)
    assert "value_not_null" in archived.read_text()  # the partial notebook shows the failing cell

    silver = failed_then_rebuilt["rebuilt"].outcome("silver-telemetry")
    version = delta_version(stack.table_path("silver", "telemetry_quarantine"))
    by_table = runner.invoke(
        main,
        [
            "--env",
            stack.env_name,
            "runs",
            "find",
            "--table",
            "silver/telemetry_quarantine",
            "--version",
            str(version),
        ],
    )
    assert by_table.exit_code == 0, by_table.output
    assert f"run {silver.run_id}" in by_table.output.splitlines()[0]
    # the archived copy stays when the next run overwrites Ploomber's executed notebook
    assert Path(by_table.output.split("notebook: ")[1].split()[0]).is_file()
    # the archive's run ids are the OpenLineage run ids of the notebooks' own events
    events = [
        json.loads(line)
        for line in (stack.reports / "lineage" / "openlineage.jsonl").read_text().splitlines()
        if line.strip()
    ]
    states: dict[tuple[str, str], set[str]] = {}
    for event in events:
        states.setdefault((event["job"]["name"], event["run"]["runId"]), set()).add(event["eventType"])
    assert states.get(("bronze-ingest-events", failed.run_id)) == {"START", "FAIL"}
    assert states.get(("silver-telemetry", silver.run_id)) == {"START", "COMPLETE"}
    missing = runner.invoke(main, ["--env", stack.env_name, "runs", "find", "--run-id", "no-such-run"])
    assert missing.exit_code == 1 and "no archived run matches" in missing.output
