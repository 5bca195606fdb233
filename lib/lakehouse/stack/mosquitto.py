"""Mosquitto 2.0, the MQTT broker IoT devices publish to (persistence on, loopback only)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.stack.supervisor import Service


def program() -> str:
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def recipe(settings: Settings) -> Service:
    """``mosquitto -c <workspace>/mosquitto/mosquitto.conf`` (it stops at an unknown option: tested)."""
    mqtt = settings.mqtt
    home = settings.workspace / "mosquitto"
    config = home / "mosquitto.conf"

    def prepare() -> None:
        if not Path(program()).exists():
            raise ServiceError("Mosquitto is not installed: run `make setup` (apt-get install mosquitto)")
        home.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {mqtt.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {home}/",
            # Mosquitto 2.0 keeps its queue in memory and saves a snapshot of all of it: every second here,
            # so a broker killed outright (power cut, OOM kill) forgets at most the last second of the QoS 1
            # messages it acknowledged. Saving on every change instead closes that window but rewrites the
            # whole queue per message: with the bridge behind by 10,000 messages it stopped acknowledging.
            # A stop or restart (SIGTERM) saves it all.
            "autosave_interval 1",
            "max_queued_messages 100000",
            "log_dest stderr",  # unbuffered: the log shows what the broker said as it says it
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        config.write_text("\n".join(lines) + "\n")

    return Service(
        name="mqtt",
        port=mqtt.port,
        url=f"mqtt://{mqtt.host}:{mqtt.port}",
        command=[program(), "-c", str(config)],
        health=lambda: None,  # its own process holding the port is the broker answering
        prepare=prepare,
        startup_timeout=30,
    )
