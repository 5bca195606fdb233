"""Local services the project starts: a KRaft Kafka broker, a Spark Connect server, MLflow, the dashboard.

Each service is a detached process with a pid file and a log under the workspace, so ``lakehouse up`` is safe
to run twice, ``status`` works from any shell and ``down`` stops exactly what ``up`` started. Everything
listens on loopback only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from lakehouse.broker import require_broker
from lakehouse.config import Settings, TopicSettings
from lakehouse.errors import ServiceError
from lakehouse.spark import connect_endpoint, spark_conf

log = logging.getLogger(__name__)

SERVICE_ORDER = ("kafka", "spark", "postgres", "mqtt", "influxdb", "fx_api", "mlflow", "dashboard")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
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


@dataclass(frozen=True)
class Service:
    """How to run, probe and find one local service."""

    name: str
    port: int
    command: list[str]
    url: str
    health: Callable[[], None]
    prepare: Callable[[], None] = field(default=lambda: None)
    after_start: Callable[[], None] = field(default=lambda: None)
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 90.0
    cwd: Path | None = None


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # running | stopped | unhealthy | external
    pid: int | None
    port: int
    url: str
    rss_bytes: int
    detail: str = ""


def _bin(name: str) -> str:
    """A console script of the active virtual environment (where the project is installed)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name} is not installed in this environment: run `make setup`")
    return found


def java_executable() -> str:
    """The ``java`` binary (``$JAVA_HOME/bin/java`` first).

    Raises:
        ServiceError: no Java 17+ is installed.
    """
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ServiceError(
            "Java is not installed: Kafka and Spark need Java 17 (`apt-get install openjdk-17-jdk`)"
        )
    return java


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str:
    """Who listens on ``port`` (pid and name when the OS tells us)."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({proc.name()}: {' '.join(proc.cmdline()[:3])})"
    except (psutil.Error, OSError):
        pass
    return "another process"


def panel_bind_args(port: int) -> list[str]:
    """``panel serve`` arguments that bind to loopback on ``port`` and accept its browser origins."""
    return [
        "--address",
        "127.0.0.1",
        "--port",
        str(port),
        "--allow-websocket-origin",
        f"127.0.0.1:{port}",
        "--allow-websocket-origin",
        f"localhost:{port}",
    ]


def _http_ok(url: str, timeout: float = 3.0) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        if response.status >= 400:
            raise ServiceError(f"{url} answered HTTP {response.status}")


class ServiceManager:
    """Start, stop and report the local services of one environment."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = settings.run_dir
        self.logs = settings.logs

    # -- definitions ----------------------------------------------------------------------------------
    def services(self) -> dict[str, Service]:
        s = self.settings
        found: dict[str, Service] = {}
        if s.kafka.managed:
            found["kafka"] = self._kafka()
        if s.spark.managed:
            found["spark"] = self._spark()
        if s.postgres.managed:
            found["postgres"] = self._postgres()
        if s.mqtt.managed:
            found["mqtt"] = self._mosquitto()
        if s.influxdb.managed:
            found["influxdb"] = self._influxdb()
        if s.fx_api.managed:
            fx_port = s.fx_api.port
            found["fx_api"] = Service(
                name="fx_api",
                port=fx_port,
                url=f"http://127.0.0.1:{fx_port}/v1/rates",
                command=[sys.executable, "-m", "lakehouse.sources.fx_server", "--port", str(fx_port)],
                health=lambda: _http_ok(f"http://127.0.0.1:{fx_port}/health"),
                startup_timeout=30,
            )
        found["mlflow"] = Service(
            name="mlflow",
            port=s.mlflow.port,
            url=f"http://127.0.0.1:{s.mlflow.port}",
            command=[
                _bin("mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(s.mlflow.port),
                "--workers",
                "1",
                "--backend-store-uri",
                s.mlflow_tracking_uri,
                "--default-artifact-root",
                str(s.mlflow_artifacts),
            ],
            health=lambda: _http_ok(f"http://127.0.0.1:{s.mlflow.port}/health"),
            # The UI needs no job runner; MLflow's spawns seven worker processes (~2 GiB) by default.
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            prepare=lambda: s.mlflow_artifacts.mkdir(parents=True, exist_ok=True),
            startup_timeout=60,
        )
        port = s.dashboard.port

        def make_report_dirs() -> None:
            for folder in ("profiles", "data_docs"):
                (s.reports / folder).mkdir(parents=True, exist_ok=True)

        found["dashboard"] = Service(
            name="dashboard",
            port=port,
            url=f"http://127.0.0.1:{port}/kpis",
            command=[
                _bin("panel"),
                "serve",
                str(s.root / "dashboards" / "kpis.py"),
                str(s.root / "dashboards" / "quality.py"),
                # The DAG's document products, browsable next to the apps.
                "--static-dirs",
                f"profiles={s.reports / 'profiles'}",
                f"data-docs={s.reports / 'data_docs'}",
                *panel_bind_args(port),
                "--num-procs",
                "1",
                "--liveness",
            ],
            # The liveness endpoint answers without rendering a page (a first render reads gold).
            health=lambda: _http_ok(f"http://127.0.0.1:{port}/liveness"),
            env={"LAKEHOUSE_ENV": s.env_name, "LAKEHOUSE_ROOT": str(s.root)},
            prepare=make_report_dirs,
            startup_timeout=60,
            cwd=s.root,
        )
        return found

    def _kafka(self) -> Service:
        k = self.settings.kafka
        home = self.settings.workspace / "kafka"
        properties = home / "server.properties"
        jars = self.settings.jars_dir / "kafka-jars"
        classpath = f"{jars}/*"

        def prepare() -> None:
            if not list(jars.glob("kafka_2.13-*.jar")):
                raise ServiceError(f"the Kafka broker jars are missing in {jars}: run `make jars`")
            home.mkdir(parents=True, exist_ok=True)
            (home / "log4j2.properties").write_text(_LOG4J2)
            properties.write_text(
                "\n".join(
                    [
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
                )
            )
            if not (home / "data" / "meta.properties").exists():
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
                result = subprocess.run(
                    [
                        java_executable(),
                        "-cp",
                        classpath,
                        f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
                        "kafka.tools.StorageTool",
                        "format",
                        "--standalone",
                        "-t",
                        cluster_id,
                        "-c",
                        str(properties),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if result.returncode != 0:
                    raise ServiceError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

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
                f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(properties),
            ],
            health=self._kafka_health,
            prepare=prepare,
            startup_timeout=90,
        )

    def external_dirs(self) -> list[Path]:
        """Service data kept outside the workspace (PostgreSQL's, when running as root)."""
        return [self._pg_home()] if os.geteuid() == 0 else []

    def _pg_home(self) -> Path:
        # PostgreSQL refuses to run as root: as root its files go where the postgres user can reach them
        # (a clone may sit under a folder only root can enter), keyed by the workspace they belong to.
        if os.geteuid() != 0:
            return self.settings.workspace / "postgres"
        digest = hashlib.sha1(str(self.settings.workspace).encode()).hexdigest()[:12]
        return Path("/var/lib/lakehouse") / digest / "postgres"

    def _postgres(self) -> Service:
        pg = self.settings.postgres
        home = self._pg_home()
        data, sockets = home / "data", home / "run"
        as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        prefix = as_postgres if os.geteuid() == 0 else []

        def prepare() -> None:
            if not (PG_BIN / "postgres").exists():
                raise ServiceError(
                    "PostgreSQL 15 is not installed: run `make setup` (apt-get install postgresql-15)"
                )
            sockets.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(home.parent, "postgres", "postgres")
                for folder in (home, sockets):
                    shutil.chown(folder, "postgres", "postgres")
            if (data / "PG_VERSION").exists():
                return
            password_file = home / "initdb.pw"
            password_file.write_text(pg.password)
            if os.geteuid() == 0:
                shutil.chown(password_file, "postgres", "postgres")
            result = subprocess.run(
                [
                    *prefix,
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    pg.user,
                    "--pwfile",
                    str(password_file),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            password_file.unlink(missing_ok=True)
            if result.returncode != 0:
                raise ServiceError(f"initdb failed:\n{result.stdout}{result.stderr}")

        def health() -> None:
            import psycopg

            with psycopg.connect(
                host=pg.host,
                port=pg.port,
                dbname="postgres",
                user=pg.user,
                password=pg.password,
                connect_timeout=3,
            ) as conn:
                conn.execute("SELECT 1")

        def after_start() -> None:
            import psycopg

            with psycopg.connect(
                host=pg.host,
                port=pg.port,
                dbname="postgres",
                user=pg.user,
                password=pg.password,
                autocommit=True,
            ) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (pg.database,)
                ).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{pg.database}"')

        return Service(
            name="postgres",
            port=pg.port,
            url=f"postgresql://{pg.user}@{pg.host}:{pg.port}/{pg.database}",
            command=[
                *prefix,
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(pg.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={sockets}",
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=8",
                "-c",
                "max_wal_senders=8",
                "-c",
                "output_plugin_libraries=wal2json",
                "-c",
                "shared_buffers=128MB",
                "-c",
                "fsync=on",
            ],
            health=health,
            prepare=prepare,
            after_start=after_start,
            startup_timeout=60,
        )

    def _mosquitto(self) -> Service:
        mqtt = self.settings.mqtt
        home = self.settings.workspace / "mosquitto"
        config = home / "mosquitto.conf"

        def prepare() -> None:
            if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
                raise ServiceError("Mosquitto is not installed: run `make setup` (apt-get install mosquitto)")
            home.mkdir(parents=True, exist_ok=True)
            lines = [
                f"listener {mqtt.port} 127.0.0.1",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {home}/",
                "autosave_interval 10",
                "max_queued_messages 100000",
                "log_dest stdout",
                "log_type error",
                "log_type warning",
                "log_type notice",
            ]
            if os.geteuid() == 0:
                lines.append("user root")
            config.write_text("\n".join(lines) + "\n")

        return Service(
            name="mqtt",
            port=mqtt.port,
            url=f"mqtt://{mqtt.host}:{mqtt.port}",
            command=[shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)],
            health=lambda: None,  # an open port is the broker answering
            prepare=prepare,
            startup_timeout=30,
        )

    def _influxdb(self) -> Service:
        influx = self.settings.influxdb
        home = self.settings.workspace / "influxdb"
        config = home / "influxdb.conf"
        base = f"http://{influx.host}:{influx.port}"

        def prepare() -> None:
            if not shutil.which("influxd"):
                raise ServiceError("InfluxDB is not installed: run `make setup` (apt-get install influxdb)")
            home.mkdir(parents=True, exist_ok=True)
            config.write_text(
                "\n".join(
                    [
                        "reporting-disabled = true",
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
                )
            )

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
            health=lambda: _http_ok(f"{base}/ping"),
            prepare=prepare,
            after_start=after_start,
            startup_timeout=60,
        )

    def _kafka_health(self) -> None:
        from kafka import KafkaAdminClient

        require_broker(self.settings.kafka.bootstrap_servers)
        admin = KafkaAdminClient(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            request_timeout_ms=5000,
            client_id="lakehouse-health",
        )
        try:
            admin.list_topics()
        finally:
            admin.close()

    def _spark(self) -> Service:
        s = self.settings
        host, port = connect_endpoint(s.spark.connect_url or f"sc://127.0.0.1:{s.spark.connect_port}")
        conf = spark_conf(s)
        conf.update(
            {
                "spark.connect.grpc.binding.address": "127.0.0.1",
                "spark.connect.grpc.binding.port": str(port),
                "spark.ui.port": str(port + 2038),  # 15002 -> 17040: clear of other local Spark UIs
            }
        )
        command = [
            _bin("spark-submit"),
            "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--name",
            f"lakehouse-connect-{s.env_name}",
            "--master",
            s.spark.master,
            "--driver-memory",
            s.spark.driver_memory,
        ]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        command.append("spark-internal")

        def health() -> None:
            from pyspark.sql import SparkSession

            session = SparkSession.builder.remote(f"sc://{host}:{port}").create()
            try:
                if session.range(1).count() != 1:
                    raise ServiceError("Spark Connect answered a wrong count")
            finally:
                session.stop()

        return Service(
            name="spark",
            port=port,
            url=f"sc://{host}:{port}",
            command=command,
            health=health,
            prepare=lambda: (s.workspace / "warehouse").mkdir(parents=True, exist_ok=True),
            env={
                "PYSPARK_PYTHON": sys.executable,
                "SPARK_LOCAL_IP": "127.0.0.1",
                "LAKEHOUSE_ENV": s.env_name,
                "LAKEHOUSE_ROOT": str(s.root),
            },
            startup_timeout=180,
            cwd=s.workspace,
        )

    # -- process bookkeeping ----------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The pid of a service this manager started and that is still alive."""
        path = self._pid_file(name)
        if not path.is_file():
            return None
        try:
            pid = int(path.read_text().strip())
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (ValueError, psutil.Error):
            return None
        return pid

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log_file(name)
        if not path.is_file():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, names: Iterable[str] | None = None) -> list[ServiceStatus]:
        """Start the named services (default: all), skipping those already running and healthy.

        Raises:
            ServiceError: Java missing, a port taken by a foreign process, or a service that did not become
                healthy in time (with its log tail).
        """
        available = self.services()
        wanted = [n for n in SERVICE_ORDER if n in available and (names is None or n in set(names))]
        unknown = set(names or ()) - set(available)
        if unknown:
            raise ServiceError(
                f"unknown or unmanaged service(s) {sorted(unknown)}: choose from {sorted(available)}"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        for name in wanted:
            self.start_service(available[name])
        return self.status(wanted)

    def start_service(self, service: Service) -> None:
        """Start one service and wait until it is healthy (see :meth:`start`)."""
        if self.pid(service.name) is not None:
            try:
                service.health()
                log.info("%s already running", service.name)
                return
            except Exception:
                log.warning("%s is running but unhealthy: restarting it", service.name)
                self._stop_one(service.name)
        if port_open(service.port):
            raise ServiceError(
                f"port {service.port} for {service.name} is already taken by {port_owner(service.port)}: "
                f"stop it or choose another port in env.{self.settings.env_name}.yaml"
            )
        service.prepare()
        env = {**os.environ, **service.env}
        with self.log_file(service.name).open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service.name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                service.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=service.cwd,
                start_new_session=True,
            )
        self._pid_file(service.name).write_text(str(proc.pid))
        deadline = time.monotonic() + service.startup_timeout
        last_error = "did not open its port"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._pid_file(service.name).unlink(missing_ok=True)
                raise ServiceError(
                    f"{service.name} exited with code {proc.returncode} while starting. "
                    f"Log tail ({self.log_file(service.name)}):\n{self.log_tail(service.name)}"
                )
            if port_open(service.port):
                try:
                    service.health()
                    service.after_start()
                    log.info("%s is up at %s", service.name, service.url)
                    return
                except Exception as exc:
                    last_error = str(exc)
            time.sleep(1.0)
        self._stop_one(service.name)
        raise ServiceError(
            f"{service.name} did not become healthy within {service.startup_timeout:.0f}s ({last_error}). "
            f"Log tail ({self.log_file(service.name)}):\n{self.log_tail(service.name)}"
        )

    def stop(self, names: Iterable[str] | None = None) -> list[str]:
        """Stop the named services (default: all, in reverse start order). Returns the ones stopped."""
        stopped = []
        for name in reversed(SERVICE_ORDER):
            if names is not None and name not in set(names):
                continue
            if self._stop_one(name):
                stopped.append(name)
        return stopped

    def _stop_one(self, name: str, timeout: float = 45.0) -> bool:
        pid = self.pid(name)
        self._pid_file(name).unlink(missing_ok=True)
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        try:
            psutil.Process(pid).wait(timeout=timeout)
        except psutil.TimeoutExpired:
            log.warning("%s did not stop in %.0fs: killing it", name, timeout)
            os.killpg(pid, signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
        return True

    def status(self, names: Iterable[str] | None = None) -> list[ServiceStatus]:
        """Each service's state, pid, port, URL and resident memory (with child processes)."""
        rows = []
        for name, service in self.services().items():
            if names is not None and name not in set(names):
                continue
            pid = self.pid(name)
            if pid is None:
                state = "stopped"
                detail = f"port taken by {port_owner(service.port)}" if port_open(service.port) else ""
                rows.append(ServiceStatus(name, state, None, service.port, service.url, 0, detail))
                continue
            try:
                service.health()
                state, detail = "running", ""
            except Exception as exc:
                state, detail = "unhealthy", str(exc)[:200]
            rows.append(ServiceStatus(name, state, pid, service.port, service.url, tree_rss(pid), detail))
        return rows


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its children, in bytes."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


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
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError

    require_broker(settings.kafka.bootstrap_servers)
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id="lakehouse-admin",
        request_timeout_ms=10000,
    )
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                name=name,
                num_partitions=topic.partitions,
                replication_factor=1,
                topic_configs={"retention.ms": str(topic.retention_ms)},
            )
            for name, topic in topic_plan(settings).items()
            if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except KafkaError as exc:
                raise ServiceError(f"creating topics failed: {exc}") from exc
        return [topic.name for topic in missing]
    finally:
        admin.close()
