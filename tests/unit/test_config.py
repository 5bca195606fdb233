"""Settings: the one environment switch, variable expansion and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakehouse.config import Settings, find_root, load_settings
from lakehouse.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _project(tmp_path: Path, body: str, name: str = "env.yaml") -> Path:
    (tmp_path / "pipeline.yaml").write_text("tasks: []\n")
    (tmp_path / name).write_text(body)
    return tmp_path


def test_each_committed_environment_loads() -> None:
    local = load_settings("local", root=ROOT)
    test = load_settings("test", root=ROOT)
    assert local.env_name == "local" and test.env_name == "test"
    assert local.workspace != test.workspace

    # The test stack must never collide with a running demo.
    def ports(s: Settings) -> set[int]:
        return {
            s.kafka.port,
            s.kafka.controller_port,
            s.spark.connect_port,
            s.mlflow.port,
            s.dashboard.port,
            s.postgres.port,
            s.mqtt.port,
            s.influxdb.port,
            s.influxdb.rpc_port,
            s.fx_api.port,
        }

    assert len(ports(local)) == len(ports(test)) == 10
    assert ports(local).isdisjoint(ports(test))


def test_env_variable_selects_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_ENV", "test")
    assert load_settings(root=ROOT).env_name == "test"


def test_paths_are_absolute_and_inside_the_workspace(tmp_path: Path) -> None:
    root = _project(tmp_path, "workspace: ws\n")
    settings = load_settings("local", root=root)
    assert settings.workspace == (tmp_path / "ws").resolve()
    assert settings.table_path("silver", "events") == str(tmp_path / "ws" / "lake" / "silver" / "events")
    with pytest.raises(ConfigError, match="unknown lake layer"):
        settings.table_path("platinum", "events")


def test_variables_expand_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _project(tmp_path, "workspace: ws\nkafka:\n  bootstrap_servers: ${BROKERS:-127.0.0.1:1234}\n")
    monkeypatch.delenv("BROKERS", raising=False)
    assert load_settings("local", root=root).kafka.bootstrap_servers == "127.0.0.1:1234"
    monkeypatch.setenv("BROKERS", "kafka-1:9092,kafka-2:9092")
    assert load_settings("local", root=root).kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"


def test_missing_variable_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPARK_REMOTE_X", raising=False)
    root = _project(tmp_path, "workspace: ws\nspark:\n  connect_url: ${SPARK_REMOTE_X}\n")
    with pytest.raises(ConfigError, match="SPARK_REMOTE_X"):
        load_settings("local", root=root)


def test_cluster_environment_needs_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    required = {
        "LAKEHOUSE_WORKSPACE": "/data/lakehouse",
        "LAKEHOUSE_KAFKA_BOOTSTRAP": "broker:9092",
        "SPARK_REMOTE": "sc://spark-connect:15002",
        "LAKEHOUSE_PG_HOST": "orders-db",
        "LAKEHOUSE_PG_PASSWORD": "from-a-secret-store",
        "LAKEHOUSE_MQTT_HOST": "mqtt",
        "LAKEHOUSE_INFLUX_HOST": "influx",
        "LAKEHOUSE_REDIS_HOST": "features-cache",
        "LAKEHOUSE_LINEAGE_URL": "http://marquez:5000",
        "LAKEHOUSE_PII_KEY": "from-a-secret-store-too",
    }
    for name in required:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="LAKEHOUSE_WORKSPACE"):
        load_settings("cluster", root=ROOT)
    for name, value in required.items():
        monkeypatch.setenv(name, value)
    cluster = load_settings("cluster", root=ROOT)
    assert not cluster.spark.managed and cluster.spark.connect_url == "sc://spark-connect:15002"
    assert not cluster.postgres.managed and cluster.postgres.password == "from-a-secret-store"
    assert cluster.lineage.transport == "http" and cluster.lineage.url == "http://marquez:5000"
    assert cluster.privacy.tokenization_key == "from-a-secret-store-too"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("workspace: ws\nkafka:\n  port: not-a-port\n", "kafka.port"),
        ("workspace: ws\nkafka:\n  brokers: 3\n", "kafka.brokers"),
        ("workspace: ws\nspark:\n  connect_url: http://x:1\n", "sc://"),
        ("kafka: {}\n", "workspace"),
        ("workspace: [unclosed\n", "not valid YAML"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path: Path, body: str, message: str) -> None:
    root = _project(tmp_path, body)
    with pytest.raises(ConfigError, match=message):
        load_settings("local", root=root)


def test_unknown_environment_lists_the_known_ones(tmp_path: Path) -> None:
    root = _project(tmp_path, "workspace: ws\n")
    with pytest.raises(ConfigError, match=r"env\.staging\.yaml.*env\.yaml"):
        load_settings("staging", root=root)


def test_root_is_found_from_a_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _project(tmp_path, "workspace: ws\n")
    (root / "notebooks" / "silver").mkdir(parents=True)
    monkeypatch.delenv("LAKEHOUSE_ROOT", raising=False)
    assert find_root(root / "notebooks" / "silver") == root.resolve()
    with pytest.raises(ConfigError, match=r"pipeline\.yaml"):
        find_root(Path("/"))


def test_a_port_offset_moves_every_service_the_project_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # LAKEHOUSE_PORT_OFFSET runs a second stack (the fresh-machine check) beside a first one.
    monkeypatch.delenv("LAKEHOUSE_PORT_OFFSET", raising=False)
    monkeypatch.delenv("LAKEHOUSE_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    base = load_settings("local", root=ROOT)
    monkeypatch.setenv("LAKEHOUSE_PORT_OFFSET", "300")
    moved = load_settings("local", root=ROOT)
    pairs = {
        "kafka": (base.kafka.port, moved.kafka.port),
        "controller": (base.kafka.controller_port, moved.kafka.controller_port),
        "connect": (base.spark.connect_port, moved.spark.connect_port),
        "mlflow": (base.mlflow.port, moved.mlflow.port),
        "dashboard": (base.dashboard.port, moved.dashboard.port),
        "model_serving": (base.model_serving.port, moved.model_serving.port),
        "postgres": (base.postgres.port, moved.postgres.port),
        "mqtt": (base.mqtt.port, moved.mqtt.port),
        "influxdb": (base.influxdb.port, moved.influxdb.port),
        "redis": (base.redis.port, moved.redis.port),
        "influx rpc": (base.influxdb.rpc_port, moved.influxdb.rpc_port),
        "fx_api": (base.fx_api.port, moved.fx_api.port),
    }
    assert {name: new - old for name, (old, new) in pairs.items()} == dict.fromkeys(pairs, 300)
    # the addresses clients use move with the ports
    assert moved.kafka.bootstrap_servers == f"127.0.0.1:{base.kafka.port + 300}"
    assert moved.spark.connect_url == f"sc://127.0.0.1:{base.spark.connect_port + 300}"


def test_a_port_offset_leaves_services_the_project_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "LAKEHOUSE_WORKSPACE": "/data/lakehouse",
        "LAKEHOUSE_KAFKA_BOOTSTRAP": "broker:9092",
        "SPARK_REMOTE": "sc://spark-connect:15002",
        "LAKEHOUSE_PG_HOST": "orders-db",
        "LAKEHOUSE_PG_PASSWORD": "x",
        "LAKEHOUSE_MQTT_HOST": "mqtt",
        "LAKEHOUSE_INFLUX_HOST": "influx",
        "LAKEHOUSE_REDIS_HOST": "features-cache",
        "LAKEHOUSE_LINEAGE_URL": "http://marquez:5000",
        "LAKEHOUSE_PII_KEY": "k",
        "LAKEHOUSE_PORT_OFFSET": "300",
    }.items():
        monkeypatch.setenv(name, value)
    cluster = load_settings("cluster", root=ROOT)
    assert cluster.kafka.bootstrap_servers == "broker:9092"
    assert cluster.spark.connect_url == "sc://spark-connect:15002"
    assert cluster.postgres.host == "orders-db"
    assert (cluster.redis.host, cluster.redis.port) == ("features-cache", 6379)


@pytest.mark.parametrize("value", ["abc", "-5", "70000"])
def test_a_bad_port_offset_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LAKEHOUSE_PORT_OFFSET", value)
    with pytest.raises(ConfigError, match="LAKEHOUSE_PORT_OFFSET"):
        load_settings("local", root=ROOT)
