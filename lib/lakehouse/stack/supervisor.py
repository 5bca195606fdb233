"""The one process supervisor: pid files, logs, start-and-wait-healthy, stop, status, memory, ownership.

A :class:`Service` is a recipe (command, port, health check, preparation); :class:`Supervisor` runs recipes as
detached processes (their own session, so a terminal's Ctrl-C does not reach them) with a pid file and a start
record under ``<workspace>/run`` and a log under ``<workspace>/logs``. ``up`` is therefore safe to run twice,
``status`` works from any shell and ``down`` stops exactly what ``up`` started: the whole process group.

A service is ready when its process is alive, the process holding its port is that process (or one of its
children) and its health check passes: a port answered by someone else never counts (see
:meth:`Supervisor.start_service`). ``fresh=True`` refuses to adopt anything already running, which is how the
test run proves every service it talks to is its own (:meth:`Supervisor.verify_own`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from lakehouse.errors import ServiceError
from lakehouse.state import write_json

log = logging.getLogger(__name__)

RUN_ID_VARIABLE = "LAKEHOUSE_RUN_ID"


@dataclass(frozen=True)
class Service:
    """How to run, probe and find one local service.

    ``port`` is None for a service that listens on nothing (continuous mode): its health check alone says
    when it is ready.
    """

    name: str
    port: int | None
    command: list[str]
    url: str
    health: Callable[[], None]
    prepare: Callable[[], None] = field(default=lambda: None)
    after_start: Callable[[], None] = field(default=lambda: None)
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 90.0
    stop_timeout: float = 45.0
    cwd: Path | None = None
    # Started only when named (``lakehouse up --only``, `lakehouse demo` after the build): a model's serving
    # endpoint needs the champion the DAG trains.
    on_demand: bool = False


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # running | stopped | unhealthy
    pid: int | None
    port: int | None
    url: str
    rss_bytes: int
    detail: str = ""


@dataclass(frozen=True)
class StartRecord:
    """What one start of a service was: kept beside its pid file as ``run/<name>.json``.

    ``run_id`` names the run that started it (``$LAKEHOUSE_RUN_ID``, e.g. one test session), so a run can
    prove that every service it talks to is its own and not one found already listening.
    """

    name: str
    pid: int
    port: int | None
    run_id: str
    started_at: float
    command: list[str]

    @classmethod
    def read(cls, path: Path) -> StartRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


# -- processes and ports ---------------------------------------------------------------------------------
def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listener_pids(port: int) -> set[int]:
    """The pids that listen on TCP ``port`` (empty when none, or when the OS hides them from us)."""
    try:
        return {
            conn.pid
            for conn in psutil.net_connections(kind="inet")
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid
        }
    except (psutil.Error, OSError):
        return set()


def describe_process(pid: int) -> str:
    """``pid N (name: first arguments; user U)`` for messages, or ``pid N`` when it is gone."""
    try:
        proc = psutil.Process(pid)
        return f"pid {pid} ({proc.name()}: {' '.join(proc.cmdline()[:4])}; user {proc.username()})"
    except psutil.Error:
        return f"pid {pid}"


def port_owner(port: int) -> str:
    """Who listens on ``port`` (pid and name when the OS tells us)."""
    pids = listener_pids(port)
    return ", ".join(describe_process(pid) for pid in sorted(pids)) if pids else "another process"


def process_tree(pid: int) -> set[int]:
    """``pid`` and every process below it (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return {pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return set()


def descends_from(pid: int, ancestor: int) -> bool | None:
    """Whether process ``pid`` is ``ancestor`` or below it; None when ``pid`` is gone."""
    try:
        process = psutil.Process(pid)
        return pid == ancestor or any(parent.pid == ancestor for parent in process.parents())
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return False


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its children, in bytes."""
    total = 0
    for member in process_tree(pid):
        try:
            total += psutil.Process(member).memory_info().rss
        except psutil.Error:
            continue
    return total


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class _NotReady(Exception):
    """The service is starting: its port or its health check does not answer yet."""


class Supervisor:
    """Start, stop and report a set of services, keeping their files under ``run_dir`` and ``logs``.

    Args:
        services: the recipes, by name, in start order.
        run_dir: where pid files and start records go.
        logs: where each service's log goes.
        env_name: the environment's name, for messages (``lakehouse --env NAME down``).
        fresh: refuse to adopt anything already running (a live pid file of an earlier run, or any process
            on a service's port).
    """

    def __init__(
        self,
        services: Mapping[str, Service],
        run_dir: Path,
        logs: Path,
        env_name: str = "local",
        fresh: bool = False,
    ) -> None:
        self.recipes = dict(services)
        self.run_dir = run_dir
        self.logs = logs
        self.env_name = env_name
        self.fresh = fresh
        self.run_id = os.environ.get(RUN_ID_VARIABLE) or f"pid-{os.getpid()}"

    # -- files ------------------------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _record_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def log_tail(self, name: str, lines: int = 25) -> str:
        return log_tail(self.log_file(name), lines)

    def pid(self, name: str) -> int | None:
        """The pid of a service this supervisor started and that is still alive."""
        try:
            pid = int(self._pid_file(name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def start_record(self, name: str) -> StartRecord | None:
        """How the running ``name`` was started (None when it is not running or left no record)."""
        if self.pid(name) is None:
            return None
        return StartRecord.read(self._record_file(name))

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self, names: Iterable[str] | None = None) -> list[ServiceStatus]:
        """Start the named services (default: all), in order, skipping those already running and healthy.

        Raises:
            ServiceError: an unknown name, a port taken by a foreign process, or a service that did not
                become healthy in time (with its log tail).
        """
        wanted = [n for n, r in self.recipes.items() if not r.on_demand] if names is None else list(names)
        unknown = set(wanted) - set(self.recipes)
        if unknown:
            raise ServiceError(
                f"unknown or unmanaged service(s) {sorted(unknown)}: choose from {sorted(self.recipes)}"
            )
        ordered = [name for name in self.recipes if name in set(wanted)]
        for name in ordered:
            self.start_service(self.recipes[name])
        return self.status(ordered)

    def start_service(self, service: Service) -> None:
        """Start one service and wait until it is ready (see the module docstring)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        running = self.pid(service.name)
        if running is not None and self.fresh:
            record = self.start_record(service.name)
            if record is None or record.run_id != self.run_id:
                by = f"run {record.run_id!r}" if record else "an unknown run"
                raise ServiceError(
                    f"{service.name} is already running ({describe_process(running)}, started by {by}), "
                    f"and this run starts its own services: stop it with "
                    f"`lakehouse --env {self.env_name} down` and run again"
                )
        if running is not None:
            try:
                service.health()
                log.info("%s already running", service.name)
                return
            except Exception:
                log.warning("%s is running but unhealthy: restarting it", service.name)
                self.stop_service(service.name)
        if service.port is not None and port_open(service.port):
            raise ServiceError(
                f"port {service.port} for {service.name} is already taken by {port_owner(service.port)}: "
                f"stop it, choose another port in env.{self.env_name}.yaml, or move every port "
                f"with LAKEHOUSE_PORT_OFFSET"
            )
        service.prepare()
        proc = self._spawn(service)
        try:
            for attempt in Retrying(
                stop=stop_after_delay(service.startup_timeout),
                wait=wait_fixed(1.0),
                retry=retry_if_exception_type(_NotReady),
                reraise=False,
            ):
                with attempt:
                    self._ready(service, proc)
        except RetryError as exc:
            self.stop_service(service.name)
            last = exc.last_attempt.exception()
            raise ServiceError(
                f"{service.name} did not become healthy within {service.startup_timeout:.0f}s ({last}). "
                f"Log tail ({self.log_file(service.name)}):\n{self.log_tail(service.name)}"
            ) from None
        log.info("%s is up at %s", service.name, service.url)

    def _spawn(self, service: Service) -> subprocess.Popen[bytes]:
        with self.log_file(service.name).open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service.name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                service.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **service.env},
                cwd=service.cwd,
                start_new_session=True,
            )
        self._pid_file(service.name).write_text(str(proc.pid))
        record = StartRecord(service.name, proc.pid, service.port, self.run_id, time.time(), service.command)
        write_json(self._record_file(service.name), asdict(record))
        return proc

    def _ready(self, service: Service, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            self._forget(service.name)
            raise ServiceError(
                f"{service.name} exited with code {proc.returncode} while starting. "
                f"Log tail ({self.log_file(service.name)}):\n{self.log_tail(service.name)}"
            )
        if service.port is not None:
            if not port_open(service.port):
                raise _NotReady("did not open its port")
            self._require_own_listener(service, proc.pid)
        try:
            service.health()
            service.after_start()  # idempotent set-up (a database, a bucket): retried with the health check
        except Exception as exc:
            raise _NotReady(str(exc)) from exc

    def _require_own_listener(self, service: Service, pid: int) -> None:
        # The port answering is not proof enough: another process (one left by an earlier run, started by
        # hand, or running as another user) may hold it while the one just started dies on a bad flag.
        assert service.port is not None
        for _ in range(5):
            listeners = listener_pids(service.port)
            if not listeners:
                return  # the OS hides the owner (another user's socket): the health check decides
            verdicts = {listener: descends_from(listener, pid) for listener in listeners}
            if any(verdicts.values()):
                return
            if all(verdict is not None for verdict in verdicts.values()):
                break
            # The socket was attributed to a child that has exited since (PostgreSQL forks a backend per
            # connection, and each inherits the listening socket): look again.
            time.sleep(0.2)
        foreign = ", ".join(describe_process(p) for p in sorted(listeners))
        self.stop_service(service.name)
        raise ServiceError(
            f"port {service.port} answered, but not by the {service.name} this run started (pid {pid}): "
            f"it is held by {foreign}. Stop that process; the project only talks to services it started. "
            f"Log tail ({self.log_file(service.name)}):\n{self.log_tail(service.name)}"
        )

    def verify_own(self, names: Iterable[str], since: float) -> list[StartRecord]:
        """Prove that each named service was started by this run and is the process on its port.

        Args:
            names: the services to check.
            since: the run's start (epoch seconds): each service must have started after it.

        Returns:
            The start records, one per service.

        Raises:
            ServiceError: a service is not running, was started by another run or before ``since``, or its
                port is held by a process outside the one this run started.
        """
        records = []
        for name in names:
            pid = self.pid(name)
            record = self.start_record(name)
            if pid is None or record is None:
                raise ServiceError(
                    f"{name} is not running as a service this run started (no live pid/record)"
                )
            if record.run_id != self.run_id:
                raise ServiceError(
                    f"{name} was started by run {record.run_id!r}, not this run ({self.run_id!r})"
                )
            created = psutil.Process(pid).create_time()
            if created < since - 1.0:
                raise ServiceError(
                    f"{name} ({describe_process(pid)}) started at {time.ctime(created)}, "
                    "before this run began"
                )
            if record.port is not None:
                listeners = listener_pids(record.port)
                if not listeners & process_tree(pid):
                    held = ", ".join(describe_process(p) for p in sorted(listeners)) or "nobody visible"
                    raise ServiceError(f"port {record.port} of {name} is held by {held}, not by pid {pid}")
            records.append(record)
        return records

    def stop(self, names: Iterable[str] | None = None) -> list[str]:
        """Stop the named services (default: all, in reverse start order). Returns the ones stopped."""
        wanted = None if names is None else set(names)
        order = [*self.recipes, *(n for n in self._known_names() if n not in self.recipes)]
        return [
            name for name in reversed(order) if (wanted is None or name in wanted) and self.stop_service(name)
        ]

    def _known_names(self) -> list[str]:
        if not self.run_dir.is_dir():
            return []
        return sorted(path.stem for path in self.run_dir.glob("*.pid"))

    def _forget(self, name: str) -> None:
        self._pid_file(name).unlink(missing_ok=True)
        self._record_file(name).unlink(missing_ok=True)

    def stop_service(self, name: str) -> bool:
        """Stop one service: SIGTERM to its process group, SIGKILL after its stop timeout."""
        pid = self.pid(name)
        self._forget(name)
        if pid is None:
            return False
        timeout = self.recipes[name].stop_timeout if name in self.recipes else 90.0
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
        wanted = None if names is None else set(names)
        rows = []
        for name, service in self.recipes.items():
            if wanted is not None and name not in wanted:
                continue
            pid = self.pid(name)
            if pid is None:
                taken = service.port is not None and port_open(service.port)
                detail = f"port taken by {port_owner(service.port)}" if taken and service.port else ""
                rows.append(ServiceStatus(name, "stopped", None, service.port, service.url, 0, detail))
                continue
            try:
                service.health()
                state, detail = "running", ""
            except Exception as exc:
                state, detail = "unhealthy", str(exc)[:200]
            rows.append(ServiceStatus(name, state, pid, service.port, service.url, tree_rss(pid), detail))
        return rows
