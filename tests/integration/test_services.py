"""The service manager on the real stack: status, idempotent start, clear errors."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lakehouse.cli import main
from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.spark import get_spark
from lakehouse.stack import Service, ServiceManager, java_executable

pytestmark = pytest.mark.integration


def test_status_shows_the_running_stack(stack: Settings) -> None:
    rows = {row.name: row for row in ServiceManager(stack).status(["kafka", "spark"])}
    assert rows["kafka"].state == "running" and rows["kafka"].port == stack.kafka.port
    assert rows["spark"].state == "running" and rows["spark"].rss_bytes > 100 * 2**20
    result = CliRunner().invoke(main, ["--env", stack.env_name, "status"])
    assert result.exit_code == 0, result.output
    assert "kafka" in result.output and "running" in result.output


def test_up_twice_keeps_the_running_services(stack: Settings) -> None:
    manager = ServiceManager(stack)
    before = manager.pid("kafka")
    manager.start(["kafka"])
    assert manager.pid("kafka") == before


def test_a_taken_port_is_reported_with_its_owner(stack: Settings) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        taken = stack.model_copy(update={"mlflow": stack.mlflow.model_copy(update={"port": port})})
        with pytest.raises(ServiceError, match=f"port {port} for mlflow is already taken by"):
            ServiceManager(taken).start(["mlflow"])


def test_a_service_that_dies_at_start_shows_its_log(stack: Settings, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broken = Service(
        name="broken",
        port=port,
        url="-",
        health=lambda: None,
        startup_timeout=20,
        command=[sys.executable, "-c", "import sys; print('bad config: no such table'); sys.exit(3)"],
    )
    manager = ServiceManager(stack.model_copy(update={"workspace": tmp_path}))
    manager.run_dir.mkdir(parents=True)
    manager.logs.mkdir(parents=True)
    with pytest.raises(ServiceError, match=r"(?s)exited with code 3.*bad config: no such table"):
        manager.start_service(broken)


def test_java_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(ServiceError, match="Java is not installed"):
        java_executable()


def test_connect_mode_fails_fast_when_the_server_is_down(stack: Settings) -> None:
    dead = stack.model_copy(
        update={"spark": stack.spark.model_copy(update={"connect_url": "sc://127.0.0.1:1"})}
    )
    with pytest.raises(ServiceError, match="lakehouse up"):
        get_spark(dead, mode="connect")


def test_every_service_of_the_stack_was_started_by_this_run(stack: Settings, stack_records: list) -> None:
    # The run talks only to services it started: each record names this run, its process started after the
    # run began (RUN_STARTED) and holds the service's port (verify_own checks both and raised otherwise).
    import os

    names = {record.name for record in stack_records}
    assert {"kafka", "spark", "postgres", "mqtt", "fx_api"} <= names
    for record in stack_records:
        assert record.run_id == os.environ["LAKEHOUSE_RUN_ID"]
        assert record.command, record
