"""The local FX rates API (the real ECB reference rates), standing in for a third-party API."""

from __future__ import annotations

from lakehouse.config import Settings
from lakehouse.stack.java import lakehouse_command
from lakehouse.stack.supervisor import Service
from lakehouse.stack.web import http_ok


def recipe(settings: Settings) -> Service:
    """``lakehouse api fx-server --port P`` (the same command a user runs in a terminal)."""
    port = settings.fx_api.port
    return Service(
        name="fx_api",
        port=port,
        url=f"http://127.0.0.1:{port}/v1/rates",
        command=lakehouse_command(settings.env_name, "-v", "api", "fx-server", "--port", str(port)),
        health=lambda: http_ok(f"http://127.0.0.1:{port}/health"),
        startup_timeout=30,
    )
