"""InfluxDB 1.x (Debian's 1.6), the time-series sink of the real-time rollups."""

from __future__ import annotations

import shutil
import urllib.parse
import urllib.request

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.stack.supervisor import Service
from lakehouse.stack.web import http_ok


def config_lines(settings: Settings) -> list[str]:
    """``influxdb.conf``: influxd ignores keys it does not know (tests check each against influxd config)."""
    influx = settings.influxdb
    home = settings.workspace / "influxdb"
    return [
        "reporting-enabled = false",  # Debian's influxd 1.6 key (upstream's reporting-disabled is ignored)
        f'bind-address = "127.0.0.1:{influx.rpc_port}"',
        "[meta]",
        f'  dir = "{home}/meta"',
        "[data]",
        f'  dir = "{home}/data"',
        f'  wal-dir = "{home}/wal"',
        "  query-log-enabled = false",
        "[http]",
        f'  bind-address = "127.0.0.1:{influx.port}"',
        "  log-enabled = false",
        "[monitor]",
        "  store-enabled = false",
        "",
    ]


def recipe(settings: Settings) -> Service:
    """``influxd -config <workspace>/influxdb/influxdb.conf``, then the database created."""
    influx = settings.influxdb
    home = settings.workspace / "influxdb"
    config = home / "influxdb.conf"
    base = f"http://{influx.host}:{influx.port}"

    def prepare() -> None:
        if not shutil.which("influxd"):
            raise ServiceError("InfluxDB is not installed: run `make setup` (apt-get install influxdb)")
        home.mkdir(parents=True, exist_ok=True)
        config.write_text("\n".join(config_lines(settings)))

    def after_start() -> None:
        query = urllib.parse.urlencode({"q": f'CREATE DATABASE "{influx.database}"'})
        request = urllib.request.Request(f"{base}/query?{query}", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    return Service(
        name="influxdb",
        port=influx.port,
        url=base,
        command=[shutil.which("influxd") or "/usr/bin/influxd", "-config", str(config)],
        health=lambda: http_ok(f"{base}/ping"),
        prepare=prepare,
        after_start=after_start,
        startup_timeout=60,
    )
