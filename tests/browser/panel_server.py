"""Serving a Panel app for the browser tests: `panel serve <app>` on a free port against a prepared project."""

from __future__ import annotations

import os
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
