"""Both dashboards after the fuzz corpus went through the project's own silver and gold builds: the quality
page shows the corpus's quarantine (invalid UTF-8, 900 KB values, 5,000-deep nesting among it) counted by
reason and its validation results, and the KPI page shows the sessions the valid events made. One hostile
message once blanked the quality page (``Invalid unicode``); no category of the corpus may do that again.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import panel_server
import pytest
from conftest_quality import DASHBOARD as QUALITY
from deltalake import DeltaTable
from playwright.sync_api import Page, expect

from fuzz_cases import clickstream_corpus, land_in_bronze
from lakehouse.config import Settings, load_settings
from lakehouse.gold import models
from lakehouse.serving import gold
from lakehouse.silver import engine
from project_files import copy_declarations

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
KPIS = ROOT / "dashboards" / "kpis.py"


@dataclass(frozen=True)
class Fuzzed:
    root: Path
    settings: Settings
    reasons: Counter[str]
    sessions: int
    run_id: str  # silver's build, whose validation results the page lists


@pytest.fixture(scope="module")
def fuzzed(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Fuzzed:
    """A copy of the project whose bronze is the fuzz corpus, built into silver.events and gold.sessions."""
    root = tmp_path_factory.mktemp("fuzzed-project")
    copy_declarations(ROOT, root)
    for file in ("pipeline.yaml", "pipeline.declared.yaml", "sources.yaml"):
        shutil.copy(ROOT / file, root / file)
    (root / "env.yaml").write_text(
        f"env_name: local\nworkspace: {root / 'ws'}\nprivacy:\n  tokenization_key: browser-test-key\n",
        encoding="utf-8",
    )
    settings = load_settings("local", root=root)
    cases = clickstream_corpus(settings, per_category=4)
    land_in_bronze(spark, cases, settings.table_path("bronze", "clickstream"))
    run_id = engine.build_table(spark, settings, "silver.events").run_id
    models.build_model(spark, settings, "gold.sessions")
    quarantine = DeltaTable(settings.table_path("silver", "events_quarantine")).to_pyarrow_table(
        columns=["reason"]
    )
    reasons = Counter(str(r) for r in quarantine.column("reason").to_pylist())
    assert {"invalid_utf8", "malformed_json"} <= set(reasons), reasons
    sessions = len(gold.load_sessions(settings.table_path("gold", "sessions")))
    assert sessions > 0
    return Fuzzed(root, settings, reasons, sessions, run_id)


@pytest.fixture(scope="module")
def served(fuzzed: Fuzzed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, Path]]]:
    logs = tmp_path_factory.mktemp("fuzzed-servers")
    with (
        panel_server.serve(fuzzed.root, logs / "quality.log", QUALITY) as quality,
        panel_server.serve(fuzzed.root, logs / "kpis.log", KPIS) as kpis,
    ):
        yield {"quality": (quality, logs / "quality.log"), "kpis": (kpis, logs / "kpis.log")}


def test_the_quality_page_counts_the_corpus_quarantine(
    page: Page, fuzzed: Fuzzed, served: dict[str, tuple[str, Path]]
) -> None:
    url, log = served["quality"]
    page.goto(url)
    validation = page.locator(".section-validation")
    validation.locator(".validation-table select").select_option("silver.events")
    expect(validation.locator(".validation-runs")).to_contain_text(fuzzed.run_id)
    expect(validation.locator(".bk-Canvas").first).to_be_visible()
    page.locator(".quality-tabs .bk-tab", has_text="Quarantine").click()
    counts = page.locator(".section-quarantine .quarantine-counts")
    for reason in ("invalid_utf8", "malformed_json"):
        expect(counts.locator(".tabulator-row", has_text=reason)).to_contain_text(str(fuzzed.reasons[reason]))
    expect(page.locator(".section-quarantine .quarantine-samples .tabulator-row").first).to_be_visible()
    panel_server.assert_no_traceback(page, log)


def test_the_kpi_page_shows_the_sessions_of_the_valid_events(
    page: Page, fuzzed: Fuzzed, served: dict[str, tuple[str, Path]]
) -> None:
    url, log = served["kpis"]
    page.goto(url)
    expect(page.locator(".kpi-sessions div").last).to_have_text(f"{fuzzed.sessions:,}")
    panel_server.assert_no_traceback(page, log)
