"""Serving a Panel app for the browser tests: `panel serve <app>` on a free port against a prepared project."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from lakehouse.stack import panel_bind_args

SERVER_START_SECONDS = 90


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Terminate a server the test started; kill it when it does not stop within ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def log_tail(log: Path, lines: int = 40) -> str:
    if not log.exists():
        return "(no server log)"
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


# Tornado logs this when a browser leaves a page while the server is still pushing to its websocket
# (write_message's future fails with the stream closed; nobody awaits it, asyncio reports it). The client is gone,
# not the app broken: panel#3341, perspective#2969. Anything else that carries a traceback is an app error.
CLIENT_GONE = re.compile(
    r"Task exception was never retrieved\nfuture: <Task finished name='[^']*' "
    r"coro=<WebSocketProtocol13\.write_message\.<locals>\.wrapper\(\)[^\n]*exception=WebSocketClosedError\(\)>\n"
    r"(?:(?!\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ).*\n?)*"
)


def assert_no_traceback(page: Page, log: Path) -> None:
    """Neither the page nor the server's log (less the client-gone reports) shows a traceback."""
    expect(page.get_by_text("Traceback")).to_have_count(0)
    remaining = CLIENT_GONE.sub("", log.read_text(encoding="utf-8", errors="replace"))
    assert "Traceback" not in remaining, f"the server logged a traceback:\n{remaining[-4000:]}"


@contextmanager
def serve(root: Path, log: Path, dashboard: Path) -> Iterator[str]:
    """Run ``panel serve <dashboard>`` against ``root`` until the generator is closed; yields its URL."""
    port = free_port()
    env = {**os.environ, "LAKEHOUSE_ROOT": str(root), "LAKEHOUSE_ENV": "local", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "panel",
        "serve",
        str(dashboard),
        *panel_bind_args(port),
    ]
    url = f"http://127.0.0.1:{port}/{dashboard.stem}"
    with log.open("wb") as sink:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + SERVER_START_SECONDS
            status = None
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    with urllib.request.urlopen(url, timeout=10) as response:
                        status = response.status
                    if status == 200:
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.25)
            if status != 200:
                exit_code = server.poll()
                pytest.fail(
                    f"panel serve did not answer 200 at {url} within {SERVER_START_SECONDS}s "
                    f"(exit code {exit_code}, last status {status}); server log tail:\n{log_tail(log)}"
                )
            yield url
        finally:
            stop_process(server)
