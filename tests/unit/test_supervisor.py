"""The supervisor without services: what counts as a started service, and what is refused.

A port that answers is not proof: the process holding it must be the one this run started (or its child),
and a fresh run (the test run's own stack) refuses anything an earlier run left alive.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.stack import Service, ServiceManager

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _idle_service(port: int, prepare: object = None) -> Service:
    return Service(
        name="idle",
        port=port,
        url="-",
        health=lambda: None,
        startup_timeout=20,
        command=[sys.executable, "-c", "import time; time.sleep(60)"],
        **({"prepare": prepare} if prepare else {}),
    )


def _private_manager(settings: Settings, tmp_path: Path, fresh: bool = False) -> ServiceManager:
    manager = ServiceManager(settings.model_copy(update={"workspace": tmp_path}), fresh=fresh)
    manager.run_dir.mkdir(parents=True, exist_ok=True)
    manager.logs.mkdir(parents=True, exist_ok=True)
    return manager


def test_a_port_answered_by_another_process_is_refused(settings: Settings, tmp_path: Path) -> None:
    # The hole a green run could hide behind: the process this run starts never binds (a bad flag, a crash),
    # while something else already answers on the port. The answer must not count as the service.
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def squat() -> None:  # after the start's own "is the port free" check
        squatter.bind(("127.0.0.1", port))
        squatter.listen()

    manager = _private_manager(settings, tmp_path)
    try:
        with pytest.raises(
            ServiceError, match=rf"port {port} answered, but not by the idle this run started"
        ):
            manager.start_service(_idle_service(port, prepare=squat))
        assert manager.pid("idle") is None  # what it started was stopped again
    finally:
        squatter.close()


def test_a_fresh_run_refuses_a_service_an_earlier_run_left(settings: Settings, tmp_path: Path) -> None:
    import json
    import subprocess
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        manager = _private_manager(settings, tmp_path, fresh=True)
        (manager.run_dir / "idle.pid").write_text(str(leftover.pid))
        record = {"name": "idle", "pid": leftover.pid, "port": port, "run_id": "an-earlier-run",
                  "started_at": time.time(), "command": ["sleep"]}  # fmt: skip
        (manager.run_dir / "idle.json").write_text(json.dumps(record))
        with pytest.raises(ServiceError, match=r"idle is already running .*started by run 'an-earlier-run'"):
            manager.start_service(_idle_service(port))
        with pytest.raises(ServiceError, match="was started by run 'an-earlier-run', not this run"):
            manager.verify_own(["idle"], since=0)
        assert leftover.poll() is None  # refused, not killed: it is not this run's to stop
    finally:
        leftover.kill()
        leftover.wait()


def test_a_service_that_never_answers_times_out_with_its_log(settings: Settings, tmp_path: Path) -> None:
    manager = _private_manager(settings, tmp_path)
    silent = Service(
        name="silent",
        port=_free_port(),
        url="-",
        health=lambda: None,
        startup_timeout=2,
        command=[sys.executable, "-c", "print('listening soon', flush=True); import time; time.sleep(60)"],
    )
    with pytest.raises(ServiceError, match=r"(?s)silent did not become healthy within 2s.*listening soon"):
        manager.start_service(silent)
    assert manager.pid("silent") is None


def test_a_started_service_is_recorded_and_stopped_with_its_group(settings: Settings, tmp_path: Path) -> None:
    port = _free_port()
    server = (
        f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    )
    manager = _private_manager(settings, tmp_path, fresh=True)
    service = Service(name="tiny", port=port, url="-", health=lambda: None, startup_timeout=20,
                      command=[sys.executable, "-c", server])  # fmt: skip
    manager.start_service(service)
    pid = manager.pid("tiny")
    assert pid is not None
    (record,) = manager.verify_own(["tiny"], since=0)
    assert (record.pid, record.port, record.run_id) == (pid, port, manager.run_id)
    assert manager.stop_service("tiny") and manager.pid("tiny") is None


def test_a_listener_is_ours_when_it_descends_from_the_started_process() -> None:
    import os
    import subprocess
    import sys

    from lakehouse.stack.supervisor import descends_from

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert descends_from(child.pid, os.getpid()) is True
        assert descends_from(os.getpid(), child.pid) is False
    finally:
        child.kill()
        child.wait()
    assert descends_from(child.pid, os.getpid()) is None  # gone: the caller looks again


def test_removing_an_environments_data_takes_postgres_data_kept_outside_the_workspace(
    settings: Settings, tmp_path: Path
) -> None:
    from lakehouse.stack import postgres

    private = settings.model_copy(update={"workspace": tmp_path / "workspace"})
    manager = ServiceManager(private)
    (private.workspace / "lake" / "bronze").mkdir(parents=True)
    pg_data = postgres.home(private) / "data"
    pg_data.mkdir(parents=True)  # as root: /var/lib/lakehouse/<this workspace's digest>/postgres
    (pg_data / "PG_VERSION").write_text("15\n")

    removed = manager.remove_data()

    assert removed[0] == private.workspace
    assert not private.workspace.exists() and not pg_data.exists()
    assert all(
        not p.exists() for p in manager.external_dirs()
    )  # nothing of it left behind, not even a folder
    assert manager.remove_data() == []  # twice is fine
