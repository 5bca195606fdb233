"""Kafka clients from one place: the admin client, consumers, producers and topic creation.

Every client fails fast with a clear :class:`~lakehouse.errors.ServiceError` when no broker answers
(instead of the client's 30-second bootstrap timeout), and every producer is idempotent with ``acks=all``:
retries never duplicate or reorder the records of a partition. Topics are created here and nowhere else,
with explicit partitions and retention, because the project's broker does not auto-create them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lakehouse.errors import ServiceError

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    from lakehouse.config import TopicSettings

# Producer timeouts: a broker that stops answering is an error within seconds, not a hang.
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "request_timeout_ms": 15_000,
    "max_block_ms": 15_000,
    "delivery_timeout_ms": 60_000,
}


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


def _unreachable(bootstrap_servers: str, exc: BaseException) -> ServiceError:
    return ServiceError(f"cannot reach Kafka at {bootstrap_servers} ({exc}): start it with `lakehouse up`")


@contextmanager
def admin_client(
    bootstrap_servers: str, client_id: str, request_timeout_ms: int = 10_000
) -> Iterator[KafkaAdminClient]:
    """An admin client, closed when the ``with`` block ends.

    Raises:
        ServiceError: no broker answers.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    require_broker(bootstrap_servers)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers, client_id=client_id, request_timeout_ms=request_timeout_ms
        )
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap_servers, exc) from exc
    try:
        yield admin
    finally:
        admin.close()


def consumer(bootstrap_servers: str, client_id: str, *topics: str, **options: Any) -> KafkaConsumer:
    """A consumer (manual commits unless ``enable_auto_commit`` says otherwise).

    Raises:
        ServiceError: no broker answers.
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    require_broker(bootstrap_servers)
    settings: dict[str, Any] = {"enable_auto_commit": False, "request_timeout_ms": 10_000, **options}
    try:
        return KafkaConsumer(*topics, bootstrap_servers=bootstrap_servers, client_id=client_id, **settings)
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap_servers, exc) from exc


def producer(bootstrap_servers: str, client_id: str, **options: Any) -> KafkaProducer:
    """An idempotent producer (``acks=all``); ``options`` override the defaults (e.g. ``linger_ms``).

    Raises:
        ServiceError: no broker answers.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    require_broker(bootstrap_servers)
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap_servers, client_id=client_id, **{**_PRODUCER_DEFAULTS, **options}
        )
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap_servers, exc) from exc


def ensure_topics(
    bootstrap_servers: str, topics: Mapping[str, TopicSettings], client_id: str = "lakehouse-admin"
) -> list[str]:
    """Create the topics that do not exist yet, with their partitions and retention.

    Topics that exist are left alone (their partitions are never changed here).

    Returns:
        The names of the topics created now.

    Raises:
        ServiceError: no broker answers, or the broker refused a topic.
    """
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    with admin_client(bootstrap_servers, client_id) as admin:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                name=name,
                num_partitions=topic.partitions,
                replication_factor=1,
                topic_configs={"retention.ms": str(topic.retention_ms)},
            )
            for name, topic in topics.items()
            if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another process: what we wanted
            except KafkaError as exc:
                raise ServiceError(f"creating topics {[t.name for t in missing]} failed: {exc}") from exc
        return [topic.name for topic in missing]


def partition_count(bootstrap_servers: str, topic: str) -> int:
    """How many partitions ``topic`` has.

    Raises:
        ServiceError: no broker answers or the topic does not exist.
    """
    with admin_client(bootstrap_servers, "lakehouse-admin") as admin:
        if topic not in set(admin.list_topics()):
            raise ServiceError(f"topic {topic!r} does not exist: create it (`lakehouse up`) or name another")
        (described,) = admin.describe_topics([topic])
        return max(1, len(described["partitions"]))
