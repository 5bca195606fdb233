"""The operational database: PostgreSQL 15 (Debian) with logical decoding for wal2json CDC.

PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user (``setpriv``) with its files
where that user can reach them, keyed by the workspace they belong to. The wal2json plugin is loaded by name
when the CDC slot is created; no server flag loads it (PostgreSQL has no ``output_plugin_libraries``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.stack.supervisor import Service

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_LIB = Path("/usr/lib/postgresql/15/lib")


def home(settings: Settings) -> Path:
    """Where the server's data and sockets live (outside the workspace when running as root)."""
    if os.geteuid() != 0:
        return settings.workspace / "postgres"
    digest = hashlib.sha1(str(settings.workspace).encode()).hexdigest()[:12]
    return Path("/var/lib/lakehouse") / digest / "postgres"


def server_settings(settings: Settings, sockets: Path) -> dict[str, str]:
    """The ``-c`` settings the server starts with (each a PostgreSQL 15 setting: tested)."""
    return {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(sockets),
        "wal_level": "logical",
        "max_replication_slots": "8",
        "max_wal_senders": "8",
        "shared_buffers": "128MB",
        "fsync": "on",
    }


def recipe(settings: Settings) -> Service:
    """initdb once (trust locally, SCRAM on TCP), then ``postgres`` on loopback; the database created."""
    pg = settings.postgres
    root = home(settings)
    data, sockets = root / "data", root / "run"
    as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    prefix = as_postgres if os.geteuid() == 0 else []

    def prepare() -> None:
        if not (PG_BIN / "postgres").exists():
            raise ServiceError(
                "PostgreSQL 15 is not installed: run `make setup` (apt-get install postgresql-15)"
            )
        if not (PG_LIB / "wal2json.so").exists():
            raise ServiceError(
                "the wal2json plugin is not installed: "
                "run `make setup` (apt-get install postgresql-15-wal2json)"
            )
        sockets.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(root.parent, "postgres", "postgres")
            for folder in (root, sockets):
                shutil.chown(folder, "postgres", "postgres")
        if (data / "PG_VERSION").exists():
            return
        password_file = root / "initdb.pw"
        password_file.write_text(pg.password)
        if os.geteuid() == 0:
            shutil.chown(password_file, "postgres", "postgres")
        result = subprocess.run(
            [*prefix, str(PG_BIN / "initdb"), "-D", str(data), "-U", pg.user, "--pwfile", str(password_file),
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def health() -> None:
        import psycopg

        with psycopg.connect(
            host=pg.host,
            port=pg.port,
            dbname="postgres",
            user=pg.user,
            password=pg.password,
            connect_timeout=3,
        ) as conn:
            conn.execute("SELECT 1")

    def after_start() -> None:
        import psycopg

        with psycopg.connect(
            host=pg.host, port=pg.port, dbname="postgres", user=pg.user, password=pg.password, autocommit=True
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (pg.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{pg.database}"')

    command = [*prefix, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(pg.port)]
    for name, value in server_settings(settings, sockets).items():
        command += ["-c", f"{name}={value}"]
    return Service(
        name="postgres",
        port=pg.port,
        url=f"postgresql://{pg.user}@{pg.host}:{pg.port}/{pg.database}",
        command=command,
        health=health,
        prepare=prepare,
        after_start=after_start,
        startup_timeout=60,
    )
