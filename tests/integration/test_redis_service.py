"""Redis as the stack runs it: our configuration taken, loopback only, writes kept across a restart."""

from __future__ import annotations

import uuid

import pytest
import redis as redis_client

from lakehouse.config import Settings
from lakehouse.stack import ServiceManager
from lakehouse.stack.redis import config_lines

pytestmark = pytest.mark.integration


def _client(settings: Settings) -> redis_client.Redis:
    return redis_client.Redis(host=settings.redis.host, port=settings.redis.port, socket_timeout=5)


def test_redis_runs_with_every_setting_it_was_given(redis: Settings) -> None:
    client = _client(redis)
    ours = {}
    for line in config_lines(redis):
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            ours[key] = value.strip('"')
    running = {key: str(client.config_get(key).get(key)) for key in ours}
    assert running == ours, running
    assert running["bind"] == "127.0.0.1" and running["appendonly"] == "yes"


def test_redis_keeps_its_writes_across_a_restart(redis: Settings) -> None:
    key, value = f"lakehouse-test:{uuid.uuid4()}", uuid.uuid4().hex
    client = _client(redis)
    client.hset(key, mapping={"value": value})
    manager = ServiceManager(redis, fresh=False)
    manager.stop(["redis"])
    manager.start(["redis"])
    again = _client(redis)
    assert again.hget(key, "value") == value.encode()
    again.delete(key)
