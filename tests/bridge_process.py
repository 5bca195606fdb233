"""``lakehouse iot bridge`` as a child process, as an operator runs it, for the tests that kill, restart or
fuzz it. ``tests/`` is on ``sys.path`` through its ``conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from lakehouse.sources.mqtt import BridgeConfig

ROOT = Path(__file__).resolve().parents[1]


def bridge_process(
    config: BridgeConfig, *extra: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start the bridge with ``config``'s client id and topics (``extra``: more options); not waited for."""
    command = [
        str(Path(sys.executable).parent / "lakehouse"),
        "iot",
        "bridge",
        "--client-id",
        config.client_id,
    ]
    command += ["--kafka-topic", config.kafka_topic, "--dead-letter-topic", config.dead_letter_topic, *extra]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(process: subprocess.Popen[str]) -> subprocess.Popen[str]:
    """Wait for the line the bridge prints once connected and subscribed (fail with its stderr if not)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("bridge "):
        _, err = process.communicate(timeout=30)
        pytest.fail(f"the bridge did not start: {line!r} {err[-2000:]}")
    return process
