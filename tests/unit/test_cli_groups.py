"""Every CLI group imports on its own and answers ``--help``, down to each command.

The group modules used to import private helpers back from :mod:`lakehouse.cli`, so importing one alone
failed with a partially-initialised-module error; they now share :mod:`lakehouse.cli_kit` only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lakehouse.cli import main

pytestmark = pytest.mark.unit

LIB = Path(__file__).resolve().parents[2] / "lib" / "lakehouse"
GROUP_MODULES = [
    "lakehouse.governance.cli",
    "lakehouse.privacy.cli",
    "lakehouse.streaming.cli",
    "lakehouse.sources.http_cli",
    "lakehouse.sources.postgres_cli",
    "lakehouse.sources.mqtt_cli",
]


@pytest.mark.parametrize("module", GROUP_MODULES)
def test_each_group_module_imports_alone(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_module_imports_the_root_cli() -> None:
    offenders = []
    for path in LIB.rglob("*.py"):
        if path.name == "cli.py" and path.parent == LIB:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "lakehouse.cli":
                offenders.append(str(path.relative_to(LIB)))
    assert offenders == []


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


COMMANDS = _commands(main)


def test_the_tree_holds_every_group() -> None:
    groups = {path[0] for path in COMMANDS if path}
    assert {
        "stream",
        "processor",
        "api",
        "retail",
        "iot",
        "catalog",
        "privacy",
        "lab",
        "up",
        "down",
    } <= groups


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "lakehouse")
def test_every_command_answers_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, ["--env", "test", *path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:"), result.output


def test_a_package_error_is_a_one_line_message_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["--env", "no-such-env", "status"])
    assert result.exit_code == 1
    assert "Error: environment 'no-such-env' has no file env.no-such-env.yaml" in result.output
    assert "Traceback" not in result.output


def test_the_env_option_does_not_leak_into_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("LAKEHOUSE_ENV", raising=False)
    result = CliRunner().invoke(main, ["--env", "test", "catalog", "list"])
    assert result.exit_code == 0, result.output
    assert "LAKEHOUSE_ENV" not in os.environ
