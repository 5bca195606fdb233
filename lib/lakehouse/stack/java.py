"""Finding the programs the services run: Java, and console scripts of the project's environment."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from lakehouse.errors import ServiceError


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


def venv_program(name: str) -> str:
    """A console script of the active virtual environment (where the project is installed).

    Raises:
        ServiceError: it is not installed.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name} is not installed in this environment: run `make setup`")
    return found


def lakehouse_command(env_name: str, *args: str) -> list[str]:
    """``lakehouse --env NAME ARGS…``: services the project implements itself run as its own CLI."""
    return [venv_program("lakehouse"), "--env", env_name, *args]
