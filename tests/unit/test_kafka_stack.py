"""The broker's storage format: a cluster id the storage tool's ``-t`` never takes for an option."""

from __future__ import annotations

import base64
import uuid

import pytest

from lakehouse.stack import kafka

pytestmark = pytest.mark.unit


def test_a_cluster_id_starting_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    dashed, plain = uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")  # what broke 1 start in 64
    drawn = iter([dashed, dashed, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(drawn))
    cluster_id = kafka.new_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
