"""Every command the README shows exists: each answers ``--help`` (or ``make -n``) on the test environment.

The README is what a new user types. A command it shows that was renamed, dropped or never wired in fails
here, not on a user's machine.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lakehouse.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def readme_commands() -> list[list[str]]:
    """The command lines of the README's bash blocks: comments, continuations and env assignments removed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            while words and _ASSIGNMENT.match(words[0]):
                words.pop(0)
            if words:
                commands.append(words)
    return commands


COMMANDS = readme_commands()


def _program(words: list[str]) -> str:
    return Path(words[0]).name


def test_the_readme_shows_commands_of_each_kind() -> None:
    programs = {_program(words) for words in COMMANDS}
    assert {"make", "lakehouse", "ploomber", "papermill", "pytest"} <= programs, programs
    assert ["make", "demo"] in COMMANDS and ["make", "test"] in COMMANDS


def _subcommand(words: list[str]) -> list[str]:
    """The subcommand path of a lakehouse command line (the words before the first option or argument)."""
    path: list[str] = []
    command = main
    for word in words[1:]:
        if word.startswith("-") or not hasattr(command, "commands") or word not in command.commands:  # type: ignore[attr-defined]
            break
        path.append(word)
        command = command.commands[word]  # type: ignore[attr-defined]
    return path


@pytest.mark.parametrize(
    "words",
    [w for w in COMMANDS if _program(w) == "lakehouse"],
    ids=lambda w: " ".join(w[1:4]),
)
def test_each_lakehouse_command_answers_help(words: list[str]) -> None:
    path = _subcommand(words)
    assert path or words[1:] == ["--help"], f"`{' '.join(words)}` names no lakehouse command"
    result = CliRunner().invoke(main, ["--env", "test", *path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # every option the README passes is one the command knows
    for word in words[1 + len(path) :]:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in result.output, f"{' '.join(path)} has no option {word}"


@pytest.mark.parametrize(
    "words", [w for w in COMMANDS if _program(w) == "make"], ids=lambda w: " ".join(w[1:])
)
def test_each_make_target_exists(words: list[str]) -> None:
    # -n prints what the target would run without running it; an unknown target fails
    result = subprocess.run(
        ["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "words",
    [w for w in COMMANDS if _program(w) in {"ploomber", "papermill", "pytest"}],
    ids=lambda w: " ".join(w[:3]),
)
def test_each_tool_command_answers_help(words: list[str]) -> None:
    program = BIN / _program(words)
    subcommand = [w for w in words[1:2] if _program(words) == "ploomber"]
    env = {**os.environ, "PLOOMBER_STATS_ENABLED": "false", "PLOOMBER_VERSION_CHECK_DISABLED": "true"}
    result = subprocess.run(
        [str(program), *subcommand, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for word in words[1:]:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in result.stdout, f"{program.name} has no option {word}"
