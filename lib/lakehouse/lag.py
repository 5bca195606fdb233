"""How far a streaming query's checkpoint is behind its Kafka topic (the DAG and continuous mode both ask).

A micro-batch is committed when ``commits/<id>`` exists in the checkpoint; ``offsets/<id>`` then holds, after
a version line and a metadata line, one JSON line per source with the next offset to read per partition. Lag
is the topic's end offsets minus those, summed over partitions. Partitions are ``int`` throughout.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from lakehouse import kafka_clients

log = logging.getLogger(__name__)

Offsets = dict[int, int]


def committed_offsets(checkpoint: str | Path) -> dict[str, Offsets]:
    """The offsets the newest committed batch of a (local) checkpoint reached: ``{topic: {partition: next}}``.

    Empty when nothing was committed yet. A batch that was planned (``offsets/<id>``) but not committed is
    skipped: the query runs it again.
    """
    folder = Path(checkpoint)
    try:
        committed = sorted(
            (int(p.name) for p in (folder / "commits").iterdir() if p.name.isdigit()), reverse=True
        )
    except OSError:
        return {}
    for batch in committed:
        try:
            lines = (folder / "offsets" / str(batch)).read_text().splitlines()
        except OSError:
            continue
        found: dict[str, Offsets] = {}
        for line in lines[2:]:
            try:
                source = json.loads(line)
            except ValueError:
                continue
            if not isinstance(source, dict):
                continue
            for topic, partitions in source.items():
                if isinstance(partitions, dict):
                    found.setdefault(topic, {}).update({int(p): int(o) for p, o in partitions.items()})
        if found:
            return found
    return {}


def lag_of(ends: Offsets, committed: Offsets) -> int:
    """Records between ``committed`` and ``ends``, summed over partitions (never negative)."""
    return sum(max(0, end - committed.get(partition, 0)) for partition, end in ends.items())


class LagProbe:
    """End offsets of topics, read with one long-lived metadata consumer (close it when done)."""

    def __init__(self, bootstrap_servers: str, client_id: str = "lakehouse-lag") -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self._consumer: Any = None

    def end_offsets(self, topic: str) -> Offsets:
        """The next offset of each partition of ``topic``.

        Raises:
            ServiceError: no broker answers.
        """
        from kafka import TopicPartition

        if self._consumer is None:
            self._consumer = kafka_clients.consumer(self.bootstrap_servers, self.client_id)
        partitions = self._consumer.partitions_for_topic(topic) or set()
        ends = self._consumer.end_offsets([TopicPartition(topic, p) for p in sorted(partitions)])
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    def lag(self, topic: str, checkpoint: str | Path) -> int:
        """Records in ``topic`` the checkpoint has not committed yet."""
        return lag_of(self.end_offsets(topic), committed_offsets(checkpoint).get(topic, {}))

    def try_lag(self, topic: str, checkpoint: str | Path) -> int | None:
        """:meth:`lag`, or None (with a warning) when Kafka does not answer: for status displays."""
        try:
            return self.lag(topic, checkpoint)
        except Exception as exc:  # a status line must not fail because the broker is restarting
            log.warning("could not read end offsets of %s: %s", topic, exc)
            self.close()
            return None

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
            self._consumer = None

    def __enter__(self) -> LagProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
