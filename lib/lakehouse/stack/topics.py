"""The topics an environment needs: those of the source registry, with the environment's overrides."""

from __future__ import annotations

from lakehouse import kafka_clients
from lakehouse.config import Settings, TopicSettings


def topic_plan(settings: Settings) -> dict[str, TopicSettings]:
    """Every topic to create: those the source registry needs, with the environment's overrides."""
    from lakehouse.sources.registry import load_registry

    plan = {
        name: TopicSettings(partitions=partitions, retention_ms=retention)
        for name, (partitions, retention) in load_registry(settings).kafka_topics().items()
    }
    plan.update(settings.kafka.topics)
    return plan


def ensure_topics(settings: Settings) -> list[str]:
    """Create the planned topics with their partitions and retention; existing ones are left alone.

    Returns:
        The names of the topics created now.
    """
    return kafka_clients.ensure_topics(settings.kafka.bootstrap_servers, topic_plan(settings))
