"""Ingest throughput: Kafka → bronze events/s ÷ Kafka's own consumer performance tool, same topic, same run.

    .venv/bin/python benchmarks/ingest.py [--events 300000] [--env local]

Produces simulated events to a fresh topic, then reads the same topic twice: once with Kafka's
ConsumerPerformance (the baseline: how fast this broker can be read at all) and once with the bronze
Structured Streaming query (availableNow, into a fresh Delta table). Prints both rates and their ratio.
Target: ratio >= 0.3.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import uuid

from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from lakehouse.config import load_settings
from lakehouse.simulate import Flaws, generate_events, produce
from lakehouse.sources.kafka import ingest_available
from lakehouse.spark import get_spark
from lakehouse.stack import ServiceManager, java_executable


def consumer_perf(settings, topic: str, messages: int) -> float:
    """Messages/s that Kafka's own ConsumerPerformance tool reads from the topic (from its summary line)."""
    classpath = f"{settings.jars_dir / 'kafka-jars'}/*"
    output = (
        subprocess.run(
            [
                java_executable(),
                "-Xmx512m",
                "-cp",
                classpath,
                "org.apache.kafka.tools.ConsumerPerformance",
                "--bootstrap-server",
                settings.kafka.bootstrap_servers,
                "--topic",
                topic,
                "--messages",
                str(messages),
                "--group",
                f"perf-{uuid.uuid4().hex[:6]}",
                "--timeout",
                "60000",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    header = next(i for i, line in enumerate(output) if "nMsg.sec" in line)
    columns = [c.strip() for c in output[header].split(",")]
    values = [v.strip() for v in output[header + 1].split(",")]
    return float(values[columns.index("nMsg.sec")])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--env", default="local")
    args = parser.parse_args()
    settings = load_settings(args.env)
    ServiceManager(settings).start(["kafka", "spark"])

    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    admin.create_topics([NewTopic(name=topic, num_partitions=3, replication_factor=1)])
    admin.close()
    report = produce(
        generate_events(args.events, seed=1, flaws=Flaws.none()),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=topic,
    )
    print(f"produced {report.sent} events to {topic} at {report.events_per_second:,.0f}/s")

    baseline = consumer_perf(settings, topic, report.sent)
    spark = get_spark(settings)
    with tempfile.TemporaryDirectory() as folder:
        big = settings.model_copy(
            update={"streaming": settings.streaming.model_copy(update={"max_offsets_per_trigger": 10**9})}
        )
        started = time.perf_counter()
        ingested = ingest_available(spark, big, topic, table=f"{folder}/bronze", checkpoint=f"{folder}/ckpt")
        seconds = time.perf_counter() - started
    ours = ingested.rows / seconds
    print(f"Kafka ConsumerPerformance: {baseline:>12,.0f} msg/s")
    print(f"Kafka → bronze (Delta):    {ours:>12,.0f} events/s  ({ingested.rows} rows in {seconds:.1f}s)")
    print(f"ratio bronze / consumer-perf = {ours / baseline:.2f}  (target >= 0.3)")


if __name__ == "__main__":
    main()
