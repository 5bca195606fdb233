"""Continuous mode as a service: ``lakehouse stream start --foreground`` run detached by the supervisor.

It listens on no port; it is ready when its status file says ``running`` for the very process the supervisor
started. SIGTERM (``lakehouse stream stop`` or ``down``) makes it stop every query cleanly first.
"""

from __future__ import annotations

import contextlib
import logging

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.stack.java import lakehouse_command
from lakehouse.stack.supervisor import Service, Supervisor
from lakehouse.streaming.continuous import SupervisorFiles, SupervisorOptions, read_status, running_pid

log = logging.getLogger(__name__)

NAME = "stream"


def recipe(settings: Settings, args: list[str] | None = None, startup_timeout: float = 120.0) -> Service:
    """The continuous-mode supervisor with ``args`` (``stream start`` options, e.g. ``--no-influx``)."""

    def health() -> None:
        status = read_status(settings) or {}
        pid = running_pid(settings)
        if pid is None or status.get("pid") != pid or status.get("state") != "running":
            raise ServiceError(f"continuous mode has not reported running yet (state {status.get('state')})")

    def prepare() -> None:
        SupervisorFiles.of(settings).status.unlink(missing_ok=True)

    return Service(
        name=NAME,
        port=None,
        url=f"{settings.run_dir / 'stream-status.json'}",
        command=lakehouse_command(settings.env_name, "-v", "stream", "start", "--foreground", *(args or [])),
        health=health,
        prepare=prepare,
        startup_timeout=startup_timeout,
        stop_timeout=90.0,
        cwd=settings.root,
    )


def _supervisor(settings: Settings) -> Supervisor:
    return Supervisor({NAME: recipe(settings)}, settings.run_dir, settings.logs, settings.env_name)


def start(
    settings: Settings, options: SupervisorOptions | None = None, *, timeout: float = 120.0
) -> tuple[int, bool]:
    """Start the supervisor as a service of the stack (detached) and wait until its queries are started.

    Returns:
        (pid, started): ``started`` is False when one was already running (nothing else happens then).

    Raises:
        ServiceError: it exited or did not report running within ``timeout`` (with its log tail).
    """
    pid = running_pid(settings)
    if pid is not None:
        return pid, False
    manager = _supervisor(settings)
    service = recipe(settings, (options or SupervisorOptions()).to_args(), startup_timeout=timeout)
    manager.start_service(service)
    started = manager.pid(service.name)
    if started is None:  # pragma: no cover - start_service raises when it is not running
        raise ServiceError("continuous mode did not stay up after it reported running")
    return started, True


def stop(settings: Settings, timeout: float = 90.0) -> int | None:
    """Signal the supervisor (SIGTERM), wait for it to stop its queries and exit. Returns its pid, if any."""
    pid = running_pid(settings)
    if pid is None:
        return None
    manager = _supervisor(settings)
    if manager.pid(NAME) == pid:
        manager.stop_service(NAME)
    else:  # started in a terminal with --foreground: stop it the same way
        import psutil

        try:
            proc = psutil.Process(pid)
            proc.terminate()
            proc.wait(timeout=timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            log.warning("continuous mode (pid %d) did not stop in %.0fs: killing it", pid, timeout)
            with contextlib.suppress(psutil.Error):
                proc.kill()
    SupervisorFiles.of(settings).pid.unlink(missing_ok=True)
    return pid
