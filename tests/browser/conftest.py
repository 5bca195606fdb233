"""Browser fixtures: a project root with a known gold table, the dashboard served from it, headless Chromium.

The dashboard runs as a real ``panel serve`` process on a free loopback port, pointed at a temporary project
root through ``LAKEHOUSE_ROOT``; Playwright drives Debian's Chromium (``apt-get install chromium``), since
``playwright install`` cannot download browsers on a closed network.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import panel_server
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakehouse.config import load_settings
from lakehouse.simulate.event_contract import CHANNELS, COUNTRY_CURRENCY, PLATFORMS
from sessions_schema import SESSIONS_SCHEMA

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "kpis.py"
CHROMIUM = Path(os.environ.get("LAKEHOUSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 30_000


def make_sessions(count: int = 400, users: int = 150, days: int = 7, seed: int = 3) -> pd.DataFrame:
    """A deterministic gold sessions frame shaped like the DAG's: users come back, funnels narrow."""
    rng = np.random.default_rng(seed)
    first_day = date(2024, 11, 1)
    countries = list(COUNTRY_CURRENCY)
    # each user lives in one country and mostly uses one platform, as real users do
    user_country = rng.choice(countries, size=users)
    user_platform = rng.choice(list(PLATFORMS), size=users)
    records = []
    for index in range(count):
        user = int(rng.integers(users))
        day = first_day + timedelta(days=int(rng.integers(days)))
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        start = midnight + timedelta(seconds=int(rng.integers(86_000)))
        duration = float(rng.integers(5, 1800))
        page_views = int(rng.integers(1, 8))
        product_views = int(rng.integers(0, 5)) if rng.random() < 0.7 else 0
        add_to_carts = int(rng.integers(1, 3)) if product_views and rng.random() < 0.5 else 0
        checkouts = 1 if add_to_carts and rng.random() < 0.6 else 0
        purchases = 1 if checkouts and rng.random() < 0.7 else 0
        country = str(user_country[user])
        platform = str(user_platform[user])
        records.append(
            {
                "session_id": f"s-{index:05d}",
                "user_id": f"u-{user:05d}",
                "session_start": start,
                "session_end": start + timedelta(seconds=duration),
                "session_date": day,
                "duration_s": duration,
                "events": page_views + product_views + add_to_carts + checkouts + purchases,
                "page_views": page_views,
                "product_views": product_views,
                "searches": 0,
                "add_to_carts": add_to_carts,
                "checkouts": checkouts,
                "purchases": purchases,
                "revenue": round(float(rng.uniform(5, 300)), 2) if purchases else 0.0,
                "currency": COUNTRY_CURRENCY[country] if purchases else None,
                "platform": platform,
                "device_type": "desktop" if platform == "web" else "phone",
                "os": {"web": "Windows", "ios": "iOS", "android": "Android"}[platform],
                "app_version": None if platform == "web" else "5.2.0",
                "country": country,
                "channel": str(rng.choice(list(CHANNELS))),
                "converted": purchases > 0,
            }
        )
    return pd.DataFrame.from_records(records)


@dataclass(frozen=True)
class GoldProject:
    root: Path
    sessions_path: Path
    sessions: pd.DataFrame


@dataclass(frozen=True)
class Dashboard:
    url: str
    project: GoldProject
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return panel_server.log_tail(self.log, lines)


def write_project_root(root: Path) -> Path:
    """An empty project: the pipeline.yaml marker and an env.yaml whose workspace is inside ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text("", encoding="utf-8")
    (root / "env.yaml").write_text(f"env_name: local\nworkspace: {root / 'ws'}\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def gold_project(tmp_path_factory: pytest.TempPathFactory) -> GoldProject:
    root = write_project_root(tmp_path_factory.mktemp("project"))
    path = Path(load_settings("local", root=root).table_path("gold", "sessions"))
    sessions = make_sessions()
    write_deltalake(str(path), pa.Table.from_pandas(sessions, schema=SESSIONS_SCHEMA, preserve_index=False))
    return GoldProject(root=root, sessions_path=path, sessions=sessions)


@contextmanager
def serve(root: Path, log: Path) -> Iterator[str]:
    """Run ``panel serve dashboards/kpis.py`` against ``root`` until the generator is closed."""
    with panel_server.serve(root, log, DASHBOARD) as url:
        yield url


@pytest.fixture(scope="module")
def dashboard(gold_project: GoldProject, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    log = tmp_path_factory.mktemp("server") / "panel.log"
    with serve(gold_project.root, log) as url:
        yield Dashboard(url=url, project=gold_project, log=log)


@pytest.fixture(scope="module")
def empty_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """The dashboard over a project whose DAG never ran: no gold at all."""
    root = write_project_root(tmp_path_factory.mktemp("empty-project"))
    log = tmp_path_factory.mktemp("empty-server") / "panel.log"
    missing = Path(load_settings("local", root=root).table_path("gold", "sessions"))
    project = GoldProject(root=root, sessions_path=missing, sessions=pd.DataFrame())
    with serve(root, log) as url:
        yield Dashboard(url=url, project=project, log=log)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    """A fresh Chromium page in the shared context, closed after the test."""
    page = browser_context.new_page()
    try:
        yield page
    finally:
        page.close()
