"""JupyterLab as a user meets it: ``lakehouse lab`` (what ``make lab`` runs), driven in headless Chromium.

The file browser lists the notebooks, a notebook opens and runs top to bottom with its defaults against the
test run's services: events produced to Kafka just before are in bronze afterwards, and the notebook says so.
Ploomber's Jupyter server extension stays off (``jupyter/jupyter_server_config.py``): with it on, every
``/api/contents`` request answers 500 against jupyter_server 2.x, which this test would catch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable
from panel_server import free_port, log_tail, stop_process
from playwright.sync_api import Page, expect

from lakehouse.config import Settings
from lakehouse.simulate import simulate_to_kafka

pytestmark = pytest.mark.browser

TOKEN = "lakehouse-browser-test"
START_SECONDS = 90
NOTEBOOK = "bronze/ingest_events.ipynb"
RUN_SECONDS = 300


class Lab:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def page_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={TOKEN}"


@pytest.fixture(scope="module")
def lab(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """``lakehouse --env <test> lab`` on a free port, with its own Jupyter runtime, settings and workspaces."""
    home = tmp_path_factory.mktemp("jupyter")
    # JupyterLab renders only the cells in view by default; the test reads every cell's prompt and output.
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    # and it starts the notebook's kernel without asking (the "Select Kernel" dialog a person clicks through)
    tracker.write_text('{"windowingMode": "none", "autoStartDefaultKernel": true}')
    # and it must not save the run's outputs into the committed notebook (notebooks are committed clean)
    docmanager = home / "settings" / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings"
    docmanager.parent.mkdir(parents=True)
    docmanager.write_text('{"autosave": false}')
    port = free_port()
    log = home / "lab.log"
    lakehouse = str(Path(sys.executable).parent / "lakehouse")
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
    }
    command = [lakehouse, "--env", stack.env_name, "lab", "--port", str(port), "--token", TOKEN]
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=home)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        else:
            pytest.fail(f"`lakehouse lab` did not answer within {START_SECONDS}s:\n{log_tail(log)}")
        yield Lab(url, log)
    finally:
        stop_process(server, timeout=20)


def test_the_contents_api_answers_for_every_notebook(stack: Settings, lab: Lab) -> None:
    for notebook in sorted((stack.root / "notebooks").glob("*/*.ipynb")):
        path = notebook.relative_to(stack.root / "notebooks").as_posix()
        with urllib.request.urlopen(f"{lab.url}/api/contents/{path}?token={TOKEN}", timeout=30) as response:
            assert response.status == 200, path


def test_the_file_browser_lists_the_layers(page: Page, lab: Lab) -> None:
    page.goto(f"{lab.url}/lab?token={TOKEN}")
    listing = page.locator(".jp-DirListing-content .jp-DirListing-itemName")
    for folder in ("bronze", "silver", "gold", "ml", "quality"):
        expect(listing.filter(has_text=folder).first).to_be_visible()
    page.locator(".jp-DirListing-item", has_text="bronze").first.dblclick()
    expect(listing.filter(has_text="ingest_events.ipynb").first).to_be_visible()


def _kernel_state(lab: Lab, notebook: str) -> str | None:
    """The execution state of the kernel of ``notebook``'s session, from the server (None: no kernel)."""
    import json

    with urllib.request.urlopen(f"{lab.url}/api/sessions?token={TOKEN}", timeout=10) as response:
        sessions = json.loads(response.read())
    for session in sessions:
        if session.get("path") == notebook and session.get("kernel"):
            return str(session["kernel"].get("execution_state"))
    return None


def _start_kernel(page: Page, lab: Lab, notebook: str) -> None:
    # A notebook opened for the first time may still ask which kernel to start; a person clicks "Select".
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if accept.count():
            accept.first.click()
        if _kernel_state(lab, notebook) == "idle" and not accept.count():
            return
        time.sleep(0.5)
    raise AssertionError(f"the kernel of {notebook} did not start: {log_tail(lab.log)}")


def test_a_notebook_runs_top_to_bottom_against_the_running_services(
    page: Page, lab: Lab, stack: Settings
) -> None:
    table = stack.table_path("bronze", "clickstream")
    before = DeltaTable(table).version() if Path(table, "_delta_log").is_dir() else -1
    committed = (stack.root / "notebooks" / NOTEBOOK).read_bytes()
    sent = simulate_to_kafka(stack, count=40, run=17, rate=0).sent

    page.goto(lab.page_url(NOTEBOOK))
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    expect(cells.first).to_be_visible()
    _start_kernel(page, lab, NOTEBOOK)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    deadline = time.monotonic() + RUN_SECONDS
    texts: list[str] = []
    while time.monotonic() < deadline:
        texts = prompts.all_inner_texts()
        if texts and all(t.strip() not in {"[ ]:", "[*]:", ""} for t in texts):
            break
        time.sleep(1)
    outputs = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
    assert "Traceback (most recent call last)" not in outputs, outputs[-4000:]
    assert texts and all(t.strip()[1:-2].isdigit() for t in texts), f"cells not all run: {texts}"

    # The events produced just before are in bronze: the notebook ran against the test run's Kafka and Spark.
    assert DeltaTable(table).version() > before
    assert f"clickstream -> {table}: +{sent} rows this run" in outputs, outputs[-3000:]
    assert "Traceback" not in lab.log.read_text(errors="replace"), log_tail(lab.log)
    assert (stack.root / "notebooks" / NOTEBOOK).read_bytes() == committed, "the run was saved into the repo"
