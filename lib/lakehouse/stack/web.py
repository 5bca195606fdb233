"""Small HTTP helpers of the service recipes."""

from __future__ import annotations

import urllib.request

from lakehouse.errors import ServiceError


def http_ok(url: str, timeout: float = 3.0) -> None:
    """Raise unless ``url`` answers with a status below 400."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        if response.status >= 400:
            raise ServiceError(f"{url} answered HTTP {response.status}")


def panel_bind_args(port: int) -> list[str]:
    """``panel serve`` arguments that bind to loopback on ``port`` and accept its browser origins."""
    return [
        "--address",
        "127.0.0.1",
        "--port",
        str(port),
        "--allow-websocket-origin",
        f"127.0.0.1:{port}",
        "--allow-websocket-origin",
        f"localhost:{port}",
    ]
