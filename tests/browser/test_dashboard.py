"""The KPI dashboard as a person meets it: served by ``panel serve``, read and filtered in headless Chromium.

Expected numbers are worked out here from the test's own frame with pandas, independently of
:mod:`lakehouse.serving` (which computes them with DuckDB). Widgets are found by the CSS classes the app gives
them (``kpi-active-users``, ``filter-country``…); Playwright's CSS selectors reach into Bokeh's shadow DOM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import panel_server
import pytest
from playwright.sync_api import Locator, Page, expect

pytestmark = pytest.mark.browser

# the conftest's Dashboard (url, project, log); conftest modules are not importable by name
Dashboard = Any


def kpi_value(page: Page, name: str) -> Locator:
    """The value line of a KPI card (the card holds a title div, then the value div)."""
    return page.locator(f".kpi-{name} div").last


def choose(page: Page, widget: str, option: str) -> None:
    """Pick ``option`` in a multi-choice filter the way a person does: open the list, click the entry."""
    page.locator(f".filter-{widget} input.choices__input--cloned").click()
    page.locator(f'.filter-{widget} .choices__item--choice[data-value="{option}"]').click()
    page.keyboard.press("Escape")


def assert_no_traceback(page: Page, dashboard: Any) -> None:
    panel_server.assert_no_traceback(page, dashboard.log)


def screenshot(page: Page, path: Path) -> Path:
    # The template scrolls inside its main area, so a tall viewport shows the whole page.
    page.set_viewport_size({"width": 1400, "height": 1700})
    # charts re-render after the KPI cards; the template's busy spinner stops when the server is done
    expect(page.locator(".loader.spin")).to_have_count(0)
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.every((doc) => doc.is_idle)")
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, "the screenshot is suspiciously small"
    return path


def test_page_shows_the_kpis_of_gold(page: Page, dashboard: Dashboard, tmp_path: Path) -> None:
    sessions = dashboard.project.sessions
    page.goto(dashboard.url)

    expect(kpi_value(page, "active-users")).to_have_text(f"{sessions['user_id'].nunique():,}")
    expect(kpi_value(page, "sessions")).to_have_text(f"{len(sessions):,}")
    expect(kpi_value(page, "conversion-rate")).to_have_text(f"{sessions['converted'].mean():.1%}")
    for currency, revenue in sessions.groupby("currency")["revenue"].sum().items():
        expect(kpi_value(page, f"revenue-{str(currency).lower()}")).to_have_text(f"{revenue:,.2f}")
    expect(page.locator(".gold-footer")).to_contain_text("version 0")
    expect(page.locator(".gold-footer")).to_contain_text(str(dashboard.project.sessions_path))
    expect(page.locator(".bk-Canvas").first).to_be_visible()
    assert_no_traceback(page, dashboard)
    screenshot(page, tmp_path / "kpis.png")


def test_filters_change_the_kpis(page: Page, dashboard: Dashboard, tmp_path: Path) -> None:
    sessions = dashboard.project.sessions
    # the country with most users, so the filtered numbers are large enough to mean something
    country = str(sessions.groupby("country")["user_id"].nunique().idxmax())
    in_country = sessions[sessions["country"] == country]
    on_ios = in_country[in_country["platform"] == "ios"]
    everyone = sessions["user_id"].nunique()
    assert everyone != in_country["user_id"].nunique() != on_ios["user_id"].nunique(), "test data too uniform"

    page.goto(dashboard.url)
    active_users = kpi_value(page, "active-users")
    expect(active_users).to_have_text(f"{everyone:,}")

    choose(page, "country", country)
    expect(active_users).to_have_text(f"{in_country['user_id'].nunique():,}")
    expect(kpi_value(page, "sessions")).to_have_text(f"{len(in_country):,}")

    choose(page, "platform", "ios")
    expect(active_users).to_have_text(f"{on_ios['user_id'].nunique():,}")
    expect(kpi_value(page, "sessions")).to_have_text(f"{len(on_ios):,}")
    assert_no_traceback(page, dashboard)
    screenshot(page, tmp_path / "kpis-filtered.png")


def test_date_slider_narrows_the_period(page: Page, dashboard: Dashboard) -> None:
    sessions = dashboard.project.sessions
    days = sorted(sessions["session_date"].unique())
    later = sessions[sessions["session_date"] >= days[2]]

    page.goto(dashboard.url)
    expect(kpi_value(page, "sessions")).to_have_text(f"{len(sessions):,}")
    # a person can move a slider handle with the keyboard: each arrow press is one day
    page.locator(".filter-period .noUi-handle-lower").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator(".filter-period .bk-slider-title")).to_contain_text(f"{days[2]:%d %b %Y} ..")
    expect(kpi_value(page, "sessions")).to_have_text(f"{len(later):,}")
    expect(kpi_value(page, "active-users")).to_have_text(f"{later['user_id'].nunique():,}")
    assert_no_traceback(page, dashboard)


def test_missing_gold_shows_what_to_do(page: Page, empty_dashboard: Dashboard, tmp_path: Path) -> None:
    page.goto(empty_dashboard.url)
    message = page.locator(".gold-unavailable")
    expect(message).to_contain_text("Gold data is not available")
    expect(message).to_contain_text("build the DAG first (make demo)")
    expect(page.locator(".kpi")).to_have_count(0)
    assert_no_traceback(page, empty_dashboard)
    screenshot(page, tmp_path / "kpis-no-gold.png")
