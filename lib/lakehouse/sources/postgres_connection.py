"""Where a PostgreSQL source's database is: one connection, for psycopg and for Spark's JDBC reader.

A source's ``connection`` is a libpq string or ``postgresql://`` URL (from the environment: it holds a
password); without one, the environment file's PostgreSQL. :func:`parse_endpoint` turns it into what
psycopg takes and what pgjdbc takes (URL, user, password as separate options, libpq parameters mapped to
pgjdbc's names), and refuses what Spark's reader could not follow (a Unix socket, an unknown parameter).
The password appears in no repr and no message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, ServiceError
from lakehouse.sources.registry import PostgresCdcSource, PostgresTableSource

# libpq parameters Spark's JDBC reader (pgjdbc) understands, and their pgjdbc names.
_JDBC_PARAMETERS: Final = {
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "sslpassword": "sslpassword",
    "application_name": "ApplicationName",
    "connect_timeout": "connectTimeout",
    "options": "options",
    "target_session_attrs": "targetServerType",
    "gssencmode": "gssEncMode",
    "channel_binding": "channelBinding",
}
_TARGET_SERVER: Final = {"any": "any", "read-write": "primary", "primary": "primary", "standby": "secondary",
                         "prefer-standby": "preferSecondary", "read-only": "secondary"}  # fmt: skip
# Every session an extract opens, psycopg's and the JDBC reader's, renders values the same way: the text
# of a row (what snapshot hashes are taken of) and timestamp literals do not depend on the machine.
STABLE_SESSION: Final = (
    "SET TIME ZONE 'UTC'; SET DateStyle TO 'ISO, YMD'; SET IntervalStyle TO 'postgres'; "
    "SET extra_float_digits TO 1; SET bytea_output TO 'hex'"
)


@dataclass(frozen=True)
class Endpoint:
    """Where a source's database is, for psycopg (``conninfo``) and for Spark's JDBC reader.

    ``label`` (``host:port/database``) is what messages show; the password appears in no repr.
    """

    label: str
    database: str
    conninfo: str = field(repr=False)
    jdbc_url: str = field(repr=False)
    user: str = ""
    password: str = field(default="", repr=False)

    def jdbc_options(self) -> dict[str, str]:
        """Options for ``spark.read.format("jdbc")``: URL, driver, login and the stable session settings."""
        options = {
            "url": self.jdbc_url,
            "driver": "org.postgresql.Driver",
            "sessionInitStatement": STABLE_SESSION,
            # timestamp without time zone lands as TIMESTAMP_NTZ: its wall time, whatever the JVM's zone
            "preferTimestampNTZ": "true",
            "fetchsize": "10000",
        }
        if self.user:
            options["user"] = self.user
        if self.password:
            options["password"] = self.password
        return options

    def mask(self, text: str) -> str:
        """``text`` with the password (should a driver echo it) replaced by ``***``."""
        return text.replace(self.password, "***") if self.password else text


def settings_endpoint(settings: Settings) -> Endpoint:
    """The environment file's PostgreSQL (the default connection of every postgres source)."""
    pg = settings.postgres
    return Endpoint(
        label=f"{pg.host}:{pg.port}/{pg.database}",
        database=pg.database,
        conninfo=make_conninfo("", **pg.connect_kwargs(), connect_timeout=5),
        jdbc_url=pg.jdbc_url,
        user=pg.user,
        password=pg.password,
    )


def parse_endpoint(conninfo: str, what: str = "connection") -> Endpoint:
    """An :class:`Endpoint` from a libpq connection string or ``postgresql://`` URL.

    Args:
        conninfo: e.g. ``postgresql://reader:secret@db.example:5432/orders?sslmode=require``.
        what: how messages name it (e.g. "source 'orders': connection").

    Raises:
        ConfigError: the string does not parse, names no TCP host, or has a parameter JDBC cannot take.

    Example:
        >>> parse_endpoint("postgresql://u:pw@db:6543/sales?sslmode=require").jdbc_url
        'jdbc:postgresql://db:6543/sales?sslmode=require'
    """
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ConfigError(f"{what} is not a libpq connection string or postgresql:// URL") from exc
    hosts = str(params.pop("hostaddr", None) or params.pop("host", None) or "").split(",")
    params.pop("host", None)
    ports = str(params.pop("port", None) or "5432").split(",")
    if not hosts[0] or any(h.startswith("/") for h in hosts):
        raise ConfigError(f"{what} must name a TCP host (Spark's JDBC reader cannot use a Unix socket)")
    ports = [port.strip() or "5432" for port in ports]  # libpq: an empty entry is the default port
    if not all(port.isdigit() for port in ports):
        raise ConfigError(f"{what} has a port that is not a number")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        raise ConfigError(f"{what} names {len(hosts)} hosts but {len(ports)} ports")
    user = str(params.pop("user", "") or "")
    password = str(params.pop("password", "") or "")
    database = str(params.pop("dbname", "") or user)
    if not database:
        raise ConfigError(f"{what} names no database (dbname)")
    query = []
    for name, value in sorted(params.items()):
        if name not in _JDBC_PARAMETERS:
            raise ConfigError(
                f"{what} has the parameter {name!r}, which Spark's JDBC reader cannot take "
                f"(it takes {', '.join(sorted(_JDBC_PARAMETERS))})"
            )
        value = str(value)
        if name == "target_session_attrs":
            value = _TARGET_SERVER.get(value, value)
        if name == "connect_timeout":
            value = str(int(float(value)))
        query.append(f"{_JDBC_PARAMETERS[name]}={quote(value, safe='')}")
    address = ",".join(f"{host}:{port}" for host, port in zip(hosts, ports, strict=True))
    jdbc = f"jdbc:postgresql://{address}/{quote(database, safe='')}"
    jdbc += "?" + "&".join(query) if query else ""
    timeout = {} if "connect_timeout" in conninfo_to_dict(conninfo) else {"connect_timeout": 5}
    return Endpoint(
        label=f"{address}/{database}",
        database=database,
        conninfo=make_conninfo(conninfo, **timeout),
        jdbc_url=jdbc,
        user=user,
        password=password,
    )


def source_endpoint(settings: Settings, source: PostgresTableSource | PostgresCdcSource) -> Endpoint:
    """The database of a postgres or postgres_cdc source: its ``connection``, else the environment's."""
    if source.connection is None:
        return settings_endpoint(settings)
    return parse_endpoint(source.connection.get_secret_value(), f"source {source.name!r}: connection")


def connect_to(endpoint: Endpoint, *, autocommit: bool = False, what: str = "") -> psycopg.Connection[Any]:
    """A psycopg connection to ``endpoint``.

    Raises:
        ServiceError: the server does not answer or refuses the login (the message names the endpoint,
            never the password).
    """
    try:
        return psycopg.connect(endpoint.conninfo, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        who = f"{what}: " if what else ""
        raise ServiceError(
            f"{who}cannot connect to PostgreSQL at {endpoint.label} ({endpoint.mask(str(exc).strip())}): "
            "check that the server runs and the connection's user, password and database"
        ) from exc
