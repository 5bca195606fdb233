"""The kill matrix on a running stack (R1, R2): events flow from a producer through Kafka and continuous mode
(bronze ingest + the declared silver table) while the Spark Connect server, the continuous-mode supervisor
and the Kafka broker are killed with SIGKILL at random moments and started again. Against the producer's
ground truth (every event the broker acknowledged), bronze and silver hold each event exactly once.

The stack is the test's own (its own workspace and ports, started here): killing the shared test stack's
Connect server would break the other tests' sessions. ``make test`` runs one round (each of the three
killed once, in a seeded random order and moment); ``make chaos`` runs ten (30 kills).

R3 on the same stack: devices publish over MQTT while Mosquitto is restarted and the bridge killed (SIGKILL)
and started again; every reading the broker acknowledged reaches Kafka, and silver holds each once. (Killed
outright, Mosquitto 2.0 forgets what it acknowledged since its last snapshot, at most a second: it has no
write-ahead log; see lakehouse.stack.mosquitto.)
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from deltalake import DeltaTable
from kafka.admin import KafkaAdminClient, NewTopic
from pyspark.sql import SparkSession

from bridge_process import bridge_process, wait_ready
from fuzz_cases import declared_in
from lakehouse import kafka_clients
from lakehouse.config import Settings, load_settings
from lakehouse.silver import engine
from lakehouse.simulate.devices import publish, simulate_fleet
from lakehouse.sources.kafka import ingest_available
from lakehouse.sources.mqtt import BridgeConfig, ensure_bridge_topics
from lakehouse.stack import ServiceManager
from lakehouse.stack import continuous as continuous_service
from lakehouse.streaming.continuous import SupervisorOptions, read_status, running_pid
from streaming_project import declared_project
from topic_records import values

pytestmark = pytest.mark.scenario  # beside the service tiers (tests/run_tiers.py): it shares nothing

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("LAKEHOUSE_CHAOS_ROUNDS", "1"))
SEED = int(os.environ.get("LAKEHOUSE_CHAOS_SEED", "2026"))
TARGETS = ("connect", "supervisor", "broker")


class Producer(threading.Thread):
    """Sends ``{"id", "n"}`` events at a steady pace until stopped; keeps what the broker acknowledged."""

    def __init__(self, settings: Settings, topic: str, rate: float = 150.0) -> None:
        super().__init__(daemon=True)
        self.settings, self.topic, self.rate = settings, topic, rate
        self.acked: set[str] = set()
        self.failed: Counter[str] = Counter()
        self.sent = 0
        self.halt = threading.Event()
        self._lock = threading.Lock()

    def _ack(self, event_id: str) -> Any:
        def done(_: Any) -> None:
            with self._lock:
                self.acked.add(event_id)

        return done

    def _error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed[type(exc).__name__] += 1

    def run(self) -> None:
        producer = kafka_clients.producer(
            self.settings.kafka.bootstrap_servers,
            "chaos-producer",
            linger_ms=5,
            request_timeout_ms=10_000,
            delivery_timeout_ms=120_000,
            reconnect_backoff_max_ms=2_000,
        )
        try:
            while not self.halt.is_set():
                event_id = f"e{self.sent}"
                value = json.dumps({"id": event_id, "n": self.sent}).encode()
                self.sent += 1
                try:  # while the broker is down, a send can time out waiting for its metadata: not acked
                    future = producer.send(self.topic, key=event_id.encode(), value=value)
                except Exception as exc:
                    self._error(exc)
                    continue
                future.add_callback(self._ack(event_id)).add_errback(self._error)
                time.sleep(1 / self.rate)
            producer.flush(timeout=180)
        finally:
            producer.close(timeout=10)


def _kill(pid: int | None, what: str) -> None:
    assert pid is not None, f"{what} is not running"
    process = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


@dataclass(frozen=True)
class OwnStack:
    settings: Settings
    manager: ServiceManager
    name: str  # the user's source and tables
    topic: str
    registry: Path  # a registry of that one source, for continuous mode


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnStack]:
    """A project streaming its own topic on a stack of its own (Kafka, Spark Connect, Mosquitto), stopped
    after; its ports are the test environment's shifted by 41."""
    tmp_path = tmp_path_factory.mktemp("own-stack")
    stack = load_settings("test", root=ROOT)
    with pytest.MonkeyPatch.context() as patch:
        offset = int(os.environ.get("LAKEHOUSE_PORT_OFFSET", "0") or 0) + 41
        patch.setenv("LAKEHOUSE_PORT_OFFSET", str(offset))
        topic, name = f"chaos-{uuid.uuid4().hex[:6]}", f"chaos_{uuid.uuid4().hex[:6]}"
        root = declared_project(stack, tmp_path, topic, name, workspace=tmp_path / "ws")
        (root / "jvm").symlink_to(ROOT / "jvm")  # the project's services run on the jars `make jars` fetched
        patch.setenv("LAKEHOUSE_ROOT", str(root))  # the CLI and the services it starts read this project
        settings = load_settings(stack.env_name, root=root)
        assert settings.kafka.bootstrap_servers != stack.kafka.bootstrap_servers
        manager = ServiceManager(settings, fresh=True)
        try:
            manager.start(["kafka", "spark", "mqtt"])
            admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
            try:
                admin.create_topics([NewTopic(name=topic, num_partitions=3, replication_factor=1)])
            finally:
                admin.close()
            yield OwnStack(settings, manager, name, topic, tmp_path / "only.yaml")
        finally:
            continuous_service.stop(settings)
            manager.stop()


def _await_recovery(settings: Settings, pid: int | None, since: float, timeout: float = 300.0) -> float:
    """Wait until supervisor ``pid`` reports every query active in a status written after ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(settings) or {}
        queries = status.get("queries", [])
        written = datetime.fromisoformat(str(status.get("updatedAt", "1970-01-01T00:00:00+00:00")))
        if (
            running_pid(settings) == pid
            and status.get("pid") == pid
            and written.timestamp() > since
            and queries
            and all(q.get("isActive") for q in queries)
        ):
            return time.monotonic()
        time.sleep(0.5)
    raise AssertionError(f"continuous mode (pid {pid}) did not recover: {read_status(settings)}")


def _ids(path: str, column: str) -> list[str]:
    return [str(v) for v in DeltaTable(path).to_pyarrow_table(columns=[column]).column(column).to_pylist()]


def test_killed_connect_server_supervisor_and_broker_lose_and_repeat_nothing(own_stack: OwnStack) -> None:
    settings, name, topic, registry = own_stack.settings, own_stack.name, own_stack.topic, own_stack.registry
    options = SupervisorOptions(
        registry=str(registry), realtime=False, influx=False, trigger_interval="1 second", max_backoff=8
    )
    continuous_service.start(settings, options, timeout=240)
    manager = own_stack.manager
    producer = Producer(settings, topic)
    producer.start()
    rng = random.Random(SEED)
    kills: list[str] = []
    recovered: dict[str, list[float]] = {target: [] for target in TARGETS}
    try:
        for _ in range(ROUNDS):
            for target in rng.sample(TARGETS, len(TARGETS)):
                time.sleep(rng.uniform(2.0, 8.0))  # events in flight, batches mid-way
                supervisor = running_pid(settings)
                killed_at = time.monotonic()
                if target == "connect":
                    _kill(manager.pid("spark"), "the Spark Connect server")
                    manager.start(["spark"])
                elif target == "broker":
                    _kill(manager.pid("kafka"), "the Kafka broker")
                    manager.start(["kafka"])
                else:
                    _kill(supervisor, "the continuous-mode supervisor")
                    continuous_service.start(settings, options, timeout=240)
                kills.append(target)
                # The same supervisor carries on after a server or broker restart: it attaches again by itself.
                expected = running_pid(settings) if target == "supervisor" else supervisor
                recovered[target].append(
                    _await_recovery(settings, expected, since=time.time() - 1) - killed_at
                )
        time.sleep(3)
    finally:
        producer.halt.set()
        producer.join(timeout=240)
    assert not producer.is_alive()
    acked = producer.acked
    assert len(acked) > 0.9 * producer.sent, (len(acked), producer.sent, producer.failed)

    bronze = settings.table_path("bronze", name)
    silver = settings.table_path("silver", name)

    def caught_up() -> bool:
        status = read_status(settings) or {}
        queries = status.get("queries", [])
        if not queries or not all(q.get("isActive") for q in queries):
            return False
        try:
            return acked <= set(_ids(silver, "id"))
        except Exception:  # not written yet
            return False

    deadline = time.monotonic() + 300
    while not caught_up():
        assert time.monotonic() < deadline, f"silver did not catch up: {read_status(settings)}"
        time.sleep(2)
    time.sleep(6)  # the batch in flight lands: nothing arriving later may repeat an id
    continuous_service.stop(settings)

    landed = DeltaTable(bronze).to_pyarrow_table(columns=["partition", "offset", "value"]).to_pylist()
    positions = Counter((r["partition"], r["offset"]) for r in landed)
    bronze_ids = Counter(json.loads(r["value"])["id"] for r in landed)
    silver_ids = Counter(_ids(silver, "id"))
    lost_bronze = acked - set(bronze_ids)
    lost_silver = acked - set(silver_ids)
    twice = {
        "bronze records": sum(1 for c in positions.values() if c > 1),
        "bronze ids": sum(1 for c in bronze_ids.values() if c > 1),
        "silver ids": sum(1 for c in silver_ids.values() if c > 1),
    }
    print(
        f"\nkill matrix on a running stack: {len(kills)} kills ({dict(Counter(kills))}), back to all queries "
        f"active after (s, median/max): "
        f"{ {t: (round(statistics.median(v), 1), round(max(v), 1)) for t, v in recovered.items() if v} }, "
        f"sent {producer.sent}, "
        f"acknowledged {len(acked)}, failed sends {dict(producer.failed)}, bronze {len(landed)}, "
        f"silver {sum(silver_ids.values())}, lost {len(lost_bronze)} / {len(lost_silver)}, twice {twice}"
    )
    assert not lost_bronze and not lost_silver, (sorted(lost_bronze)[:10], sorted(lost_silver)[:10])
    assert twice == dict.fromkeys(twice, 0)
    assert set(silver_ids) <= {f"e{n}" for n in range(producer.sent)}


def test_restarted_mosquitto_and_killed_bridge_lose_no_reading(own_stack: OwnStack, tmp_path: Path) -> None:
    settings, manager = own_stack.settings, own_stack.manager
    simulation = simulate_fleet(8, 2_500 * ROUNDS, seed=SEED)
    kinds = simulation.by_kind()
    tag = uuid.uuid4().hex[:8]
    config = BridgeConfig(
        kafka_topic=f"iot-chaos-{tag}",
        dead_letter_topic=f"iot-chaos-{tag}.dlq",
        client_id=f"chaos-bridge-{tag}",
        partitions=3,
    )
    ensure_bridge_topics(settings, config)
    bridge = wait_ready(bridge_process(config))
    published: list[Any] = []

    def devices() -> None:
        try:
            published.append(
                publish(
                    simulation.messages,
                    host=settings.mqtt.host,
                    port=settings.mqtt.port,
                    rate=150,
                    timeout=180,
                )
            )
        except BaseException as exc:  # surfaced below
            published.append(exc)

    publisher = threading.Thread(target=devices, daemon=True)
    publisher.start()
    rng = random.Random(SEED)
    restarts: Counter[str] = Counter()
    try:
        for _ in range(ROUNDS):
            for target in rng.sample(("mosquitto", "bridge"), 2):
                time.sleep(rng.uniform(2.0, 6.0))
                if target == "mosquitto":  # restarted (SIGTERM, then started): its queue is saved
                    manager.stop(["mqtt"])
                    manager.start(["mqtt"])
                else:  # no flush, no disconnect, unacknowledged messages in flight
                    _kill(bridge.pid, "the bridge")
                    bridge = wait_ready(bridge_process(config))
                restarts[target] += 1
        publisher.join(timeout=600)
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.communicate(timeout=120)
    assert published and not isinstance(published[0], BaseException), published
    drain = bridge_process(config, "--once-idle-seconds", "4")  # what the broker still queued for the bridge
    _, err = drain.communicate(timeout=300)
    assert drain.returncode == 0, err[-3000:]

    good = [m for m in simulation.messages if m.kind != "malformed"]
    records = values(settings, config.kafka_topic)
    letters = values(settings, config.dead_letter_topic)
    bridged = Counter((r["device_id"], r["seq"]) for r in records)
    lost = {(m.device_id, m.seq) for m in good} - set(bridged)
    malformed = Counter(m.payload for m in simulation.messages if m.kind == "malformed")
    dead = Counter(base64.b64decode(r["payload_base64"]) for r in letters)

    spark = SparkSession.builder.remote(settings.spark.connect_url).create()  # the own stack's server
    try:
        bronze = str(tmp_path / "bronze")
        table = declared_in(settings, "silver.telemetry", tmp_path, bronze)
        checkpoint = str(tmp_path / "checkpoints" / "bronze")
        assert ingest_available(
            spark, settings, config.kafka_topic, table=bronze, checkpoint=checkpoint
        ).rows == len(records)
        engine.build_table(spark, settings, table.name, table=table)
        totals = engine.check_table(spark, table)  # bronze = applied + quarantined + duplicates + dropped
        keys = Counter(
            (r["device_id"], r["seq"]) for r in spark.read.format("delta").load(table.path).collect()
        )
        held = spark.read.format("delta").load(table.quarantine).collect()
        reasons = Counter(r["reason"] for r in held)
        late = {(r["device_id"], r["seq"]) for r in held}
    finally:
        spark.stop()
    # Time runs ~1,000x faster here than on a device (a reading a minute, 19 a second per device): a
    # restart that holds a reading back by a second puts it beyond the 15-minute watermark. Such a reading is
    # held as late, not lost; a reading the fleet sent in time reaches silver unless a restart delayed it.
    in_time, very_late = (
        simulation.accepted_keys(),
        {(m.device_id, m.seq) for m in good if m.kind == "very_late"},
    )
    delayed = in_time - set(keys)
    print(
        f"\nmosquitto and bridge restarts: {dict(restarts)}; published {len(simulation.messages)} "
        f"({kinds}), bridged {len(records)} ({len(records) - len(bridged)} repeated keys: devices' duplicates "
        f"and re-deliveries), dead letters {len(letters)}, lost {len(lost)}; silver {sum(keys.values())}, "
        f"duplicates removed {totals['duplicates']}, quarantined {dict(reasons)} ({len(delayed)} of them sent in "
        f"time but held back by a restart), twice in silver {sum(1 for c in keys.values() if c > 1)}"
    )
    assert not lost, sorted(lost)[:10]
    assert set(dead) == set(malformed)  # every malformed payload kept, byte for byte
    assert max(keys.values()) == 1  # each reading once
    assert set(keys) | late == in_time | very_late and not set(keys) & late  # each reading in one place
    assert set(reasons) == {"late_beyond_watermark"} and very_late <= late
    assert len(delayed) <= 0.01 * len(in_time), "more readings held back than restarts explain"
