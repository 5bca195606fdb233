"""Every flag and setting a service is started with exists in the version the Makefile installs.

A setting a program does not know either kills it at start (PostgreSQL 15 has no ``output_plugin_libraries``,
nor has any release) or is silently ignored (InfluxDB drops unknown TOML keys, Spark keeps any ``--conf``,
Kafka skips properties it does not define). Both kinds are caught here, program by program, against the
installed binaries and the running stack's own view of its configuration.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.stack import Service, ServiceManager
from lakehouse.stack.postgres import PG_BIN

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services(postgres: Settings, mqtt: Settings, influxdb: Settings) -> dict[str, Service]:
    """The definitions of the running stack's services (PostgreSQL, Mosquitto and InfluxDB up too)."""
    return ServiceManager(influxdb).services()


def _help_prefix(command: list[str]) -> list[str]:
    """The program part of a command line (``python -m module`` or a program and its subcommand)."""
    if len(command) > 2 and command[1] == "-m":
        return command[:3]
    prefix = [command[0]]
    tokens = iter(command[1:])
    for token in tokens:
        if token == "--env":  # the lakehouse command's own options come before its subcommand
            prefix += [token, next(tokens)]
        elif token == "-v":
            prefix.append(token)
        elif token.startswith("-"):
            break
        else:
            prefix.append(token)
    return prefix


def _long_flags(command: list[str]) -> set[str]:
    return {token.split("=", 1)[0] for token in command if token.startswith("--")}


def _help_text(command: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [*command, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize("name", ["mlflow", "dashboard", "fx_api", "spark", "model-conversion-propensity"])
def test_every_long_flag_is_in_the_programs_help(services: dict[str, Service], name: str) -> None:
    service = services[name]
    prefix = _help_prefix(service.command)
    env = {**service.env, "PYSPARK_PYTHON": service.env.get("PYSPARK_PYTHON", "")} if name == "spark" else {}
    text = _help_text(prefix, {k: v for k, v in env.items() if v})
    flags = _long_flags(service.command[len(prefix) :])
    assert flags, f"{name} is started without any long flag: the test would prove nothing"
    unknown = sorted(flag for flag in flags if flag not in text)
    assert not unknown, f"{' '.join(prefix)} --help does not know {unknown}:\n{text[-2000:]}"


def test_postgres_settings_exist_in_the_installed_server(services: dict[str, Service]) -> None:
    command = services["postgres"].command
    settings = [command[i + 1].split("=", 1)[0] for i, token in enumerate(command) if token == "-c"]
    assert "wal_level" in settings
    described = subprocess.run(
        [str(PG_BIN / "postgres"), "--describe-config"], capture_output=True, text=True, check=True
    ).stdout
    known = {line.split("\t", 1)[0] for line in described.splitlines() if line}
    assert len(known) > 200, "postgres --describe-config listed too few settings to compare against"
    assert set(settings) <= known, f"PostgreSQL 15 has no setting {sorted(set(settings) - known)}"


def test_postgres_runs_with_the_settings_it_was_given(postgres: Settings) -> None:
    import psycopg

    with psycopg.connect(**postgres.postgres.connect_kwargs("postgres")) as conn:
        values = dict(conn.execute("SELECT name, setting FROM pg_settings").fetchall())
    assert values["wal_level"] == "logical"
    assert values["listen_addresses"] == "127.0.0.1"


def test_influxdb_takes_every_key_of_its_config(services: dict[str, Service], influxdb: Settings) -> None:
    # influxd ignores keys it does not know; its merged view must hold each of ours with our value.
    config = Path(services["influxdb"].command[-1])
    ours = tomllib.loads(config.read_text())
    merged_text = subprocess.run(
        ["influxd", "config", "-config", str(config)], capture_output=True, text=True, check=True
    ).stdout
    merged = tomllib.loads(merged_text)

    def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                found.update(leaves(value, f"{prefix}{key}."))
            else:
                found[f"{prefix}{key}"] = value
        return found

    expected, actual = leaves(ours), leaves(merged)
    assert len(expected) >= 8
    missing = {key: value for key, value in expected.items() if actual.get(key) != value}
    assert not missing, f"influxd did not take {missing}"


def test_mosquitto_started_without_a_config_error(services: dict[str, Service], mqtt: Settings) -> None:
    # Mosquitto stops at an option it does not know ("Error: Unknown configuration variable"); its log goes to
    # stderr (unbuffered), so what it said at start is in the log now.
    log = ServiceManager(mqtt).log_tail("mqtt", lines=400)
    assert (
        "starting mqtt" in log and "Warning: Mosquitto should not be run as root" in log
    ) or os.geteuid(), log
    assert "Error" not in log and "Unknown configuration" not in log, log


def test_kafka_knows_every_property_it_was_given(services: dict[str, Service], stack: Settings) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    properties = Path(services["kafka"].command[-1])
    given = {
        line.split("=", 1)[0].strip()
        for line in properties.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap_servers, client_id="flags-test")
    try:
        response = admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, "1")], config_filter="all"
        )
    finally:
        admin.close()
    known = set(response["broker"]["1"])
    assert len(known) > 100, "the broker described too few configs to compare against"
    assert given <= known, f"Kafka {sorted(given - known)} are not broker configs (ignored at start)"


def test_spark_connect_holds_every_conf_it_was_given(services: dict[str, Service], spark: Any) -> None:
    command = services["spark"].command
    given = dict(
        command[i + 1].split("=", 1) for i, token in enumerate(command) if token == "--conf"
    )  # fmt: skip
    assert all(key.startswith("spark.") for key in given), sorted(given)  # spark-submit drops the rest
    missing = {}
    for key, value in given.items():
        try:
            held = spark.conf.get(key)
        except Exception as exc:  # an unset key raises on the server
            missing[key] = f"not set ({type(exc).__name__})"
            continue
        if held in (value, f"file:{value}"):  # paths come back as file: URIs
            continue
        if not key.endswith(("jars", "ClassPath", "extraJavaOptions")):
            missing[key] = f"{held!r} instead of {value!r}"
    assert not missing, f"the Connect server does not hold {missing}"
