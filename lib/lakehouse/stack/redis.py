"""Redis 7.0 (Debian's), the online store of the feature store: persistence on, loopback only."""

from __future__ import annotations

import shutil

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.stack.supervisor import Service


def program() -> str:
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def config_lines(settings: Settings) -> list[str]:
    """``redis.conf``: redis-server refuses to start on a key it does not know (tested)."""
    redis = settings.redis
    home = settings.workspace / "redis"
    return [
        f"bind {redis.host}",
        f"port {redis.port}",
        "protected-mode yes",
        "daemonize no",
        f"dir {home}",
        # Both kinds of persistence: the append-only file replays every write (fsync every second, so a kill
        # loses at most the last second), the snapshot makes restarts fast.
        "appendonly yes",
        "appendfsync everysec",
        "save 300 1 60 1000",
        "dbfilename dump.rdb",
        'logfile ""',  # stderr: the supervisor keeps it in logs/redis.log
        "loglevel notice",
        # Feast's keys expire by their feature views' TTLs; nothing else may push them out.
        "maxmemory-policy noeviction",
        "",
    ]


def ping(host: str, port: int, timeout: float = 2.0) -> None:
    """Raise unless Redis at ``host:port`` answers PING."""
    import redis as redis_client

    client = redis_client.Redis(host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        if not client.ping():
            raise ServiceError(f"Redis at {host}:{port} did not answer PING")
    except redis_client.RedisError as exc:
        raise ServiceError(f"Redis at {host}:{port}: {exc}") from exc
    finally:
        client.close()


def recipe(settings: Settings) -> Service:
    """``redis-server <workspace>/redis/redis.conf``."""
    redis = settings.redis
    home = settings.workspace / "redis"
    config = home / "redis.conf"

    def prepare() -> None:
        if not shutil.which("redis-server"):
            raise ServiceError("Redis is not installed: run `make setup` (apt-get install redis-server)")
        home.mkdir(parents=True, exist_ok=True)
        config.write_text("\n".join(config_lines(settings)))

    return Service(
        name="redis",
        port=redis.port,
        url=redis.url,
        command=[program(), str(config)],
        health=lambda: ping(redis.host, redis.port),
        prepare=prepare,
        startup_timeout=30,
    )
