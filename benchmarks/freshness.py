"""Continuous-mode freshness: how long after it is sent an event becomes queryable in bronze, ÷ the trigger.

    .venv/bin/python benchmarks/freshness.py [--env local] [--events 150] [--rate 10] [--trigger "2 seconds"]

Starts the continuous bronze ingest (the query continuous mode runs, ``start_ingest(..., continuous=True)``)
on a fresh topic into a temporary Delta table, sends events at a steady rate while recording each send time,
and polls bronze with delta-rs (no Spark on the reading side) every 0.1 s: an event is fresh when a committed
table version contains it. Prints p50/p99/max latency and their ratio to the trigger interval.
Target: p99 / trigger <= 2 (an event waits at most one trigger, then one micro-batch of work).
Bounded: gives up ``--timeout`` seconds after the last send.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import threading
import time
import uuid

from deltalake import DeltaTable
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from lakehouse.config import load_settings
from lakehouse.sources.kafka import start_ingest
from lakehouse.spark import get_spark
from lakehouse.stack import ServiceManager

_UNITS = {"millisecond": 0.001, "second": 1.0, "minute": 60.0}


def interval_seconds(text: str) -> float:
    """'2 seconds' → 2.0, '500 milliseconds' → 0.5."""
    match = re.fullmatch(r"\s*([\d.]+)\s*(millisecond|second|minute)s?\s*", text)
    if not match:
        raise SystemExit(f"cannot read the trigger interval {text!r} (e.g. '2 seconds')")
    return float(match.group(1)) * _UNITS[match.group(2)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="local")
    parser.add_argument("--events", type=int, default=150)
    parser.add_argument("--rate", type=float, default=10.0, help="events per second")
    parser.add_argument("--trigger", default=None, help="default: streaming.trigger_interval")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait after the last send")
    parser.add_argument(
        "--snapshot-partitions",
        type=int,
        default=None,
        help="set spark.databricks.delta.snapshotPartitions for this session (Delta's default is 50: "
        "each micro-batch then rebuilds the table snapshot in 50 tasks)",
    )
    args = parser.parse_args()
    settings = load_settings(args.env)
    ServiceManager(settings).start(["kafka", "spark"])
    trigger = args.trigger or settings.streaming.trigger_interval
    trigger_s = interval_seconds(trigger)

    topic = f"fresh-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    admin.create_topics([NewTopic(name=topic, num_partitions=2, replication_factor=1)])
    admin.close()
    spark = get_spark(settings)
    if args.snapshot_partitions:
        spark.conf.set("spark.databricks.delta.snapshotPartitions", str(args.snapshot_partitions))
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        table = f"{folder}/bronze"
        query = start_ingest(
            spark,
            settings,
            topic,
            table=table,
            checkpoint=f"{folder}/checkpoint",
            continuous=True,
            trigger_interval=trigger,
        )
        try:
            producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks=1, linger_ms=0)
            # Warm up: the first batches of a new table pay one-off costs (Delta snapshot, planning). Measure
            # the steady state: wait until a warm-up record is in bronze.
            producer.send(topic, value=json.dumps({"event_id": "warm-up"}).encode())
            producer.flush()
            warm_until = time.monotonic() + 300
            while time.monotonic() < warm_until:
                if DeltaTable(table).count() > 0:
                    break
                time.sleep(0.5)
            else:
                raise SystemExit("the warm-up record did not reach bronze within 300 s")

            def send_all() -> None:
                for index in range(args.events):
                    event_id = f"{topic}-{index}"
                    sent[event_id] = time.time()
                    producer.send(topic, value=json.dumps({"event_id": event_id}).encode())
                    producer.flush()
                    time.sleep(1 / args.rate if args.rate > 0 else 0)

            sender = threading.Thread(target=send_all, daemon=True)
            sender.start()
            delta = DeltaTable(table)
            version = delta.version()
            deadline = None
            while len(seen) < args.events:
                if not sender.is_alive() and deadline is None:
                    deadline = time.monotonic() + args.timeout
                if deadline is not None and time.monotonic() > deadline:
                    break
                time.sleep(0.1)
                delta.update_incremental()
                if delta.version() == version:
                    continue
                version = delta.version()
                now = time.time()
                for value in delta.to_pyarrow_table(columns=["value"]).column("value").to_pylist():
                    event_id = json.loads(value)["event_id"]
                    if event_id in sent:
                        seen.setdefault(event_id, now)
            producer.close()
        finally:
            query.stop()
    latencies = [seen[k] - sent[k] for k in seen if k in sent]
    if not latencies:
        raise SystemExit("no event became visible in bronze: is the stack healthy? (lakehouse status)")
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    partitions = args.snapshot_partitions or "Delta default"
    print(f"events sent {len(sent)}, visible in bronze {len(latencies)} (trigger {trigger})")
    print(f"delta snapshot partitions: {partitions}")
    print(f"latency p50 {p50:.2f}s  p99 {p99:.2f}s  max {max(latencies):.2f}s")
    print(f"p50 / trigger = {p50 / trigger_s:.2f}   p99 / trigger = {p99 / trigger_s:.2f}  (target p99 <= 2)")
    if len(latencies) < len(sent):
        print(f"WARNING: {len(sent) - len(latencies)} events were not visible within {args.timeout:.0f}s")


if __name__ == "__main__":
    main()
