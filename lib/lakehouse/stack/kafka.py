"""The local Kafka broker: one KRaft node (broker and controller), jars from Maven, data in the workspace."""

from __future__ import annotations

import base64
import subprocess
import uuid

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.stack.java import java_executable
from lakehouse.stack.supervisor import Service

_LOG4J2 = """\
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.noisy.name = org.apache.kafka.coordinator
logger.noisy.level = WARN
"""


def new_cluster_id() -> str:
    """A random KRaft cluster id (base64url of a UUID) that never starts with ``-``.

    One id in 64 would start with a dash, which the storage tool's ``-t`` takes for an option, and the
    broker's first start fails; Kafka's own ``random-uuid`` draws again in that case, and so do we.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(settings: Settings) -> list[str]:
    """The broker's ``server.properties`` lines (every key is a Kafka 4.x broker config: tested)."""
    k = settings.kafka
    home = settings.workspace / "kafka"
    return [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{k.controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{k.port},CONTROLLER://127.0.0.1:{k.controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{k.port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={home / 'data'}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "log.retention.check.interval.ms=300000",
        "",
    ]


def recipe(settings: Settings) -> Service:
    """The broker as a service: storage formatted once (a new cluster id), then ``kafka.Kafka``."""
    k = settings.kafka
    home = settings.workspace / "kafka"
    properties = home / "server.properties"
    jars = settings.jars_dir / "kafka-jars"
    classpath = f"{jars}/*"
    logging_config = f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}"

    def prepare() -> None:
        if not list(jars.glob("kafka_2.13-*.jar")):
            raise ServiceError(f"the Kafka broker jars are missing in {jars}: run `make jars`")
        home.mkdir(parents=True, exist_ok=True)
        (home / "log4j2.properties").write_text(_LOG4J2)
        properties.write_text("\n".join(server_properties(settings)))
        if (home / "data" / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        result = subprocess.run(
            [java_executable(), "-cp", classpath, logging_config, "kafka.tools.StorageTool", "format",
             "--standalone", "-t", cluster_id, "-c", str(properties)],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def health() -> None:
        from lakehouse.kafka_clients import admin_client

        with admin_client(k.bootstrap_servers, "lakehouse-health", request_timeout_ms=5000) as admin:
            admin.list_topics()

    return Service(
        name="kafka",
        port=k.port,
        url=k.bootstrap_servers,
        command=[
            java_executable(),
            f"-Xms{k.heap}",
            f"-Xmx{k.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            logging_config,
            "-cp",
            classpath,
            "kafka.Kafka",
            str(properties),
        ],
        health=health,
        prepare=prepare,
        startup_timeout=90,
    )
