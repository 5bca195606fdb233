"""The device registry: which devices exist, where they are installed and which firmware they should run.

A small JSON file under the workspace (``<workspace>/iot/devices.json``), because it is tiny, read by one
bridge and written rarely: provisioning (the simulator, the replay, an operator) registers devices with their
site; the bridge enriches every reading with the device's ``site`` and registers devices it has never seen
(``site = "unassigned"``, ``auto_registered = true``) so an operator can assign them later.

Writes are atomic (temporary file + rename) and merge with what is on disk under an exclusive lock, so a
provisioning run and a running bridge never lose each other's devices.

Example:
    >>> registry = DeviceRegistry(Path("/tmp/devices.json"))           # doctest: +SKIP
    >>> registry.provision([("dev-0001", "hq-floor-2", "1.4.2")])      # doctest: +SKIP
    >>> registry.lookup("dev-0001", firmware="1.4.2").site             # doctest: +SKIP
    'hq-floor-2'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from filelock import FileLock

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.state import read_json, write_json

log = logging.getLogger(__name__)

UNASSIGNED_SITE: Final = "unassigned"
_RELOAD_EVERY_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """One registry entry."""

    device_id: str
    site: str
    expected_firmware: str | None
    registered_at: str
    auto_registered: bool = False


def registry_path(settings: Settings) -> Path:
    """Where the environment keeps its device registry."""
    return settings.workspace / "iot" / "devices.json"


class DeviceRegistry:
    """Known devices, kept in a JSON file; unknown devices are registered on first sight."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._devices: dict[str, RegisteredDevice] = {}
        self._mtime: float | None = None
        self._warned_firmware: set[str] = set()
        self._checked = time.monotonic()
        self.reload()

    @classmethod
    def open(cls, settings: Settings, path: Path | None = None) -> DeviceRegistry:
        """The registry of an environment (or at ``path``)."""
        return cls(path or registry_path(settings))

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def devices(self) -> list[RegisteredDevice]:
        """Every registered device, by id."""
        return [self._devices[key] for key in sorted(self._devices)]

    def reload(self) -> None:
        """Read the file again if it changed on disk."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            self._devices = self._read()
            self._mtime = mtime

    def _read(self) -> dict[str, RegisteredDevice]:
        try:
            raw = read_json(self.path)
        except DataError as exc:
            raise ConfigError(
                f"the device registry {self.path} is not valid JSON ({exc.__cause__}): fix or delete it "
                "(devices re-register themselves; sites must then be assigned again)"
            ) from exc
        if raw is None:
            return {}
        try:
            return {key: RegisteredDevice(**entry) for key, entry in raw.get("devices", {}).items()}
        except (AttributeError, TypeError) as exc:
            raise ConfigError(f"the device registry {self.path} has an invalid entry ({exc})") from exc

    @contextmanager
    def _locked(self) -> Iterator[dict[str, RegisteredDevice]]:
        """Merge-on-write: lock, read what is on disk, let the caller update it, write atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.with_suffix(".lock")):
            devices = self._read()
            yield devices
            document = {"devices": {key: asdict(devices[key]) for key in sorted(devices)}}
            write_json(self.path, document, indent=1)
            self._devices = devices
            self._mtime = self.path.stat().st_mtime

    def provision(self, devices: Iterable[tuple[str, str, str | None]]) -> int:
        """Register or update ``(device_id, site, expected_firmware)`` entries; returns how many changed."""
        now = datetime.now(UTC).isoformat()
        changed = 0
        with self._locked() as known:
            for device_id, site, firmware in devices:
                current = known.get(device_id)
                entry = RegisteredDevice(
                    device_id, site, firmware, current.registered_at if current else now, False
                )
                if entry != current:
                    known[device_id] = entry
                    changed += 1
        return changed

    def lookup(self, device_id: str, firmware: str | None = None) -> RegisteredDevice:
        """The registry entry of a device, registering it (site ``unassigned``) if it is new."""
        return self.lookup_many([(device_id, firmware)])[device_id]

    def lookup_many(self, devices: Iterable[tuple[str, str | None]]) -> dict[str, RegisteredDevice]:
        """The entries of ``(device_id, firmware)`` pairs by id; new devices are registered in one write.

        One write per batch, not per device: the file is rewritten whole under a lock, so registering a
        flood of new ids (a fleet coming online, or a device that makes up its id) one by one would cost
        time growing with the square of their number and stall whoever asks — the bridge.
        """
        wanted = dict(devices)
        now = time.monotonic()
        if now - self._checked >= _RELOAD_EVERY_S:
            self._checked = now
            self.reload()  # sites and firmware re-provisioned by another process?
        if any(device_id not in self._devices for device_id in wanted):
            self.reload()  # provisioned by another process since we last read?
        new = {d: f for d, f in wanted.items() if d not in self._devices}
        if new:
            self._auto_register(new)
        found = {device_id: self._devices[device_id] for device_id in wanted}
        for device_id, firmware in wanted.items():
            expected = found[device_id].expected_firmware
            if firmware and expected and firmware != expected and device_id not in self._warned_firmware:
                self._warned_firmware.add(device_id)
                log.warning(
                    "device %s runs firmware %s, the registry expects %s", device_id, firmware, expected
                )
        return found

    def _auto_register(self, devices: dict[str, str | None]) -> None:
        registered_at = datetime.now(UTC).isoformat()
        with self._locked() as known:
            for device_id, firmware in devices.items():
                if device_id not in known:
                    known[device_id] = RegisteredDevice(
                        device_id, UNASSIGNED_SITE, firmware, registered_at, True
                    )
                    log.info("auto-registered new device %s (firmware %s)", device_id, firmware)

    def as_rows(self) -> list[dict[str, Any]]:
        """Registry entries as plain dicts (for a table or a dashboard)."""
        return [asdict(device) for device in self.devices()]
