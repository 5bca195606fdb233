"""A small project for the quality dashboard: validation results, a quarantine with planted PII, contracts,
lineage events. Imported by ``test_quality_dashboard.py`` (pytest puts this folder on ``sys.path``).

The planted numbers live here as constants so the test states what the page must show.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import panel_server
from deltalake import write_deltalake

from lakehouse.config import Settings, load_settings
from quality_builders import T0, lineage_event, result, write_results

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
LINEAGE_JOB = "silver-events"
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

    in_set = "expect_column_values_to_be_in_set:event_type"
    events = "silver.events"
    results = [
        result("run-old", 0, events, FAILING_RULE, True, 0, 0),
        result("run-old", 0, events, in_set, True, 0, 0),
        result("run-new", 0, events, FAILING_RULE, False, 3, 60),
        result("run-new", 1, events, FAILING_RULE, False, 4, 61),
        result("run-new", 0, events, in_set, True, 0, 60),
    ]
    write_results(settings, results)

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
    run = "00000000-0000-0000-0000-00000000000{}".format
    lines = [
        lineage_event("START", LINEAGE_JOB, run(1), ["bronze.clickstream"], [], 1),
        lineage_event("COMPLETE", LINEAGE_JOB, run(2), ["bronze.clickstream"], ["silver.events"], 2),
        lineage_event("COMPLETE", "gold-build-sessions", run(3), ["silver.events"], ["gold.sessions"], 3),
    ]
    (lineage / "openlineage.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return QualityProject(root=root, settings=settings)


@contextmanager
def serve(root: Path, log: Path, dashboard: Path = DASHBOARD) -> Iterator[str]:
    """Run ``panel serve <dashboard>`` (the quality app by default) against ``root``; yields its URL."""
    with panel_server.serve(root, log, dashboard) as url:
        yield url
