"""Sending OpenLineage events with the official client: file (JSON Lines), HTTP (Marquez), console or none.

An HTTP POST that fails never fails the data task: the emitter logs a warning and appends the event to the
file transport's JSON Lines file, so nothing is lost and it can be replayed later.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from openlineage.client import OpenLineageClient
from openlineage.client.client import Event
from openlineage.client.serde import Serde
from openlineage.client.transport.console import ConsoleConfig, ConsoleTransport
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.transport.noop import NoopConfig, NoopTransport
from openlineage.client.transport.transport import Transport

from lakehouse.config import Settings
from lakehouse.errors import ConfigError

log = logging.getLogger(__name__)

EVENTS_FILE = "openlineage.jsonl"
SPARK_EVENTS_FILE = "spark.jsonl"
# One quick retry: a lineage server that is down must not hold a data task for long.
_HTTP_RETRY = {
    "total": 1,
    "connect": 1,
    "read": 1,
    "backoff_factor": 0.2,
    "status_forcelist": [502, 503, 504],
}


def lineage_dir(settings: Settings) -> Path:
    """Where the file transport writes: ``<reports>/lineage``."""
    return settings.reports / "lineage"


def events_file(settings: Settings) -> Path:
    """The JSON Lines file of the notebooks' and CLI's events."""
    return lineage_dir(settings) / EVENTS_FILE


def spark_events_file(settings: Settings) -> Path:
    """The JSON Lines file the OpenLineage Spark listener writes."""
    return lineage_dir(settings) / SPARK_EVENTS_FILE


def _file_transport(settings: Settings) -> FileTransport:
    path = events_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileTransport(FileConfig(log_file_path=str(path), append=True))


def build_transport(settings: Settings) -> Transport:
    """The transport ``settings.lineage.transport`` selects.

    Raises:
        ConfigError: HTTP chosen without a URL.
    """
    config = settings.lineage
    if config.transport == "file":
        return _file_transport(settings)
    if config.transport == "console":
        return ConsoleTransport(ConsoleConfig())
    if config.transport == "none":
        return NoopTransport(NoopConfig())
    if not config.url:
        raise ConfigError("lineage.transport is http but lineage.url is empty: set it (e.g. a Marquez URL)")
    params: dict[str, Any] = {
        "url": config.url,
        "endpoint": config.endpoint,
        "timeout": 5.0,
        "retry": _HTTP_RETRY,
    }
    if config.api_key:
        params["auth"] = {"type": "api_key", "apiKey": config.api_key}
    return HttpTransport(HttpConfig.from_dict(params))


class LineageEmitter:
    """Emits events through the configured transport; HTTP failures fall back to the JSON Lines file."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.transport = build_transport(settings)
        self.client = OpenLineageClient(transport=self.transport)

    def emit(self, event: Event) -> bool:
        """Send ``event``. Returns True when the configured transport took it, False when it fell back.

        Never raises for a transport failure: lineage must not fail the data task.
        """
        try:
            self.client.emit(event)
            return True
        except Exception as exc:  # any transport error: requests, OSError, RuntimeError from the client
            fallback = events_file(self.settings)
            log.warning(
                "OpenLineage %s transport failed (%s): the event is kept in %s",
                self.transport.kind,
                exc,
                fallback,
            )
            if self.transport.kind == "file":
                return False
            try:
                _file_transport(self.settings).emit(event)
            except Exception as file_exc:
                log.warning("could not keep the OpenLineage event in %s either: %s", fallback, file_exc)
            return False


def to_json(event: Event) -> str:
    """The event as the transports serialize it."""
    return str(Serde.to_json(event))
