"""Small helpers around the Kafka client: fail fast and clearly when no broker answers."""

from __future__ import annotations

import socket

from lakehouse.errors import ServiceError


def reachable_servers(bootstrap_servers: str, timeout: float = 1.0) -> list[str]:
    """The ``host:port`` entries of a bootstrap list that accept a TCP connection."""
    found = []
    for entry in (part.strip() for part in bootstrap_servers.split(",") if part.strip()):
        host, _, port = entry.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
                found.append(entry)
        except (OSError, ValueError):
            continue
    return found


def require_broker(bootstrap_servers: str) -> None:
    """Raise a clear error at once instead of the client's 30-second bootstrap timeout.

    Raises:
        ServiceError: no server of the bootstrap list accepts connections.
    """
    if not reachable_servers(bootstrap_servers):
        raise ServiceError(
            f"no Kafka broker answers at {bootstrap_servers}: start the local one with `lakehouse up` "
            "or fix kafka.bootstrap_servers in the environment file"
        )
