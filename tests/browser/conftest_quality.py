"""A small project for the quality dashboard: validation results, a quarantine with planted PII, contracts,
lineage events. Imported by ``test_quality_dashboard.py`` (pytest puts this folder on ``sys.path``).

The planted numbers live here as constants so the test states what the page must show.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import panel_server
import pyarrow as pa
from deltalake import write_deltalake

from lakehouse.config import Settings, load_settings

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "quality.py"
PLANTED_EMAIL = "planted.victim@example.org"
PLANTED_NAME = "Ottoline Fairweather-Quist"
PLANTED_IP = "198.51.100.23"
FAILING_RULE = "expect_column_values_to_not_be_null:event_id"
FAILING_UNEXPECTED = 7  # 3 + 4 over two batches of the latest run
QUARANTINE_REASON = "not_null:event_id"
QUARANTINE_ROWS = 13
OTHER_REASON = "in_set:event_type"
OTHER_ROWS = 5
LATE_TABLE = "silver.events_quarantine"  # SLA 1 s: late by the time the page loads
FRESH_TABLE = "silver.events"  # SLA 30 d
LINEAGE_JOB = "silver-clean-events"
T0 = datetime(2024, 11, 1, 12, tzinfo=UTC)

RESULTS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("batch_id", pa.int64()),
        ("table", pa.string()),
        ("suite", pa.string()),
        ("expectation", pa.string()),
        ("rule", pa.string()),
        ("column", pa.string()),
        ("action", pa.string()),
        ("success", pa.bool_()),
        ("element_count", pa.int64()),
        ("unexpected_count", pa.int64()),
        ("unexpected_percent", pa.float64()),
        ("engine", pa.string()),
        ("validated_at", pa.timestamp("us", tz="UTC")),
        ("details", pa.string()),
    ]
)

CONTRACTS = {
    "silver/events.yaml": """\
table: silver.events
owner: web-analytics
description: Clean clickstream events.
classification: internal
freshness_sla: 30d
columns:
  - {name: event_id, type: string, description: Event id}
  - {name: event_type, type: string}
""",
    "silver/events_quarantine.yaml": """\
table: silver.events_quarantine
owner: web-analytics
description: Clickstream rows set aside with the rule they broke.
classification: pii
freshness_sla: 1s
columns:
  - {name: value, type: string, classification: pii, pii: email, treatment: keep}
  - {name: reason, type: string}
  - {name: failed_rules, type: array<string>}
  - {name: batch_id, type: long}
  - {name: run_id, type: string}
  - {name: quarantined_at, type: timestamp}
  - {name: contact_name, type: string, classification: pii, pii: name, treatment: keep}
""",
}


@dataclass(frozen=True)
class QualityProject:
    root: Path
    settings: Settings


def _result(
    run: str, batch: int, rule: str, success: bool, unexpected: int, minutes: int
) -> dict[str, object]:
    expectation, _, column = rule.partition(":")
    return {
        "run_id": run,
        "batch_id": batch,
        "table": "silver.events",
        "suite": "silver.events",
        "expectation": expectation,
        "rule": rule,
        "column": column,
        "action": "quarantine",
        "success": success,
        "element_count": 100,
        "unexpected_count": unexpected,
        "unexpected_percent": float(unexpected),
        "engine": "pandas",
        "validated_at": T0 + timedelta(minutes=minutes),
        "details": "{}",
    }


def _lineage_line(kind: str, job: str, inputs: list[str], outputs: list[str], minute: int) -> str:
    def dataset(identity: str) -> dict[str, object]:
        return {
            "namespace": "file",
            "name": f"/lake/{identity.replace('.', '/')}",
            "facets": {
                "symlinks": {"identifiers": [{"namespace": "lakehouse", "name": identity, "type": "TABLE"}]}
            },
        }

    return json.dumps(
        {
            "eventType": kind,
            "eventTime": (T0 + timedelta(minutes=minute)).isoformat(),
            "run": {"runId": f"00000000-0000-0000-0000-00000000000{minute}"},
            "job": {"namespace": "lakehouse", "name": job},
            "inputs": [dataset(name) for name in inputs],
            "outputs": [dataset(name) for name in outputs],
            "producer": "tests",
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/definitions/RunEvent",
        }
    )


def write_quality_project(root: Path, with_data: bool = True) -> QualityProject:
    """A project root (pipeline.yaml marker, env.yaml with a workspace inside ``root``); with data, the
    planted validation results, quarantine, contracts and lineage events."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text("", encoding="utf-8")
    (root / "env.yaml").write_text(
        f"env_name: local\nworkspace: {root / 'ws'}\nprivacy:\n  tokenization_key: browser-test-key\n",
        encoding="utf-8",
    )
    settings = load_settings("local", root=root)
    if not with_data:
        return QualityProject(root=root, settings=settings)

    results = [
        _result("run-old", 0, FAILING_RULE, True, 0, 0),
        _result("run-old", 0, "expect_column_values_to_be_in_set:event_type", True, 0, 0),
        _result("run-new", 0, FAILING_RULE, False, 3, 60),
        _result("run-new", 1, FAILING_RULE, False, 4, 61),
        _result("run-new", 0, "expect_column_values_to_be_in_set:event_type", True, 0, 60),
    ]
    write_deltalake(
        settings.table_path("audit", "validation_results"), pa.Table.from_pylist(results, RESULTS_SCHEMA)
    )

    rows = QUARANTINE_ROWS + OTHER_ROWS
    quarantine = pd.DataFrame(
        {
            "value": [f'{{"email": "{PLANTED_EMAIL}", "ip": "{PLANTED_IP}", "n": {n}}}' for n in range(rows)],
            "reason": [QUARANTINE_REASON] * QUARANTINE_ROWS + [OTHER_REASON] * OTHER_ROWS,
            "failed_rules": [[QUARANTINE_REASON]] * QUARANTINE_ROWS + [[OTHER_REASON]] * OTHER_ROWS,
            "batch_id": [n % 2 for n in range(rows)],
            "run_id": ["run-new"] * rows,
            "quarantined_at": [T0 + timedelta(seconds=n) for n in range(rows)],
            "contact_name": [PLANTED_NAME] * rows,
            # not tagged in the catalog: still scrubbed because it looks like an e-mail / IP
            "note": [f"reported by {PLANTED_EMAIL} from {PLANTED_IP}"] * rows,
        }
    )
    write_deltalake(settings.table_path("silver", "events_quarantine"), quarantine)
    write_deltalake(
        settings.table_path("silver", "events"), pd.DataFrame({"event_id": ["e1"], "event_type": ["x"]})
    )

    for relative, text in CONTRACTS.items():
        path = root / "catalog" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    lineage = settings.reports / "lineage"
    lineage.mkdir(parents=True, exist_ok=True)
    lines = [
        _lineage_line("START", LINEAGE_JOB, ["bronze.clickstream"], [], 1),
        _lineage_line("COMPLETE", LINEAGE_JOB, ["bronze.clickstream"], ["silver.events"], 2),
        _lineage_line("COMPLETE", "gold-build-sessions", ["silver.events"], ["gold.sessions"], 3),
    ]
    (lineage / "openlineage.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return QualityProject(root=root, settings=settings)


@contextmanager
def serve(root: Path, log: Path, dashboard: Path = DASHBOARD) -> Iterator[str]:
    """Run ``panel serve <dashboard>`` (the quality app by default) against ``root``; yields its URL."""
    with panel_server.serve(root, log, dashboard) as url:
        yield url
