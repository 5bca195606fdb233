"""A new device fleet by configuration alone: a registry entry declares a CGM glucose fleet's payload, the real
readings (bokeh_sampledata's CGM series: real duplicate timestamps, missed readings, "nil" sensor currents) go
through the real Mosquitto and the bridge CLI, and Kafka gets the declared records, with nothing under lib/."""

from __future__ import annotations

import base64
import csv
import gzip
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakehouse.config import Settings
from lakehouse.simulate.devices import DeviceMessage, publish
from topic_records import consume

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "G4"


def cgm_rows() -> list[dict[str, str]]:
    """bokeh_sampledata's CGM series (isig, datetime, glucose mg/dL), read by path (a data package)."""
    spec = importlib.util.find_spec("bokeh_sampledata")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next(
        (Path(f) / "_data" / "CGM.csv.gz" for f in folders if (Path(f) / "_data" / "CGM.csv.gz").is_file()),
        None,
    )
    assert path is not None, "install the data package: make venv (bokeh_sampledata, --no-deps)"
    with gzip.open(path, "rt", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def declaration(tag: str) -> dict[str, Any]:
    return {
        "kind": "mqtt",
        "description": "Continuous glucose monitors (a fleet the demo does not have)",
        "owner": "clinical-data",
        "mqtt_topic": f"cgm-{tag}/+/readings",
        "kafka_topic": f"cgm-{tag}",
        "dead_letter_topic": f"cgm-{tag}.dlq",
        "partitions": 2,
        "bronze": f"cgm_glucose_{tag}",
        "key": ["sensor_id", "reading_no"],
        "ordering": "measured_at",
        "topic_pattern": f"cgm-{tag}/{{sensor_id}}/readings",
        "payload": {
            "key": ["sensor_id"],
            "sequence": "reading_no",
            "event_time": "measured_at",
            "time_format": "epoch_s",
            "fields": {
                "sensor_id": {"path": "sensor.serial", "type": "string"},
                "reading_no": {"type": "bigint", "min": 0},
                "measured_at": {"path": "taken", "type": "timestamp"},
                "glucose_mg_dl": {"path": "bg.value", "type": "double", "min": 20, "max": 600},
                "glucose_g_l": {
                    "path": "bg.value",
                    "type": "double",
                    "unit": "mg/dL",
                    "to": "g/L",
                    "round": 4,
                },
                "isig_na": {"path": "isig", "type": "double", "null_values": ["nil"]},
            },
        },
    }


def reading(row: dict[str, str], number: int, sensor: str) -> dict[str, Any]:
    taken = datetime.strptime(row["datetime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    isig: Any = row["isig"] if row["isig"] == "nil" else float(row["isig"])
    return {
        "sensor": {"serial": sensor, "model": MODEL},  # model: undeclared
        "reading_no": number,
        "taken": int(taken.timestamp()),
        "bg": {"value": int(row["glucose"])},
        "isig": isig,
        "battery_mv": 2900 + number % 100,  # undeclared
    }


def test_a_glucose_fleet_declared_in_the_registry_is_bridged_as_declared(
    mqtt: Settings, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    rows = cgm_rows()
    first_duplicate = next(i for i in range(1, len(rows)) if rows[i]["datetime"] == rows[i - 1]["datetime"])
    window = list(
        range(first_duplicate - 40, first_duplicate + 40)
    )  # sensor a: a real duplicate time, a missed reading
    nils = [i for i, row in enumerate(rows) if row["isig"] == "nil"][
        :15
    ]  # sensor b: real "nil" sensor currents
    times = [datetime.fromisoformat(rows[i]["datetime"]) for i in window]
    steps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
    assert 0.0 in steps and max(steps) >= 600, steps  # the data really has both flaws here

    topic = f"cgm-{tag}/{{}}/readings"
    good = [(i, "cgm-a") for i in window] + [(i, "cgm-b") for i in nils]
    messages = [
        DeviceMessage(topic.format(s), json.dumps(reading(rows[i], i, s)).encode(), s, i, "valid")
        for i, s in good
    ]
    resent = messages[5:10]  # at-least-once devices re-send: the same bytes again
    bad_payloads = {
        "not_json": b'{"sensor": {"serial": "cgm-a"}, "reading_no": 1',
        "missing_sensor_id": json.dumps({**reading(rows[0], 0, "x"), "sensor": {"model": MODEL}}).encode(),
        "invalid_timestamp": json.dumps(
            {**reading(rows[0], 0, "cgm-a"), "taken": 41_024_448_000}
        ).encode(),  # year 3270
        "invalid_value": json.dumps({**reading(rows[0], 0, "cgm-a"), "bg": {"value": "HIGH"}}).encode(),
        "invalid_reading_no": json.dumps({**reading(rows[0], -3, "cgm-a")}).encode(),
        "sensor_id_mismatch": json.dumps(reading(rows[0], 0, "cgm-b")).encode(),  # sent on cgm-a's topic
        "out_of_range": json.dumps({**reading(rows[0], 0, "cgm-a"), "bg": {"value": 4000}}).encode(),
    }
    bad = [
        DeviceMessage(topic.format("cgm-a"), raw, "cgm-a", None, "malformed", reason)
        for reason, raw in bad_payloads.items()
    ]

    registry = tmp_path / "sources.yaml"
    document = yaml.safe_load((ROOT / "sources.yaml").read_text())
    document["sources"]["cgm_glucose"] = declaration(tag)
    registry.write_text(yaml.safe_dump(document, sort_keys=False))
    bridge = subprocess.Popen(
        [str(Path(sys.executable).parent / "lakehouse"), "iot", "bridge", "--source", "cgm_glucose",
         "--client-id", f"it-cgm-{tag}", "--once-idle-seconds", "5"],
        cwd=ROOT, env={**os.environ, "LAKEHOUSE_SOURCES": str(registry), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert bridge.stdout is not None
    ready = bridge.stdout.readline()
    if not ready.startswith("bridge "):
        _, err = bridge.communicate(timeout=30)
        pytest.fail(f"the bridge did not start: {ready!r} {err[-3000:]}")
    assert "(cgm_glucose)" in ready and f"cgm-{tag}/+/readings" in ready
    publish([*messages, *bad, *resent], host=mqtt.mqtt.host, port=mqtt.mqtt.port)
    out, err = bridge.communicate(timeout=120)
    assert bridge.returncode == 0, err[-3000:]
    total = len(messages) + len(bad) + len(resent)
    assert (
        f"bridged {total} messages: {len(messages) + len(resent)} forwarded, {len(bad)} dead-lettered" in out
    )
    assert f"battery_mv {len(messages) + len(resent)}, sensor.model {len(messages) + len(resent)}" in out

    records = consume(mqtt, f"cgm-{tag}")
    assert len(records) == len(messages) + len(
        resent
    )  # duplicates are silver's to remove, not lost or merged
    assert Counter((v["sensor_id"], v["reading_no"]) for _, v in records) == Counter(
        [(s, i) for i, s in good] + [(m.device_id, m.seq) for m in resent]
    )
    layout = [
        "sensor_id",
        "reading_no",
        "measured_at",
        "received_at",
        "glucose_mg_dl",
        "glucose_g_l",
        "isig_na",
        "mqtt_topic",
        "extra",
    ]
    for key, value in records:
        assert list(value) == layout
        row = rows[value["reading_no"]]
        assert key == value["sensor_id"]
        assert value["measured_at"] == datetime.fromisoformat(row["datetime"]).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z"
        )
        assert value["glucose_mg_dl"] == float(row["glucose"]) and isinstance(value["glucose_mg_dl"], float)
        assert value["glucose_g_l"] == round(int(row["glucose"]) / 100, 4)  # mg/dL → g/L by pint
        assert value["isig_na"] == (None if row["isig"] == "nil" else float(row["isig"]))
        assert value["mqtt_topic"] == topic.format(value["sensor_id"])
        assert value["extra"] == {"sensor": {"model": MODEL}, "battery_mv": 2900 + value["reading_no"] % 100}
    a_times = sorted({v["measured_at"] for _, v in records if v["sensor_id"] == "cgm-a"})
    assert len(a_times) == len(window) - 1  # the real duplicate time arrived as two readings, two records

    letters = [v for _, v in consume(mqtt, f"cgm-{tag}.dlq")]
    assert sorted(v["reason"] for v in letters) == sorted(bad_payloads)
    assert {v["reason"]: base64.b64decode(v["payload_base64"]) for v in letters} == bad_payloads
    assert all(v["source"] == "cgm_glucose" and v["device_id"] == "cgm-a" for v in letters)  # from the topic

    # Configuration only: nothing in the package knows this fleet, its topic or its fields.
    words = ("cgm", "glucose", "reading_no", "isig", "sensor.serial", "battery_mv")
    mentions = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "lib").rglob("*")
        if path.is_file()
        and path.suffix in {".py", ".yaml", ".json", ".toml"}
        and any(word in path.read_text(encoding="utf-8", errors="replace") for word in words)
    ]
    assert mentions == []
